"""Audio in and out: validation, resampling and atomic writes.

Arrays are float32 [channels, frames]. Everything a user can get wrong (a missing or corrupt
file, NaNs, an absurd rate) becomes an `AudioError` with one line that names the problem.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from querysep.errors import AudioError, QueryError, first_line

MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 32
_FORMATS = {".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", "PCM_24"), ".ogg": ("OGG", "VORBIS")}
_RESAMPLE_QUALITY = "HQ"
_ESTIMATED_LENGTH = {"MP3", "MPEG"}


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _check_rate(sample_rate: Any) -> int:
    try:
        rate = int(sample_rate)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite rate
        raise AudioError(f"sample rate must be a number of Hz, got {sample_rate!r}") from None
    if rate != sample_rate or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"sample rate {sample_rate!r} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz"
        )
    return rate


def _check_channels(channels: int, where: str) -> None:
    if channels > MAX_CHANNELS:
        raise AudioError(f"{where} has {channels} channels; at most {MAX_CHANNELS} are supported")
    if channels < 1:
        raise AudioError(f"{where} has no channels")


def info(path: str | Path) -> AudioInfo:
    """Header facts of a file, validated (exists, decodable, non-empty, sane rate/channels)."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"no such file: {path}")
    if path.is_dir():
        raise AudioError(f"{path} is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path} is empty (0 bytes)")
    try:
        meta = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"cannot read {path} as audio: {first_line(exc)}") from None
    if meta.frames <= 0:
        raise AudioError(f"{path} holds no audio samples")
    _check_rate_for(meta.samplerate, path)
    _check_channels(meta.channels, str(path))
    _check_wav_complete(path, meta)
    frames = _count_frames(path) if meta.format in _ESTIMATED_LENGTH else int(meta.frames)
    return AudioInfo(
        path, int(meta.samplerate), int(meta.channels), frames, meta.format, meta.subtype
    )


def _count_frames(path: Path) -> int:
    """MP3 headers only estimate the length (encoder delay and padding): decode to count."""
    n = sum(block.shape[1] for block in _decode(path, 1 << 16))
    if n == 0:
        raise AudioError(f"{path} holds no audio samples")
    return n


def _decode(path: Path, block_frames: int) -> Iterator[np.ndarray]:
    """Raw float32 [C, n] blocks as libsndfile decodes them (never padded to the header length)."""
    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                block = f.read(block_frames, dtype="float32", always_2d=True)
                if not len(block):
                    return
                yield np.ascontiguousarray(block.T)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(
            f"cannot decode {path} (corrupt or truncated?): {first_line(exc)}"
        ) from None


def _check_rate_for(rate: int, path: Path) -> None:
    try:
        _check_rate(rate)
    except AudioError as exc:
        raise AudioError(f"{path}: {exc}") from None


def _check_wav_complete(path: Path, meta: Any) -> None:
    """libsndfile quietly shortens a truncated WAV; its RIFF data-chunk size tells the truth."""
    if meta.format != "WAV":
        return
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    pos = 12
    while pos + 8 <= len(head):
        chunk_id, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if chunk_id == b"data":
            available = path.stat().st_size - (pos + 8)
            if size != 0xFFFFFFFF and available < size:
                raise AudioError(
                    f"{path} is truncated: the header announces {size} bytes of audio, "
                    f"only {available} are there"
                )
            return
        pos += 8 + size + (size & 1)


def validate(audio: np.ndarray, sample_rate: Any) -> None:
    _check_rate(sample_rate)
    if audio.ndim != 2:
        raise AudioError(f"audio must be [channels, frames], got shape {audio.shape}")
    _check_channels(audio.shape[0], "the audio")
    if audio.shape[1] == 0:
        raise AudioError("the audio is empty (zero samples)")
    if not np.isfinite(audio).all():
        raise AudioError("the audio contains NaN or infinite samples")


def to_array(audio: Any, sample_rate: Any) -> np.ndarray:
    """numpy / torch input of any real dtype -> validated float32 [channels, frames].

    1-D is mono, 2-D is [channels, frames]; a 2-D array whose first axis is longer than
    MAX_CHANNELS and second one short enough is soundfile's [frames, channels] and is transposed.
    """
    if hasattr(audio, "detach") and hasattr(audio, "cpu"):
        if str(getattr(audio, "device", "")) == "meta":
            raise AudioError("the audio tensor is on the meta device: it holds no samples")
        if getattr(audio, "is_complex", lambda: False)():
            raise AudioError("audio must be real-valued, got a complex tensor")
        if str(getattr(audio, "layout", "torch.strided")) != "torch.strided":
            raise AudioError("the audio tensor is sparse: pass a dense one (tensor.to_dense())")
        audio = audio.detach().cpu()
        if str(audio.dtype) == "torch.bfloat16":
            audio = audio.float()
        audio = audio.numpy()
    try:
        array = np.asarray(audio)
    except (ValueError, TypeError) as exc:  # ragged nested lists, objects numpy cannot hold
        raise AudioError(f"audio must be an array of samples: {first_line(exc)}") from None
    array = _to_float32(array)
    if array.ndim == 1:
        array = array[None, :]
    elif array.ndim == 2:
        if array.shape[0] > MAX_CHANNELS and array.shape[1] <= MAX_CHANNELS:
            array = array.T
    else:
        raise AudioError(
            f"audio must be 1-D or 2-D [channels, frames], got {array.ndim}-D {array.shape}"
        )
    array = np.ascontiguousarray(array)
    validate(array, sample_rate)
    return array


