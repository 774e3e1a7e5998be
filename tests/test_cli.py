from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from querysep import __version__

from .conftest import CONFIGS, bad_audio_files, run_cli, tone

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "querysep", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=300,
    )


def test_version() -> None:
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"querysep {__version__}"


def test_init_model_then_separate_end_to_end(tmp_path: Path) -> None:
    bundle = tmp_path / "tiny"
    out = run("init-model", str(CONFIGS / "bandsplit-tiny.yaml"), str(bundle))
    assert out.returncode == 0, out.stderr
    assert "parameters" in out.stdout and (bundle / "model.safetensors").is_file()
    again = run("init-model", str(CONFIGS / "bandsplit-tiny.yaml"), str(bundle))
    assert again.returncode == 1 and "--force" in again.stderr

    mix = tone(440, 3.0, 22050, channels=2) + tone(1500, 3.0, 22050, channels=2, amp=0.1)
    src = tmp_path / "street.wav"
    sf.write(src, mix.T, 22050, subtype="PCM_16")
    out = run(
        "separate",
        str(src),
        "extract the dog barking",
        "-q",
        "remove the traffic",
        "--negative",
        "rain",
        "--model",
        str(bundle),
        "-o",
        str(tmp_path / "sep"),
        "--chunk-seconds",
        "1",
        "--format",
        "flac",
    )
    assert out.returncode == 0, out.stderr
    names = sorted(p.name for p in (tmp_path / "sep").iterdir())
    assert names == [
        "street_extract-the-dog-barking.flac",
        "street_extract-the-dog-barking_residual.flac",
        "street_remove-the-traffic.flac",
        "street_remove-the-traffic_residual.flac",
    ]
    target, rate = sf.read(tmp_path / "sep" / names[0], always_2d=True)
    residual, _ = sf.read(tmp_path / "sep" / names[1], always_2d=True)
    original, _ = sf.read(src, always_2d=True)
    assert rate == 22050 and target.shape == original.shape
    np.testing.assert_allclose(target + residual, original, atol=1e-4)

    out = run(
        "separate",
        str(src),
        "--query-audio",
        str(src),
        "dog",  # QUERY after options works too
        "--model",
        str(bundle),
        "-o",
        str(tmp_path / "a"),
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "a" / "street_dog-audio-street-wav.wav").is_file()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "tiny"
    assert run("init-model", str(CONFIGS / "bandsplit-tiny.yaml"), str(path)).returncode == 0
    return path


def test_bad_inputs_give_one_line_errors(bundle: Path, tmp_path: Path, capfd) -> None:
    for name, path in bad_audio_files(tmp_path).items():
        args = ("separate", str(path), "dog", "--model", str(bundle), "-o", str(tmp_path / "o"))
        out = run_cli(capfd, *args)
        assert out.returncode != 0, name
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("querysep: error:"), (name, out.stderr)
        assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir()), name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["   "], "empty"),
        (["remove the"], "names no sound"),
        ([], "QUERY"),
        (["dog", "--model", "/nonexistent/bundle"], "not a directory"),
        (["dog", "--model", "someone/not-cached"], "Hub"),
        (["dog", "--overlap", "2"], "overlap"),
        (["dog", "--device", "cuda:7"], "CUDA"),
        (["dog", "--dtype", "fp16", "--device", "cpu"], "fp16"),
        (["dog", "--steps", "4"], "generative models"),
        (["dog", "--candidates", "2"], "generative models"),
        (["dog", "--shift", "3"], "generative models"),
    ],
)
def test_bad_arguments(bundle: Path, tmp_path: Path, args: list[str], message: str, capfd) -> None:
    src = tmp_path / "in.wav"
    sf.write(src, tone(440, 0.5, 16000).T, 16000)
    model = [] if "--model" in args else ["--model", str(bundle)]
    out = run_cli(capfd, "separate", str(src), *args, *model, "-o", str(tmp_path / "o"))
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr


