from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from querysep import audio
from querysep.errors import AudioError

from .conftest import DATA, bad_audio_files, tone


def test_info_and_load_real_mp3s() -> None:
    for name in ("dog.mp3", "cat.mp3", "sheep.mp3"):
        meta = audio.info(DATA / name)
        assert meta.sample_rate in (44100, 48000) and meta.channels in (1, 2)
        x, rate = audio.load(DATA / name)
        assert rate == meta.sample_rate and x.shape == (meta.channels, meta.frames)
        assert x.dtype == np.float32 and np.isfinite(x).all() and np.abs(x).max() > 0.01


def test_load_resamples(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", tone(440, 1.0, 48000, 2).T, 48000)
    x, rate = audio.load(tmp_path / "a.wav", sample_rate=16000)
    assert rate == 16000 and x.shape == (2, 16000)


def test_bad_files_raise_audio_errors(tmp_path: Path) -> None:
    for name, path in bad_audio_files(tmp_path).items():
        with pytest.raises(AudioError) as info:
            audio.load(path)
        message = str(info.value)
        assert "\n" not in message and path.name in message, (name, message)


def test_truncated_file_says_truncated(tmp_path: Path) -> None:
    files = bad_audio_files(tmp_path)
    for name in ("trunc.wav", "trunc.flac"):
        with pytest.raises(AudioError, match=r"truncated|corrupt"):
            list(audio.read_blocks(files[name], 1024))


def test_nan_in_a_float_file(tmp_path: Path) -> None:
    x = np.zeros((5000, 1), np.float32)
    x[4000] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        audio.load(tmp_path / "nan.wav")


@pytest.mark.parametrize(
    ("array", "rate", "match"),
    [
        (np.zeros((1, 0), np.float32), 16000, "empty"),
        (np.array([0.0, np.nan], np.float32), 16000, "NaN"),
        (np.array([0.0, np.inf]), 16000, "NaN"),
        (np.zeros(100, np.float32), 500, "outside"),
        (np.zeros(100, np.float32), 400_000, "outside"),
        (np.zeros(100, np.float32), 44100.5, "outside"),
        (np.zeros(100, np.float32), None, "number"),
        (np.zeros((33, 1000), np.float32), 16000, "channels"),
        (np.zeros((2, 2, 10), np.float32), 16000, "3-D"),
        (np.zeros(10, np.complex64), 16000, "dtype"),
        (np.zeros(10, bool), 16000, "dtype"),
    ],
)
def test_bad_arrays(array: np.ndarray, rate: object, match: str) -> None:
    with pytest.raises(AudioError, match=match):
        audio.to_array(array, rate)


def test_dtypes_layouts_and_tensors() -> None:
    assert audio.to_array(np.array([32767, -32768], np.int16), 8000)[0, 0] == pytest.approx(
        1.0, abs=1e-4
    )
    assert audio.to_array(np.array([-32768], np.int16), 8000)[0, 0] == -1.0
    assert audio.to_array(np.array([128, 255], np.uint8), 8000)[0, 0] == 0.0
    assert audio.to_array(np.array([2**31 - 1], np.int32), 8000)[0, 0] == pytest.approx(1.0)
    frames_first = np.zeros((1000, 2), np.float32)
    frames_first[:, 1] = 0.5
    x = audio.to_array(frames_first, 8000)
    assert x.shape == (2, 1000) and np.all(x[1] == 0.5)
    assert audio.to_array(np.zeros((2, 1000)), 8000).shape == (2, 1000)
    t = audio.to_array(torch.ones(3, 50, dtype=torch.bfloat16), 8000)
    assert t.shape == (3, 50) and t.dtype == np.float32 and np.all(t == 1)
    with pytest.raises(AudioError, match="meta device"):
        audio.to_array(torch.zeros(100, device="meta"), 8000)
    with pytest.raises(AudioError, match="real-valued"):
        audio.to_array(torch.zeros(100, dtype=torch.complex64), 8000)


ROUND_TRIPS = [(".wav", None, 0.0), (".wav", "PCM_16", 2 / 32768), (".flac", None, 2 / 2**23),
               (".ogg", None, 0.2)]  # fmt: skip


@pytest.mark.parametrize(("suffix", "subtype", "tol"), ROUND_TRIPS)
def test_save_round_trip(tmp_path: Path, suffix: str, subtype: str | None, tol: float) -> None:
    x = tone(440, 0.5, 22050, 2)
    path = audio.save(tmp_path / f"out{suffix}", x, 22050, subtype=subtype)
    y, rate = audio.load(path)
    assert rate == 22050 and y.shape == x.shape
    assert np.max(np.abs(y - x)) <= tol


def test_pcm_output_clips_instead_of_wrapping(tmp_path: Path) -> None:
    x = np.array([[0.5, 1.7, -3.0]], np.float32)
    y, _ = audio.load(audio.save(tmp_path / "c.wav", x, 8000, subtype="PCM_16"))
    assert y[0, 1] > 0.99 and y[0, 2] == -1.0


def test_save_rejects_bad_input_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(AudioError):
        audio.save(tmp_path / "x.mp4", np.zeros((1, 10)), 8000)
    with pytest.raises(AudioError):
        audio.save(tmp_path / "x.wav", np.full((1, 10), np.nan), 8000)
    with pytest.raises(AudioError):
        audio.save(tmp_path / "x.flac", np.zeros((1, 10)), 8000, subtype="FLOAT")
    assert list(tmp_path.iterdir()) == []


def test_writer_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.wav"
    audio.save(target, np.full((1, 100), 0.25, np.float32), 8000)
    before = target.read_bytes()
    with pytest.raises(RuntimeError), audio.AudioWriter(target, 8000, 1) as writer:
        writer.write(np.zeros((1, 5000), np.float32))
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.wav"]  # temp file gone
    with audio.AudioWriter(target, 8000, 1) as writer:
        writer.write(np.zeros((1, 50), np.float32))
        writer.write(np.ones(50, np.float32) * 0.5)
        assert target.read_bytes() == before  # not in place until the block closes
    assert sf.info(str(target)).frames == 100


def test_refuse_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "a.wav"
    audio.save(src, np.zeros((1, 10)), 8000)
    with pytest.raises(AudioError, match="overwrite"):
        audio.refuse_overwrite(tmp_path / "." / "a.wav", [src])
    (tmp_path / "link.wav").symlink_to(src)
    with pytest.raises(AudioError, match="overwrite"):
        audio.refuse_overwrite(tmp_path / "link.wav", [src])
    audio.refuse_overwrite(tmp_path / "b.wav", [src])


def test_streaming_read_equals_whole(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((3, 10_001)).astype(np.float32) * 0.1
    path = audio.save(tmp_path / "s.wav", x, 16000)
    blocks = list(audio.read_blocks(path, 999))
    assert all(b.shape[1] <= 999 for b in blocks)
    assert np.array_equal(np.concatenate(blocks, axis=1), x)


@pytest.mark.parametrize(
    ("orig", "target"), [(44100, 32000), (16000, 44100), (48000, 48000), (22050, 16000)]
)
@pytest.mark.parametrize("channels", [1, 2])
def test_stream_resampler_matches_one_shot(orig: int, target: int, channels: int) -> None:
    n = orig * 2 + 17
    x = np.random.default_rng(2).standard_normal((channels, n)).astype(np.float32) * 0.1
    whole = audio.resample(x, orig, target)
    assert whole.shape == (channels, round(n * target / orig))
    for block in (100, 4096, 30_000):
        rs = audio.StreamResampler(orig, target, channels)
        parts = [rs.process(x[:, i : i + block]) for i in range(0, n, block)]
        parts.append(rs.process(np.zeros((channels, 0), np.float32), last=True))
        streamed = np.concatenate(parts, axis=1)
        assert streamed.shape == whole.shape
        assert np.max(np.abs(streamed - whole)) < 1e-4


def test_deferred_writers_publish_together_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    import errno

    from querysep import files

    writers = [audio.AudioWriter(tmp_path / f"{n}.wav", 8000, 1, deferred=True) for n in "ab"]
    for w in writers:
        with w:
            w.write(np.zeros((1, 800), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []
    real, calls = files.publish, []

    def second_fails(tmp, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tmp, path)

    monkeypatch.setattr(files, "publish", second_fails)
    with pytest.raises(AudioError, match=r"no space left to write b\.wav"):
        audio.publish_together(writers)
    assert list(tmp_path.iterdir()) == []  # a.wav taken back, no temporary files left