def _to_float32(array: np.ndarray) -> np.ndarray:
    kind = array.dtype.kind
    if kind == "f":
        return array.astype(np.float32, copy=False)
    if kind == "i":
        scale = float(2 ** (8 * array.dtype.itemsize - 1))
        return (array.astype(np.float64) / scale).astype(np.float32)
    if kind == "u":
        half = float(2 ** (8 * array.dtype.itemsize - 1))
        return ((array.astype(np.float64) - half) / half).astype(np.float32)
    raise AudioError(f"unsupported audio dtype {array.dtype} (use float or integer PCM samples)")


def load(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """The whole file as float32 [channels, frames], optionally resampled to `sample_rate`."""
    meta = info(path)
    audio = np.concatenate(list(read_blocks(path, 1 << 18)), axis=1)
    if sample_rate is not None and sample_rate != meta.sample_rate:
        return resample(audio, meta.sample_rate, _check_rate(sample_rate)), int(sample_rate)
    return audio, meta.sample_rate


def read_blocks(path: str | Path, block_frames: int) -> Iterator[np.ndarray]:
    """Stream a file as float32 [channels, n] blocks without loading it whole."""
    meta = info(path)
    read = 0
    for block in _decode(Path(path), block_frames):
        if not np.isfinite(block).all():
            raise AudioError(f"{path} contains NaN or infinite samples")
        read += block.shape[1]
        yield block
    if read < meta.frames:
        raise AudioError(f"{path} is truncated: {read} of {meta.frames} frames could be read")


def _expected_frames(frames: int, orig_sr: int, target_sr: int) -> int:
    return round(frames * target_sr / orig_sr)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """[C, T] -> [C, round(T * target / orig)] with soxr (HQ)."""
    if orig_sr == target_sr:
        return audio
    out = soxr.resample(audio.T, orig_sr, target_sr, quality=_RESAMPLE_QUALITY)
    out = np.asarray(out, dtype=np.float32).reshape(-1, audio.shape[0]).T
    return fit_length(out, _expected_frames(audio.shape[1], orig_sr, target_sr))


class StreamResampler:
    """Block-wise soxr resampling whose total output is exactly round(T * target / orig)."""

    def __init__(self, orig_sr: int, target_sr: int, channels: int):
        self.orig_sr, self.target_sr, self.channels = int(orig_sr), int(target_sr), channels
        self._stream = (
            None
            if orig_sr == target_sr
            else soxr.ResampleStream(
                orig_sr, target_sr, channels, dtype="float32", quality=_RESAMPLE_QUALITY
            )
        )
        self._in = 0
        self._out = 0

    def process(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        block = np.asarray(block, dtype=np.float32)
        self._in += block.shape[1]
        if self._stream is None:
            out = block
        else:
            out = self._stream.resample_chunk(np.ascontiguousarray(block.T), last=last)
            out = np.asarray(out, dtype=np.float32).reshape(-1, self.channels).T
        if last:
            out = fit_length(
                out, _expected_frames(self._in, self.orig_sr, self.target_sr) - self._out
            )
        self._out += out.shape[1]
        return out


def fit_length(audio: np.ndarray, frames: int) -> np.ndarray:
    """Trim or zero-pad [C, T] audio to exactly `frames` (soxr can be off by a sample)."""
    frames = max(0, frames)
    if audio.shape[1] >= frames:
        return audio[:, :frames]
    return np.pad(audio, ((0, 0), (0, frames - audio.shape[1])))


def _format_for(path: Path, subtype: str | None) -> tuple[str, str]:
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise AudioError(f"cannot write {path.name}: use a .wav, .flac or .ogg file name")
    fmt, default = _FORMATS[suffix]
    subtype = (subtype or default).upper()
    if not sf.check_format(fmt, subtype):
        raise AudioError(f"{fmt} files cannot hold sample format {subtype}")
    return fmt, subtype


class AudioWriter:
    """Block-wise writer that only puts a complete file at `path` (temp file, then rename)."""

    def __init__(
        self,
        path: str | Path,
        sample_rate: int,
        channels: int,
        subtype: str | None = None,
        *,
        deferred: bool = False,
    ):
        """`deferred`: a clean exit leaves the finished temporary file for `publish()`, so
        several files (a target and its residual) can appear together or not at all."""
        self.path = Path(path)
        self.deferred = deferred
        self.sample_rate = _check_rate(sample_rate)
        _check_channels(channels, "the output")
        self.channels = channels
        self.format, self.subtype = _format_for(self.path, subtype)
        self._clip = self.subtype.startswith("PCM") or self.subtype in ("VORBIS",)
        self._file: sf.SoundFile | None = None
        self._tmp: Path | None = None

    def __enter__(self) -> AudioWriter:
        from querysep.files import write_error_message

        try:  # an unwritable or read-only folder, a file where a folder should be
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
            )
        except OSError as exc:
            raise AudioError(write_error_message(self.path, exc)) from None
        os.close(fd)
        self._tmp = Path(tmp)
        try:
            self._file = sf.SoundFile(
                tmp, "w", self.sample_rate, self.channels, subtype=self.subtype, format=self.format
            )
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        return self

    def write(self, block: np.ndarray) -> None:
        if self._file is None:
            raise AudioError("AudioWriter.write called outside its `with` block")
        block = np.asarray(block, dtype=np.float32)
        if block.ndim == 1:
            block = block[None]
        if block.shape[0] != self.channels:
            raise AudioError(f"expected {self.channels} channels, got {block.shape[0]}")
        if not np.isfinite(block).all():
            raise AudioError(f"refusing to write NaN or infinite samples to {self.path}")
        if self._clip:
            block = np.clip(block, -1.0, 1.0 - 2.0**-23)
        try:
            self._file.write(block.T)
        except (sf.LibsndfileError, OSError) as exc:  # a full disk, a vanished folder
            from querysep.files import write_error_message

            raise AudioError(write_error_message(self.path, exc)) from None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._file is not None and self._tmp is not None
        from querysep.files import publish, write_error_message

        try:
            self._file.close()  # flushes: a full disk can show up here first
            if exc_type is None and not self.deferred:
                publish(self._tmp, self.path)
        except (sf.LibsndfileError, OSError) as err:
            self._tmp.unlink(missing_ok=True)
            if exc_type is None:
                raise AudioError(write_error_message(self.path, err)) from None
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        if exc_type is not None:
            self._tmp.unlink(missing_ok=True)

    def publish(self) -> None:
        """Moves a deferred writer's finished file into place."""
        from querysep.files import publish, write_error_message

        assert self.deferred and self._tmp is not None
        try:
            publish(self._tmp, self.path)
        except OSError as exc:
            self._tmp.unlink(missing_ok=True)
            raise AudioError(write_error_message(self.path, exc)) from None

    def discard(self) -> None:
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


def publish_together(writers: list[AudioWriter]) -> None:
    """Publishes deferred writers' files all or none: a failure removes the ones already
    moved into place and the rest of the temporary files."""
    done: list[AudioWriter] = []
    try:
        for writer in writers:
            writer.publish()
            done.append(writer)
    except BaseException:
        for writer in done:
            writer.path.unlink(missing_ok=True)
        for writer in writers:
            writer.discard()
        raise


def save(
    path: str | Path, audio: np.ndarray, sample_rate: int, *, subtype: str | None = None
) -> Path:
    """Write [C, T] (or [T]) audio atomically; the format follows the extension."""
    array = np.asarray(audio, dtype=np.float32)
    if array.ndim == 1:
        array = array[None]
    validate(array, sample_rate)
    with AudioWriter(path, sample_rate, array.shape[0], subtype=subtype) as writer:
        writer.write(array)
    return Path(path)


def refuse_overwrite(output: str | Path, inputs: Iterable[str | Path]) -> None:
    out = Path(output)
    for inp in inputs:
        inp = Path(inp)
        same = out.resolve() == inp.resolve()
        if not same and out.exists() and inp.exists():
            same = os.path.samefile(out, inp)
        if same:
            raise AudioError(
                f"refusing to overwrite the input {inp}: choose another output directory"
            )


def check_outputs(paths: Sequence[tuple[Path, Path]], inputs: Sequence[Path], force: bool) -> None:
    """Output names must be distinct, never an input, and (unless `force`) not present yet."""
    flat = [p for pair in paths for p in pair]
    if len(set(flat)) != len(flat):
        raise QueryError("two queries map to the same output file name: make them different")
    for p in flat:
        refuse_overwrite(p, inputs)
        if not force and p.exists():
            raise AudioError(f"{p} exists: remove it, or pass --force to replace it")