def test_named_default_offline_says_what_to_download(tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    sf.write(src, tone(440, 0.5, 16000).T, 16000)
    env = {**ENV, "QUERYSEP_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-m", "querysep", "separate", str(src), "dog", "--model",
         "audiosep-base", "-o", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "audiosep_base_4M_steps.ckpt" in out.stderr and "--model" in out.stderr
    assert not (tmp_path / "o").exists()


PEAK_RSS = """
import resource, sys
from querysep.cli import main
code = main(sys.argv[1:])
print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def test_peak_memory_does_not_grow_with_input_length(bundle: Path, tmp_path: Path) -> None:
    """A 10x longer file costs no more memory: files are read, separated and written in blocks
    (reading the 150 s file whole, or keeping its outputs, would take 50 MiB each)."""
    peaks = {}
    for seconds in (15, 150):
        src = tmp_path / f"in{seconds}.wav"
        with sf.SoundFile(src, "w", 44100, 2, subtype="PCM_16") as f:
            for _ in range(seconds // 15):
                f.write(tone(440, 15.0, 44100, channels=2).T)
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                PEAK_RSS,
                "separate",
                str(src),
                "dog",
                "--model",
                str(bundle),
                "-o",
                str(tmp_path / "o"),
                "--quiet",
                "--chunk-seconds",  # small chunks: the allocator's per-chunk churn stays small
                "1",
                "--batch-size",
                "1",
            ],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr
        peaks[seconds] = int(out.stdout.split("PEAK")[-1]) / 1024  # MiB
    # 150 s of stereo float32 alone is 50 MiB, and a target and a residual as much again
    assert peaks[150] - peaks[15] < 40, peaks


def test_cli_module_runs_as_a_script() -> None:
    """`python -m querysep.cli` (not only `python -m querysep`) reaches every command."""
    out = subprocess.run(
        [sys.executable, "-m", "querysep.cli", "models"],
        capture_output=True, text=True, env=ENV, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "audiosep-base (default)" in out.stdout


def test_query_audio_is_an_input_too(bundle: Path, tmp_path: Path) -> None:
    """An output named like the example clip must not replace it (inputs are never written)."""
    src, out_dir = tmp_path / "good.wav", tmp_path / "runs"
    sf.write(src, tone(440, 0.5, 16000).T, 16000)
    out_dir.mkdir()
    example = out_dir / "good_foo.wav"
    sf.write(example, tone(660, 0.5, 16000).T, 16000)
    before = example.read_bytes()
    out = run("separate", str(src), "--query-audio", str(example), "-q", "foo",
              "--model", str(bundle), "-o", str(out_dir))  # fmt: skip
    assert out.returncode == 1 and "refusing to overwrite the input" in out.stderr, out.stderr
    assert example.read_bytes() == before
    assert sorted(p.name for p in out_dir.iterdir()) == ["good_foo.wav"]


def test_a_full_disk_is_one_line_naming_the_folder(bundle: Path, tmp_path: Path) -> None:
    """A real full file system (a 64 KiB tmpfs, mounted as root): one line, no partial files."""
    import os

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    out_dir = tmp_path / "full"
    out_dir.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out_dir)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("this sandbox does not allow mounting a tmpfs")
    try:
        src = tmp_path / "in.wav"
        sf.write(src, tone(440, 5.0, 16000).T, 16000)
        out = run("separate", str(src), "dog", "--model", str(bundle), "-o", str(out_dir))
        assert out.returncode == 1
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "no space left" in lines[0] and str(out_dir) in lines[0], lines
        assert list(out_dir.iterdir()) == []
    finally:
        subprocess.run(["umount", str(out_dir)], capture_output=True)


def test_write_errors_map_to_one_line(tmp_path: Path, monkeypatch) -> None:
    import errno

    from querysep import audio
    from querysep.errors import AudioError
    from querysep.files import write_error_message

    path = tmp_path / "o" / "x.wav"
    assert "permission denied" in write_error_message(path, PermissionError(errno.EACCES, "no"))
    long = OSError(errno.ENAMETOOLONG, "File name too long")
    assert "the file name is too long" in write_error_message(path, long)

    def failing_write(self, data):  # libsndfile reports ENOSPC as "System error."
        raise sf.LibsndfileError(2, "System error.")

    monkeypatch.setattr(sf.SoundFile, "write", failing_write)
    monkeypatch.setattr(
        "shutil.disk_usage", lambda p: type("U", (), {"free": 0, "total": 1, "used": 1})()
    )
    with pytest.raises(AudioError, match=r"no space left to write x\.wav in .*/o"):
        audio.save(path, tone(440, 0.1, 16000), 16000)
    assert list((tmp_path / "o").iterdir()) == []
