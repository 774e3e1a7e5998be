"""Adversarial inputs (issue 16): what a user, a broken file or an untrusted bundle can throw at
querysep, through the Python API, the command line (`querysep.cli.main`, in-process),
`querysep train` and the web demo's request handler.

The invariant for every bad input: the API raises a `QuerysepError` subclass (never a raw
TypeError / ValueError / RuntimeError); the CLI returns non-zero and prints exactly one line,
starting `querysep: error:`, on stderr, with no traceback; no output file and no temporary
`.*.tmp` file is left behind; inputs are never modified (bytes and mtime). Faults: SIGTERM to a
running `querysep separate`, a full disk (a 1 MiB tmpfs as root; a chmod 0500 folder otherwise)
and a read-only folder. Offline, CPU-only, tiny random models and at most one second of audio
per case (the SIGTERM case needs a run long enough to be interrupted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from querysep import pretrained
from querysep import separator as separator_module
from querysep.errors import QueryError, QuerysepError
from querysep.query import AudioQuery, Query
from querysep.separator import Separator, separate

from .conftest import CONFIGS, bad_audio_files, run_cli, tone

RATE = 16_000
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
NAN, INF = float("nan"), float("inf")


# -- helpers ------------------------------------------------------------------------------------
def cli(capfd: pytest.CaptureFixture[str], *args: Any) -> tuple[Any, str, str]:
    """`querysep ARGS` in this process: (exit code, stdout, stderr), captured at the file
    descriptors so that a library writing to fd 2 (transformers' load report) is seen too."""
    done = run_cli(capfd, *args)
    return done.returncode, done.stdout, done.stderr


def assert_one_error_line(code: Any, err: str) -> str:
    assert code not in (0, None), err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("querysep: error:"), err
    assert "Traceback" not in err
    return lines[0]


def assert_one_line_error(exc: BaseException) -> None:
    """An API error: a QuerysepError whose message is one line of reasonable length."""
    assert isinstance(exc, QuerysepError), repr(exc)
    text = str(exc)
    assert text.strip() and "\n" not in text and len(text) < 1000, text


def fingerprint(*paths: Path) -> dict[str, tuple[int, int, str]]:
    """Size, mtime and sha256 of every file at or under `paths` (missing paths: nothing)."""
    out = {}
    for path in map(Path, paths):
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
        else:
            files = []
        for f in files:
            st = f.stat()
            out[str(f)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
    return out


def assert_nothing_written(*folders: Path) -> None:
    """No output and no temporary file: the folders are absent or empty."""
    for folder in folders:
        if folder.exists():
            assert sorted(folder.rglob("*")) == [], folder


def assert_no_temp_files(*folders: Path) -> None:
    for folder in folders:
        if folder.is_dir():
            assert list(folder.rglob(".*.tmp")) == [], folder


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adversarial")


@pytest.fixture(scope="module")
def good(work: Path) -> Path:
    """A valid half-second mono recording: the input when the attack is elsewhere."""
    path = work / "inputs" / "good.wav"
    path.parent.mkdir()
    sf.write(path, tone(440, 0.5, RATE).T, RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def mix() -> np.ndarray:
    return tone(440, 0.5, RATE) + tone(1500, 0.5, RATE, amp=0.1)


@pytest.fixture(scope="module")
def own_separator(tiny_bundle: Path) -> Separator:
    """A private copy of the tiny model, for tests that poke at its state."""
    return Separator.from_pretrained(tiny_bundle, device="cpu")


# -- bad audio files -------------------------------------------------------------------------
def _patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    return data[:offset] + struct.pack(fmt, value) + data[offset + struct.calcsize(fmt) :]


@pytest.fixture(scope="module")
def bad_files(work: Path, good: Path) -> dict[str, Path]:
    """Every kind of unusable file: conftest's set plus crafted WAV headers."""
    folder = work / "bad"
    folder.mkdir()
    files = bad_audio_files(folder)
    wav = good.read_bytes()
    assert wav[12:16] == b"fmt " and wav[36:40] == b"data"  # a plain 44-byte PCM header
    crafted = {
        "random.wav": np.random.default_rng(2).bytes(3000),
        "text.wav": b"this is not audio\n" * 100,
        "header-only.wav": wav[:44],
        "bad-codec.wav": _patched(wav, 20, "<H", 0x1234),
        "rate-zero.wav": _patched(wav, 24, "<I", 0),
        "rate-huge.wav": _patched(wav, 24, "<I", 0x7FFFFFFF),
        "no-channels.wav": _patched(wav, 22, "<H", 0),
        "many-channels.wav": _patched(wav, 22, "<H", 1000),
    }
    for name, data in crafted.items():
        (folder / name).write_bytes(data)
        files[name] = folder / name
    return files


BAD_FILES = [
    "missing.wav", "empty.wav", "zero.wav", "random.flac", "random.wav", "text.wav",
    "folder.wav", "trunc.wav", "trunc.flac", "header-only.wav", "bad-codec.wav",
    "rate-zero.wav", "rate-huge.wav", "slow.wav", "no-channels.wav", "many-channels.wav",
    "nan.wav",
]  # fmt: skip


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_file_api_separate(tiny_separator: Separator, bad_files: dict, name: str) -> None:
    path = bad_files[name]
    before = fingerprint(path.parent)
    with pytest.raises(QuerysepError) as info:
        tiny_separator.separate(path, "dog")
    assert_one_line_error(info.value)
    assert fingerprint(path.parent) == before


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_file_api_separate_file(
    tiny_separator: Separator, bad_files: dict, name: str, tmp_path: Path
) -> None:
    path, out = bad_files[name], tmp_path / "out"
    before = fingerprint(path.parent)
    with pytest.raises(QuerysepError) as info:
        tiny_separator.separate_file(path, ["dog", "remove the cat"], out)
    assert_one_line_error(info.value)
    assert_nothing_written(out)
    assert fingerprint(path.parent) == before


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_file_cli(capfd, tiny_bundle: Path, bad_files: dict, name: str, tmp_path: Path) -> None:
    path, out = bad_files[name], tmp_path / "out"
    before = fingerprint(path.parent)
    code, _, err = cli(capfd, "separate", path, "dog", "--model", tiny_bundle, "-o", out)
    assert_one_error_line(code, err)
    assert_nothing_written(out)
    assert fingerprint(path.parent) == before


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_file_as_audio_query_api(
    tiny_separator: Separator, bad_files: dict, mix: np.ndarray, name: str
) -> None:
    path = bad_files[name]
    before = fingerprint(path.parent)
    with pytest.raises(QuerysepError) as info:
        tiny_separator.separate(mix, AudioQuery(str(path)), sample_rate=RATE)
    assert_one_line_error(info.value)
    assert fingerprint(path.parent) == before


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_file_as_query_audio_cli(
    capfd, tiny_bundle: Path, bad_files: dict, good: Path, name: str, tmp_path: Path
) -> None:
    path, out = bad_files[name], tmp_path / "out"
    before = fingerprint(path.parent, good)
    code, _, err = cli(
        capfd, "separate", good, "--query-audio", path, "dog", "--model", tiny_bundle, "-o", out
    )
    assert_one_error_line(code, err)
    assert_nothing_written(out)
    assert fingerprint(path.parent, good) == before


# -- bad arrays and tensors ------------------------------------------------------------------------
def _sine(frames: int = 8000) -> np.ndarray:
    return tone(440, frames / RATE, RATE)


BAD_ARRAYS: dict[str, Callable[[], Any]] = {
    "nan-sample": lambda: np.where(np.arange(8000) == 100, np.nan, _sine()[0]).astype(np.float32),
    "+inf-sample": lambda: np.where(np.arange(8000) == 7, np.inf, _sine()[0]),
    "-inf-sample": lambda: np.where(np.arange(8000) == 7, -np.inf, _sine()[0]),
    "float64-beyond-float32": lambda: np.full((1, 8000), 1e300),
    "complex-numpy": lambda: _sine().astype(np.complex64),
    "bool": lambda: np.ones(8000, bool),
    "object": lambda: np.array([object()] * 100),
    "strings": lambda: np.array(["a"] * 100),
    "datetimes": lambda: np.zeros(100, "datetime64[s]"),
    "0-d": lambda: np.float32(0.5),
    "3-d": lambda: np.zeros((1, 1, 8000), np.float32),
    "5-d": lambda: np.zeros((1, 1, 1, 1, 800), np.float32),
    "no-channels": lambda: np.zeros((0, 8000), np.float32),
    "no-frames": lambda: np.zeros((1, 0), np.float32),
    "empty-1d": lambda: np.zeros(0, np.float32),
    "40-channels": lambda: np.full((40, 8000), 0.1, np.float32),
    "ragged-list": lambda: [[0.1] * 800, [0.1] * 799],
    "none": lambda: None,
    "dict": lambda: {"audio": _sine()},
    "complex-tensor": lambda: torch.zeros(8000, dtype=torch.complex64),
    "meta-tensor": lambda: torch.empty(8000, device="meta"),
    "sparse-tensor": lambda: torch.from_numpy(_sine()).to_sparse(),
    "nan-tensor": lambda: torch.full((1, 8000), float("nan")),
    "bf16-inf-tensor": lambda: torch.full((8000,), float("inf"), dtype=torch.bfloat16),
    "3-d-int-tensor": lambda: torch.zeros((1, 1, 8000), dtype=torch.int16),
}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        if a.dtype.kind in "fc":
            return np.array_equal(a, b, equal_nan=True)
        return a.dtype == b.dtype and bool(np.all(a == b))
    if isinstance(a, torch.Tensor) and a.layout == torch.strided and a.device.type == "cpu":
        return bool(torch.equal(torch.nan_to_num(a.float()), torch.nan_to_num(b.float())))
    return True  # nothing a library could modify in place


def _copy(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, torch.Tensor) and x.layout == torch.strided and x.device.type == "cpu":
        return x.clone()
    return x


@pytest.mark.parametrize("name", BAD_ARRAYS)
def test_bad_array_input(tiny_separator: Separator, name: str) -> None:
    audio = BAD_ARRAYS[name]()
    before = _copy(audio)
    with pytest.raises(QuerysepError) as info:
        tiny_separator.separate(audio, "dog", sample_rate=RATE)
    assert_one_line_error(info.value)
    assert _same(before, audio)


@pytest.mark.parametrize("name", BAD_ARRAYS)
def test_bad_array_as_audio_query(tiny_separator: Separator, mix: np.ndarray, name: str) -> None:
    example = BAD_ARRAYS[name]()
    before = _copy(example)
    with pytest.raises(QuerysepError) as info:
        tiny_separator.separate(mix, AudioQuery(example, RATE), sample_rate=RATE)
    assert_one_line_error(info.value)
    assert _same(before, example)


def test_a_good_array_is_not_modified(tiny_separator: Separator, mix: np.ndarray) -> None:
    audio, tensor = mix.copy(), torch.from_numpy(mix.copy())
    tiny_separator.separate(audio, "dog", sample_rate=RATE)
    tiny_separator.separate(tensor, "dog", sample_rate=RATE)
    assert np.array_equal(audio, mix) and torch.equal(tensor, torch.from_numpy(mix))


BAD_RATES = [0, -1, -44100, 999, 384_001, 10**9, 2**64, 1e30, INF, -INF, NAN, 16000.5,
             "16000", "fast", True, [16000], None]  # fmt: skip


@pytest.mark.parametrize("rate", BAD_RATES, ids=repr)
def test_absurd_sample_rate(tiny_separator: Separator, mix: np.ndarray, rate: Any) -> None:
    with pytest.raises(QuerysepError) as info:
        tiny_separator.separate(mix, "dog", sample_rate=rate)
    assert_one_line_error(info.value)


@pytest.mark.parametrize("rate", BAD_RATES, ids=repr)
def test_absurd_sample_rate_of_an_audio_query(
    tiny_separator: Separator, mix: np.ndarray, rate: Any
) -> None:
    with pytest.raises(QuerysepError) as info:
        tiny_separator.separate(mix, AudioQuery(mix, rate), sample_rate=RATE)
    assert_one_line_error(info.value)


def test_a_file_takes_no_sample_rate(tiny_separator: Separator, good: Path) -> None:
    with pytest.raises(QuerysepError, match="a file carries its own rate"):
        tiny_separator.separate(good, "dog", sample_rate=RATE)


# -- bad options: chunking, device, dtype, sampler ------------------------------------------------
BAD_CHUNKING = [
    *(("chunk_seconds", v) for v in (0, -1, 0.05, 600.5, 1e9, NAN, INF, -INF, "4", True, [4])),
    *(("overlap", v) for v in (-0.1, 1, 1.5, NAN, INF, "0.5", True)),
    *(("batch_size", v) for v in (0, -1, 1.5, "2", True, NAN, "many", [2])),
]


@pytest.mark.parametrize(("key", "value"), BAD_CHUNKING, ids=repr)
def test_bad_chunking_api(tiny_separator: Separator, mix: np.ndarray, key: str, value: Any) -> None:
    with pytest.raises(QuerysepError) as info:
        tiny_separator.separate(mix, "dog", sample_rate=RATE, **{key: value})
    assert_one_line_error(info.value)
    assert key in str(info.value)


@pytest.mark.parametrize(("key", "value"), BAD_CHUNKING, ids=repr)
def test_bad_chunking_api_to_files(
    tiny_separator: Separator, good: Path, tmp_path: Path, key: str, value: Any
) -> None:
    before = fingerprint(good)
    with pytest.raises(QuerysepError) as info:
        tiny_separator.separate_file(good, "dog", tmp_path / "out", **{key: value})
    assert_one_line_error(info.value)
    assert_nothing_written(tmp_path / "out")
    assert fingerprint(good) == before


BAD_CHUNKING_CLI = [
    *(("--chunk-seconds", v) for v in ("0", "-1", "0.01", "1e9", "nan", "inf")),
    *(("--overlap", v) for v in ("1", "-0.5", "1.5", "nan", "inf")),
    *(("--batch-size", v) for v in ("0", "-4")),
]


@pytest.mark.parametrize(("option", "value"), BAD_CHUNKING_CLI)
def test_bad_chunking_cli(
    capfd, tiny_bundle: Path, good: Path, tmp_path: Path, option: str, value: str
) -> None:
    out = tmp_path / "out"
    code, _, err = cli(
        capfd, "separate", good, "dog", option, value, "--model", tiny_bundle, "-o", out
    )
    line = assert_one_error_line(code, err)
    assert option.lstrip("-").replace("-", "_") in line
    assert_nothing_written(out)


BAD_DEVICES = ["gpu", "cuda:99", "cuda:abc", "mps", "tpu", "", "cpu:x", 3.5, ["cpu"], "meta",
               "xpu"]  # fmt: skip
BAD_DTYPES = ["fp8", "float64", "int8", "", 16, torch.int8, torch.float64, torch.complex64,
              "fp16", torch.float16]  # fmt: skip


def _still_works(sep: Separator, reference: Separator, audio: np.ndarray) -> None:
    """A refused setting left the separator as it was: same place, same precision, same output."""
    assert sep.device == torch.device("cpu") and sep.dtype == torch.float32
    ours = sep.separate(audio, "dog", sample_rate=RATE).target
    assert np.array_equal(ours, reference.separate(audio, "dog", sample_rate=RATE).target)


@pytest.mark.parametrize("device", BAD_DEVICES, ids=repr)
def test_bad_device_is_refused_and_harmless(
    own_separator: Separator, tiny_separator: Separator, mix: np.ndarray, device: Any
) -> None:
    with pytest.raises(QuerysepError) as info:
        own_separator.to(device)
    assert_one_line_error(info.value)
    _still_works(own_separator, tiny_separator, mix)


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=repr)
def test_bad_dtype_is_refused_and_harmless(
    own_separator: Separator, tiny_separator: Separator, mix: np.ndarray, dtype: Any
) -> None:
    with pytest.raises(QuerysepError) as info:
        own_separator.to("cpu", dtype)
    assert_one_line_error(info.value)
    _still_works(own_separator, tiny_separator, mix)


@pytest.mark.parametrize(("device", "dtype"), [("cuda:99", None), ("cpu", "fp8"), ("cpu", "fp16")])
def test_bad_device_or_dtype_when_loading(
    tiny_bundle: Path, mix: np.ndarray, device: str, dtype: str | None
) -> None:
    with pytest.raises(QuerysepError) as info:
        Separator.from_pretrained(tiny_bundle, device=device, dtype=dtype)
    assert_one_line_error(info.value)
    with pytest.raises(QuerysepError):
        separate(mix, "dog", model=str(tiny_bundle), sample_rate=RATE, device=device, dtype=dtype)


@pytest.mark.parametrize(
    "args",
    [["--device", "gpu"], ["--device", "cuda:99"], ["--device", "mps"], ["--device", ""],
     ["--device", "tpu"], ["--dtype", "fp16", "--device", "cpu"]],
    ids=" ".join,
)  # fmt: skip
def test_bad_device_or_dtype_cli(
    capfd, tiny_bundle: Path, good: Path, tmp_path: Path, args: list[str]
) -> None:
    out = tmp_path / "out"
    code, _, err = cli(capfd, "separate", good, "dog", *args, "--model", tiny_bundle, "-o", out)
    assert_one_error_line(code, err)
    assert_nothing_written(out)


SAMPLER = [("steps", 4), ("guidance", 2.0), ("shift", 3.0), ("seed", 1), ("candidates", 2)]


@pytest.mark.parametrize(("key", "value"), SAMPLER)
def test_sampler_settings_on_a_mask_model_api(
    tiny_separator: Separator, mix: np.ndarray, key: str, value: Any
) -> None:
    with pytest.raises(QueryError, match=f"{key} applies to generative models") as info:
        tiny_separator.separate(mix, "dog", sample_rate=RATE, **{key: value})
    assert_one_line_error(info.value)


@pytest.mark.parametrize(("key", "value"), SAMPLER)
def test_sampler_settings_on_a_mask_model_cli(
    capfd, tiny_bundle: Path, good: Path, tmp_path: Path, key: str, value: Any
) -> None:
    out = tmp_path / "out"
    code, _, err = cli(
        capfd, "separate", good, "dog", f"--{key}", value, "--model", tiny_bundle, "-o", out
    )
    assert "generative models" in assert_one_error_line(code, err)
    assert_nothing_written(out)


BAD_SAMPLER_VALUES = [
    *(("steps", v) for v in (0, -1, 1.5, "4", True, NAN)),
    *(("guidance", v) for v in (-1.0, NAN, INF, "2", True)),
    *(("shift", v) for v in (0, -1.0, NAN, INF, "3")),
    *(("candidates", v) for v in (0, -2, 1.5, "2")),
    *(("seed", v) for v in ("x", 1.5, -1, 2**70, NAN)),
]


@pytest.fixture
def generative(own_separator: Separator):
    """The tiny model dressed up as a generative family: it takes sampler settings (the way
    tests/test_separator.py does it), so only the values themselves are checked."""
    model = own_separator.model
    model.sampling_options = ("steps", "guidance", "shift", "generator")
    yield own_separator
    del model.sampling_options


@pytest.mark.parametrize(("key", "value"), BAD_SAMPLER_VALUES, ids=repr)
def test_bad_sampler_values_on_a_generative_model(
    generative: Separator, mix: np.ndarray, key: str, value: Any
) -> None:
    with pytest.raises(QuerysepError) as info:
        generative.separate(mix, "dog", sample_rate=RATE, **{key: value})
    assert_one_line_error(info.value)


@pytest.mark.parametrize("weight", ["-0.1", "1.5", "nan", "inf", "1e400"])
def test_bad_audio_weight_cli(
    capfd, tiny_bundle: Path, good: Path, tmp_path: Path, weight: str
) -> None:
    out = tmp_path / "out"
    code, _, err = cli(capfd, "separate", good, "--query-audio", good, "dog",
                       "--audio-weight", weight, "--model", tiny_bundle, "-o", out)  # fmt: skip
    assert "audio-weight" in assert_one_error_line(code, err)
    assert_nothing_written(out)


# -- bad queries ---------------------------------------------------------------------------------
BAD_WEIGHTS = [
    (["dog", "cat"], (1.0,)),
    (["dog", "cat"], (0.5, 0.5, 0.5)),
    (["dog", "cat"], (-1.0, 2.0)),
    (["dog", "cat"], (0, 0)),
    (["dog", "cat"], ("a", "b")),
    (["dog", "cat"], (NAN, 1.0)),
    (["dog", "cat"], (INF, 1.0)),
    (["dog", "cat"], (True, False)),
    (["dog", "cat"], 5),
    (["dog", "cat"], "ab"),
    ("dog", (0.5, 0.5, 0.5)),
    (None, None),
]


@pytest.mark.parametrize(("text", "weights"), BAD_WEIGHTS, ids=repr)
def test_query_make_refuses_bad_weights(good: Path, text: Any, weights: Any) -> None:
    example = AudioQuery(str(good)) if text == "dog" else None
    with pytest.raises(QueryError) as info:
        Query.make(text, example, weights=weights)
    assert_one_line_error(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"text": ["extract the dog", "remove the cat"]}, {"text": 123}, {"text": [b"dog"]},
     {"text": "dog", "negative": 5}, {"text": "dog", "negative": ["cat", None]}],
    ids=repr,
)  # fmt: skip
def test_query_make_refuses_bad_parts(kwargs: dict) -> None:
    with pytest.raises(QueryError) as info:
        Query.make(**kwargs)
    assert_one_line_error(info.value)


EMPTY_QUERIES = ["", "   ", "\n\t ", ".", ";", "?!", "...", [], [""], ["dog", "  "], None, 123,
                 4.5, b"dog", {"q": "dog"}, ("dog", 5)]  # fmt: skip
NO_SOUND = ["extract everything except", "everything except", "everything except the",
            "everything but", "remove", "remove the", "mute the", "get rid of the",
            "keep only the", "extract all of the", "isolate the", "remove everything except",
            "please remove the", "extract everything except, but not the"]  # fmt: skip


@pytest.mark.parametrize("query", EMPTY_QUERIES + NO_SOUND, ids=repr)
def test_empty_or_soundless_query_api(
    tiny_separator: Separator, mix: np.ndarray, query: Any
) -> None:
    with pytest.raises(QuerysepError) as info:
        tiny_separator.separate(mix, query, sample_rate=RATE)
    assert_one_line_error(info.value)


@pytest.mark.parametrize("negative", ["", "   ", 5, [""], ["cat", 7], "remove the"], ids=repr)
def test_bad_negative_query_api(tiny_separator: Separator, mix: np.ndarray, negative: Any) -> None:
    with pytest.raises(QuerysepError) as info:
        tiny_separator.separate(mix, "dog", sample_rate=RATE, negative=negative)
    assert_one_line_error(info.value)


@pytest.mark.parametrize(
    "args",
    [["-q", ""], ["-q", "   "], ["   "], ["-q", ";"], ["dog", "--negative", ""],
     ["dog", "--negative", "   "], ["extract everything except"], ["remove the"],
     ["everything but the"], ["-q", "isolate"], ["dog", "--negative", "remove the"], []],
    ids=repr,
)  # fmt: skip
def test_empty_or_soundless_query_cli(
    capfd, tiny_bundle: Path, good: Path, tmp_path: Path, args: list[str]
) -> None:
    out = tmp_path / "out"
    before = fingerprint(good)
    code, _, err = cli(capfd, "separate", good, *args, "--model", tiny_bundle, "-o", out)
    assert_one_error_line(code, err)
    assert_nothing_written(out)
    assert fingerprint(good) == before


def test_overly_long_query_api_is_read_in_part_and_says_so(
    tiny_separator: Separator, mix: np.ndarray, good: Path, tmp_path: Path
) -> None:
    """CLAP reads 77 tokens: a 40,000-character query still separates, with a warning, and
    its file names stay short."""
    long = "a dog barking loudly " * 2000
    with pytest.warns(UserWarning, match="CLAP reads only the first"):
        result = tiny_separator.separate(mix, long, sample_rate=RATE)
    assert result.target.shape == mix.shape and np.isfinite(result.target).all()
    ((target, residual),) = tiny_separator.separate_file(good, [long], tmp_path / "out")
    assert len(target.name) <= len("good_") + 48 + len(".wav") and residual.is_file()


def test_long_query_cli_gives_short_file_names(
    capfd, tiny_bundle: Path, good: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    query = "a dog barking far away " * 8  # 184 characters
    code, _, err = cli(capfd, "separate", good, query, "--model", tiny_bundle, "-o", out)
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 2 and all(
        len(n) <= len("good_") + 48 + len("_residual.wav") for n in names
    )


@pytest.mark.parametrize("where", ["first", "last", "blank"])
def test_an_empty_input_or_query_argument_is_refused(
    capfd,
    tiny_bundle: Path,
    good: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    """`Path("")` is the current folder: an empty argument must not separate everything here."""
    bystander = tmp_path / "cwd" / "unrelated.wav"
    bystander.parent.mkdir()
    shutil.copy(good, bystander)
    monkeypatch.chdir(bystander.parent)
    out = tmp_path / "out"
    args = {"first": ["", good], "last": [good, ""], "blank": [good, "   "]}[where]
    code, _, err = cli(capfd, "separate", *args, "-q", "dog", "--model", tiny_bundle, "-o", out)
    assert "is empty" in assert_one_error_line(code, err)
    assert_nothing_written(out)


def test_a_query_longer_than_a_file_name_is_a_query_with_one_warning(
    capfd, tiny_bundle: Path, good: Path, tmp_path: Path
) -> None:
    query = "dog barking " * 30  # 360 bytes: longer than any file name may be
    with pytest.warns(UserWarning, match="CLAP reads only the first 77"):
        code, _, err = cli(capfd, "separate", good, query, "--model", tiny_bundle, "-o", tmp_path)
    assert code == 0, err
    assert "Token indices" not in err and "Traceback" not in err  # the tokenizer stays quiet
    assert len(list(tmp_path.glob("good_dog-barking*.wav"))) == 2


@pytest.mark.parametrize(
    "args",
    [
        ["--chunk-seconds", "abc"],
        ["--batch-size", "1.5"],
        ["--dtype", "fp8"],
        ["--format", "mp4"],
        ["--no-such-option"],
    ],
)
def test_usage_mistakes_are_one_line(capfd, good: Path, tmp_path: Path, args: list) -> None:
    code, out, err = cli(capfd, "separate", good, "dog", "-o", tmp_path / "out", *args)
    assert code == 2 and out == ""
    line = assert_one_error_line(code, err)
    assert "--help" in line
    assert_nothing_written(tmp_path / "out")


def test_a_result_pair_appears_together_or_not_at_all(
    tiny_separator: Separator, mix: np.ndarray, tmp_path: Path
) -> None:
    """`SeparationResult.save`: when the residual cannot be written (here a folder stands where
    it goes), the target that was written is taken back too."""
    result = tiny_separator.separate(mix, "dog", sample_rate=RATE)
    (tmp_path / "mixture_dog_residual.wav").mkdir()
    with pytest.raises(QuerysepError) as err:
        result.save(tmp_path)
    assert_one_line_error(err.value)
    assert not (tmp_path / "mixture_dog.wav").exists()
    assert_no_temp_files(tmp_path)


# -- bad bundles ---------------------------------------------------------------------------------
def _config(d: Path) -> dict:
    return json.loads((d / "config.json").read_text())


def _write_config(d: Path, cfg: dict) -> None:
    (d / "config.json").write_text(json.dumps(cfg))


def _edit(**model: Any) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        cfg = _config(d)
        cfg["model"].update(model)
        _write_config(d, cfg)

    return edit


def _top(key: str, value: Any) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        cfg = _config(d)
        cfg[key] = value
        _write_config(d, cfg)

    return edit


def _encoder_path(value: Callable[[Path], Any]) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        cfg = _config(d)
        cfg["query_encoder"] = {"path": value(d), "dim": cfg["query_encoder"]["dim"]}
        _write_config(d, cfg)

    return edit


def _replace_with_folder(name: str) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        (d / name).unlink()
        (d / name).mkdir()

    return edit


def _weights(change: Callable[[dict], dict], where: str = "model.safetensors"):
    def edit(d: Path) -> None:
        from safetensors.torch import save_file

        state = change(_tensors(d / where))
        save_file(state, str(d / where), metadata={"format": "pt"})

    return edit


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file read into memory (not memory-mapped: it is rewritten next)."""
    from safetensors.torch import load

    return load(path.read_bytes())


def _first(state: dict) -> str:
    return sorted(state)[0]


def _symlink_encoder(d: Path) -> None:
    outside = d.parent / f"{d.name}-outside-encoder"
    shutil.move(d / "query_encoder", outside)
    (d / "query_encoder").symlink_to(outside, target_is_directory=True)


def _pickled_encoder(d: Path) -> None:
    state = _tensors(d / "query_encoder" / "model.safetensors")
    (d / "query_encoder" / "model.safetensors").unlink()
    torch.save(state, d / "query_encoder" / "pytorch_model.bin")


def _pickle_only(d: Path) -> None:
    torch.save(_tensors(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()


def _pickle_renamed(d: Path) -> None:
    torch.save(_tensors(d / "model.safetensors"), d / "model.safetensors")


def _junk_keys(d: Path) -> None:
    cfg = _config(d)
    cfg["model"].update({f"junk_{i}": i for i in range(20_000)})
    _write_config(d, cfg)


BAD_BUNDLES: dict[str, Callable[[Path], Any]] = {
    "no-config": lambda d: (d / "config.json").unlink(),
    "config-is-a-folder": _replace_with_folder("config.json"),
    "config-is-yaml": lambda d: (d / "config.json").write_text("family: bandsplit\n"),
    "config-is-binary": lambda d: (d / "config.json").write_bytes(b"\xff\xfe\x00\x01garbage"),
    "config-is-a-list": lambda d: (d / "config.json").write_text("[]"),
    "config-is-null": lambda d: (d / "config.json").write_text("null"),
    "config-nested-too-deep": lambda d: (d / "config.json").write_text("[" * 100_000),
    "config-20k-junk-keys": _junk_keys,
    "unknown-family": _top("family", "nope"),
    "family-not-text": _top("family", 5),
    "rate-is-text": _top("sample_rate", "fast"),
    "rate-huge": _top("sample_rate", 10**12),
    "model-not-a-mapping": _top("model", []),
    "inference-not-a-mapping": _top("inference", [1]),
    "inference-bad-chunk": _top("inference", {"chunk_seconds": -1}),
    "unknown-hyperparameter": _edit(bogus=1),
    "huge-dim": _edit(dim=10**7),
    "huge-depth": _edit(depth=10**6),
    "huge-ff-mult": _edit(ff_mult=10**9),
    "huge-n-fft": _edit(n_fft=2**31),
    "huge-num-bands": _edit(bands={"scale": "mel", "num_bands": 100_000}),
    "zero-heads": _edit(heads=0),
    "negative-n-fft": _edit(n_fft=-1),
    "fractional-ff-mult": _edit(ff_mult=2.5),
    "depth-is-text": _edit(depth="2"),
    "encoder-spec-empty": _top("query_encoder", {}),
    "encoder-without-dim": _top("query_encoder", {"path": "query_encoder"}),
    "encoder-wrong-dim": _top("query_encoder", {"path": "query_encoder", "dim": 32}),
    "encoder-absolute-path": _encoder_path(lambda d: str((d / "query_encoder").resolve())),
    "encoder-dotdot-path": lambda d: (
        shutil.copytree(d / "query_encoder", d.parent / "elsewhere"),
        _encoder_path(lambda d: "../elsewhere/query_encoder")(d),
    ),
    "encoder-symlink-outside": _symlink_encoder,
    "encoder-path-not-text": _encoder_path(lambda d: 7),
    "encoder-path-missing": _encoder_path(lambda d: "nope"),
    "encoder-path-a-file": _encoder_path(lambda d: "model.safetensors"),
    "encoder-path-bundle-root": _encoder_path(lambda d: "."),
    "encoder-config-broken": lambda d: (d / "query_encoder" / "config.json").write_text("{"),
    "encoder-weights-missing": lambda d: (d / "query_encoder" / "model.safetensors").unlink(),
    "encoder-weights-incomplete": _weights(
        lambda s: {k: v for k, v in s.items() if k != _first(s)}, "query_encoder/model.safetensors"
    ),
    "encoder-weights-pickled": _pickled_encoder,
    "weights-missing": lambda d: (d / "model.safetensors").unlink(),
    "weights-empty": lambda d: (d / "model.safetensors").write_bytes(b""),
    "weights-truncated": lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:1000]
    ),
    "weights-header-claims-2-60-bytes": lambda d: (d / "model.safetensors").write_bytes(
        struct.pack("<Q", 2**60) + b"{}"
    ),
    "weights-header-not-json": lambda d: (d / "model.safetensors").write_bytes(
        struct.pack("<Q", 10) + b"not json!!"
    ),
    "weights-is-a-folder": _replace_with_folder("model.safetensors"),
    "weights-renamed-tensor": _weights(
        lambda s: {("bogus." + k if k == _first(s) else k): v for k, v in s.items()}
    ),
    "weights-wrong-shape": _weights(lambda s: {**s, _first(s): torch.zeros(3, 3)}),
    "weights-extra-tensor": _weights(lambda s: {**s, "extra.weight": torch.zeros(2)}),
    "weights-missing-tensor": _weights(lambda s: {k: v for k, v in s.items() if k != _first(s)}),
    "weights-pickle-renamed": _pickle_renamed,
    "pickle-instead-of-safetensors": _pickle_only,
    "nan-weights": _weights(lambda s: {k: torch.full_like(v, float("nan")) for k, v in s.items()}),
}


@pytest.fixture
def bad_bundle(request, tiny_bundle: Path, tmp_path: Path) -> Path:
    d = tmp_path / "bundles" / "bad"
    shutil.copytree(tiny_bundle, d)
    BAD_BUNDLES[request.param](d)
    return d


@pytest.mark.parametrize("bad_bundle", BAD_BUNDLES, indirect=True)
def test_bad_bundle_api(bad_bundle: Path, good: Path, tmp_path: Path) -> None:
    """Refused at load (or, for NaN weights, when it would write NaN): one line, no files."""
    out = tmp_path / "out"
    before = fingerprint(bad_bundle.parent, good)
    started = time.monotonic()
    with pytest.raises(QuerysepError) as info:
        Separator.from_pretrained(bad_bundle, device="cpu").separate_file(good, "dog", out)
    assert_one_line_error(info.value)
    assert time.monotonic() - started < 10  # refused before building anything huge
    assert_nothing_written(out)
    assert fingerprint(bad_bundle.parent, good) == before


@pytest.mark.parametrize("bad_bundle", BAD_BUNDLES, indirect=True)
def test_bad_bundle_cli(capfd, bad_bundle: Path, good: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = fingerprint(bad_bundle.parent, good)
    code, _, err = cli(capfd, "separate", good, "dog", "--model", bad_bundle, "-o", out)
    assert_one_error_line(code, err)
    assert_nothing_written(out)
    assert fingerprint(bad_bundle.parent, good) == before


def test_a_file_is_not_a_bundle(capfd, good: Path, tmp_path: Path) -> None:
    with pytest.raises(QuerysepError, match="is a file"):
        Separator.from_pretrained(good)
    code, _, err = cli(capfd, "separate", good, "dog", "--model", good, "-o", tmp_path / "o")
    assert "is a file" in assert_one_error_line(code, err)
    assert_nothing_written(tmp_path / "o")


class _Trap:
    """Unpickling this runs a command: loading a pickle from a bundle would leave `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", [".", "query_encoder"])
def test_a_pickle_beside_safetensors_is_never_loaded(
    tiny_bundle: Path, mix: np.ndarray, tmp_path: Path, where: str
) -> None:
    bundle, marker = tmp_path / "bundle", tmp_path / "unpickled"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / where / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    sep = Separator.from_pretrained(bundle, device="cpu")
    assert np.isfinite(sep.separate(mix, "dog", sample_rate=RATE).target).all()
    assert not marker.exists()


# -- the packaged model's SHA256SUMS ---------------------------------------------------------------
def _flip_byte(name: str) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        data = bytearray((d / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (d / name).write_bytes(bytes(data))

    return edit


def _sums_line(d: Path, line: str) -> None:
    with open(d / "SHA256SUMS", "a", encoding="utf-8") as f:
        f.write(line)


DAMAGED_PACKAGES: dict[str, Callable[[Path], Any]] = {
    "weights-byte-flipped": _flip_byte("model.safetensors"),
    "config-edited": lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text() + " "
    ),
    "encoder-byte-flipped": _flip_byte("query_encoder/model.safetensors"),
    "sums-missing": lambda d: (d / "SHA256SUMS").unlink(),
    "sums-empty": lambda d: (d / "SHA256SUMS").write_text(""),
    "sums-garbage": lambda d: (d / "SHA256SUMS").write_bytes(b"\xff not a sums file\n"),
    "sums-wrong-digest": lambda d: (d / "SHA256SUMS").write_text(
        "\n".join(
            "0" * 64 + line[64:] if i == 0 else line
            for i, line in enumerate((d / "SHA256SUMS").read_text().splitlines())
        )
        + "\n"
    ),
    "sums-path-escape": lambda d: _sums_line(d, f"{'0' * 64}  ../../../../etc/passwd\n"),
    "unlisted-file": lambda d: (d / "notes.txt").write_text("hello"),
    "unlisted-pickle": lambda d: (d / "pytorch_model.bin").write_bytes(pickle.dumps([1, 2])),
    "listed-file-missing": lambda d: (d / "sounds.json").unlink(),
}


@pytest.fixture(scope="module")
def pristine_package(work: Path) -> Path:
    folder = work / "pristine-weights"
    shutil.copytree(pretrained.PACKAGED_DIR / "querysep-mini", folder / "querysep-mini")
    return folder


@pytest.fixture
def damaged_package(request, pristine_package: Path, tmp_path: Path, monkeypatch) -> Path:
    weights = tmp_path / "weights"
    shutil.copytree(pristine_package, weights)
    DAMAGED_PACKAGES[request.param](weights / "querysep-mini")
    monkeypatch.setattr(pretrained, "PACKAGED_DIR", weights)
    monkeypatch.setattr(separator_module, "_LOADED", {})  # no model loaded before the damage
    return weights


@pytest.mark.parametrize("damaged_package", DAMAGED_PACKAGES, indirect=True)
def test_damaged_packaged_model_api(damaged_package: Path) -> None:
    before = fingerprint(damaged_package)
    with pytest.raises(QuerysepError) as info:
        Separator.from_pretrained("querysep-mini", device="cpu")
    assert_one_line_error(info.value)
    assert fingerprint(damaged_package) == before  # checked, not repaired or rewritten


@pytest.mark.parametrize("damaged_package", DAMAGED_PACKAGES, indirect=True)
def test_damaged_packaged_model_cli(
    capfd, damaged_package: Path, good: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, _, err = cli(capfd, "separate", good, "dog", "--model", "querysep-mini", "-o", out)
    assert_one_error_line(code, err)
    assert_nothing_written(out)


# -- bad training configs (`querysep train CONFIG --set ...`) --------------------------------------
@pytest.fixture(scope="module")
def corpus(work: Path) -> Path:
    """A two-clip manifest (distinct sounds, sources and labels): enough to build a trainer."""
    folder = work / "corpus"
    folder.mkdir()
    rows = []
    for i, (label, freq) in enumerate((("beep", 1200), ("hum", 180))):
        sf.write(folder / f"{label}.wav", tone(freq, 1.0, RATE).T, RATE)
        rows.append({"audio": f"{label}.wav", "captions": [f"a {label}"], "labels": [label],
                     "id": label, "source": f"s{i}"})  # fmt: skip
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "empty.jsonl").write_text("")
    (folder / "garbage.jsonl").write_bytes(b"\x00\xff{not json\n")
    (folder / "missing-audio.jsonl").write_text(
        "".join(json.dumps({**r, "audio": f"gone-{r['audio']}"}) + "\n" for r in rows)
    )
    return folder


@pytest.fixture
def train_config(corpus: Path, tmp_path: Path) -> Path:
    model = yaml.safe_load((CONFIGS / "bandsplit-tiny.yaml").read_text())
    model["sample_rate"] = RATE
    model["model"]["n_fft"], model["model"]["hop_length"] = 512, 128
    cfg = {
        "model": {"config": model},
        "data": {"train": str(corpus / "train.jsonl"), "mixing": {"seconds": 0.5},
                 "valid_items": 2},
        "train": {"max_steps": 1, "batch_size": 1, "tracker": "none", "progress": False,
                  "log_every": 1, "valid_every": 100, "save_every": 100},
        "output_dir": str(tmp_path / "run"),
    }  # fmt: skip
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


BAD_OVERRIDES = {
    "non-numeric": [
        "train.max_steps=abc", "train.batch_size=many", "optim.lr=fast", "optim.weight_decay=abc",
        "optim.warmup_steps=[1]", "train.clip.value=high", "data.valid_items={}", "model.seed=x",
        "train.ema=abc", "optim.betas=abc", "loss.l1_snr=abc", "data.mixing.seconds=abc",
        "data.mixing.snr_db=abc", "data.mixing.interferers=[a,b]",
    ],
    "zero": [
        "train.max_steps=0", "train.batch_size=0", "optim.lr=0", "train.grad_accum=0",
        "train.log_every=0", "train.valid_every=0", "train.save_every=0", "data.valid_items=0",
        "data.pool_size=0", "data.mixing.seconds=0", "loss.l1_snr=0",
        "data.mixing.interferers=[0,0]",
    ],
    "negative": [
        "train.max_steps=-1", "optim.lr=-1e-3", "optim.warmup_steps=-5",
        "optim.weight_decay=-0.1", "data.num_workers=-1", "train.keep_last=-1", "train.seed=-1",
        "loss.l1_snr=-1", "data.mixing.seconds=-1", "train.ema=-0.5", "optim.min_lr_ratio=-0.1",
        "data.mixing.absent_share=-0.5", "optim.betas=[-0.1,0.9]",
    ],
    "nan": [
        "optim.lr=.nan", "optim.lr=.inf", "optim.min_lr_ratio=.nan", "train.clip.percentile=.nan",
        "train.ema=.nan", "loss.l1_snr=.nan", "data.mixing.seconds=.nan",
        "data.mixing.snr_db=[.nan,1]", "optim.betas=[.nan,0.9]", "data.mixing.negative_share=.nan",
    ],
    "unknown": [
        "foo=1", "train.foo=1", "optim.lrr=1e-3", "data.mixing.bogus=1", "loss.l2=1",
        "train.clip.foo=1", "optim.lr.x=1", "train.max_steps", "=5", "train=5", "data.mixing=5",
        "output_dir=123", "train.tracker=bogus", "train.mixed_precision=fp32",
        "train.clip.mode=x", "optim.schedule=linear", "model.freeze=abc", "optim.min_lr_ratio=2",
    ],
}  # fmt: skip
MISSING = {
    "train-manifest": ["data.train={corpus}/nope.jsonl"],
    "valid-manifest": ["data.valid={corpus}/nope.jsonl"],
    "empty-manifest": ["data.train={corpus}/empty.jsonl"],
    "garbage-manifest": ["data.train={corpus}/garbage.jsonl"],
    "manifest-audio-missing": ["data.train={corpus}/missing-audio.jsonl"],
    "manifest-is-a-folder": ["data.train={corpus}"],
    "embeddings": ["data.embeddings={corpus}/nope.safetensors"],
    "model-config": ["model.config={corpus}/nope.yaml"],
    "model-bundle": ["model.config=null", "model.bundle={corpus}/no-bundle"],
    "query-encoder": ["model.query_encoder={corpus}/no-clap"],
}
TRAIN_CASES = [
    *((f"{area}:{o}", [o]) for area, items in BAD_OVERRIDES.items() for o in items),
    *((f"missing:{name}", items) for name, items in MISSING.items()),
]


@pytest.mark.parametrize(("case", "overrides"), TRAIN_CASES, ids=[c for c, _ in TRAIN_CASES])
def test_bad_training_override(
    capfd, train_config: Path, corpus: Path, case: str, overrides: list[str]
) -> None:
    sets = [a for o in overrides for a in ("--set", o.replace("{corpus}", str(corpus)))]
    before = fingerprint(train_config, corpus)
    code, _, err = cli(capfd, "train", train_config, *sets)
    assert_one_error_line(code, err)
    assert not (train_config.parent / "run").exists()  # no run folder, no checkpoint
    assert fingerprint(train_config, corpus) == before


BAD_TRAIN_FILES: dict[str, bytes | None] = {
    "missing": None,
    "a-folder": b"",
    "not-yaml": b"model: [\n",
    "a-list": b"- 1\n- 2\n",
    "binary": b"\xff\xfe\x00\x01",
    "nested-too-deep": b"[" * 1_500,
    "empty": b"",
    "unknown-section": b"optimiser: {}\n",
    "section-is-a-number": b"train: 5\n",
    "mixing-is-a-list": b"data: {train: x.jsonl, mixing: [1]}\nmodel: {config: m.yaml}\n",
}


@pytest.mark.parametrize("name", BAD_TRAIN_FILES)
def test_bad_training_config_file(capfd, tmp_path: Path, name: str) -> None:
    path = tmp_path / "train.yaml"
    content = BAD_TRAIN_FILES[name]
    if name == "a-folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    before = fingerprint(tmp_path)
    code, _, err = cli(capfd, "train", path)
    assert_one_error_line(code, err)
    assert fingerprint(tmp_path) == before


def test_bad_model_config_file_for_init_model(capfd, tmp_path: Path) -> None:
    """`init-model CONFIG`: a config nested too deep is a parse error, not a RecursionError."""
    for suffix, depth in ((".json", 100_000), (".yaml", 1_500)):  # YAML's scanner is slow
        config = tmp_path / f"deep{suffix}"
        config.write_text("[" * depth)
        code, _, err = cli(capfd, "init-model", config, tmp_path / "bundle")
        assert "nested too deeply" in assert_one_error_line(code, err)
        assert not (tmp_path / "bundle").exists()


# -- bad demo requests (the handler, in-process) ---------------------------------------------------
@pytest.fixture(scope="module")
def demo_files(work: Path, good: Path) -> dict[str, Path]:
    folder = work / "demo"
    folder.mkdir()
    files = {"good": good}
    sf.write(folder / "long.wav", np.zeros(3 * RATE, np.int16), RATE)  # 3 s > the 2 s limit
    sf.write(folder / "big.wav", np.zeros((RATE, 8), np.float32), RATE, subtype="FLOAT")
    sf.write(folder / "silent.wav", np.zeros(RATE // 2, np.int16), RATE)
    sf.write(folder / "nan.wav", np.full(800, np.nan, np.float32), RATE, subtype="FLOAT")
    (folder / "random.wav").write_bytes(np.random.default_rng(3).bytes(3000))
    (folder / "empty.wav").write_bytes(b"")
    (folder / "trunc.wav").write_bytes(good.read_bytes()[:3000])
    (folder / "folder.wav").mkdir()
    for name in ("long", "big", "silent", "nan", "random", "empty", "trunc", "folder"):
        files[name] = folder / f"{name}.wav"
    files["missing"] = folder / "missing.wav"
    return files


@pytest.fixture(scope="module")
def demo_handler(tiny_bundle: Path):
    from querysep.demo import DemoHandler, Limits, model_choices

    limits = Limits(max_seconds=2, max_file_mb=0.25, max_queries=3, time_limit=60)
    return DemoHandler(limits, model_choices([str(tiny_bundle)]))


BAD_DEMO = {
    "no-recording": ({"audio": None}, "missing"),
    "blank-recording": ({"audio": ""}, "missing"),
    "recording-gone": ({"audio": "missing"}, "no such file"),
    "recording-a-folder": ({"audio": "folder"}, "directory"),
    "recording-empty": ({"audio": "empty"}, "empty"),
    "recording-random-bytes": ({"audio": "random"}, "cannot read"),
    "recording-truncated": ({"audio": "trunc"}, "truncated"),
    "recording-nan": ({"audio": "nan"}, "NaN"),
    "recording-too-long": ({"audio": "long"}, "at most 2 s"),
    "recording-too-big": ({"audio": "big"}, "MB"),
    "query-empty": ({"query": ""}, "empty"),
    "query-blank": ({"query": "  \n "}, "empty"),
    "query-only-separators": ({"query": " ; ;\n;"}, "empty"),
    "query-none": ({"query": None}, "empty"),
    "query-a-number": ({"query": 5}, "must be text"),
    "query-a-list": ({"query": ["dog"]}, "must be text"),
    "query-2001-chars": ({"query": "x" * 2001}, "longer than 2000"),
    "query-1mb": ({"query": "dog barking " * 90_000}, "longer than 2000"),
    "query-nothing-after-except": ({"query": "extract everything except"}, "names no sound"),
    "query-remove-nothing": ({"query": "remove the"}, "names no sound"),
    "too-many-queries": ({"query": "dog; cat; bird; cow"}, "at most 3"),
    "negative-2001-chars": ({"negative": "y" * 2001}, "longer than 2000"),
    "negative-a-number": ({"negative": 5}, "must be text"),
    "negative-names-nothing": ({"negative": "remove the"}, "names no sound"),
    "mode-unknown": ({"mode": "explode"}, "mode"),
    "model-not-offered": ({"model": "/etc"}, "unknown model"),
    "model-not-cached": ({"model": "audiosep-base"}, "not in the cache"),
    "example-gone": ({"example": "missing"}, "no such file"),
    "example-random-bytes": ({"example": "random"}, "cannot read"),
    "example-too-long": ({"example": "long"}, "at most 2 s"),
    "example-a-folder": ({"example": "folder"}, "directory"),
    "example-silent": ({"example": "silent"}, "silent"),
    "weight-above-one": ({"example": "good", "example_weight": 1.5}, "between 0 and 1"),
    "weight-negative": ({"example": "good", "example_weight": -0.1}, "between 0 and 1"),
    "weight-nan": ({"example": "good", "example_weight": NAN}, "between 0 and 1"),
    "weight-text": ({"example": "good", "example_weight": "abc"}, "between 0 and 1"),
    "chunk-tiny": ({"chunk_seconds": 0.001}, "chunk_seconds"),
    "chunk-negative": ({"chunk_seconds": -5}, "chunk_seconds"),
    "chunk-nan": ({"chunk_seconds": NAN}, "chunk_seconds"),
    "chunk-text": ({"chunk_seconds": "abc"}, "chunk_seconds"),
    "candidates-100": ({"candidates": 100}, "1 to 8"),
    "candidates-zero": ({"candidates": 0}, "1 to 8"),
    "candidates-nan": ({"candidates": NAN}, "1 to 8"),
}


@pytest.mark.parametrize("case", BAD_DEMO)
def test_bad_demo_request(
    demo_handler, demo_files: dict, case: str, tmp_path: Path, monkeypatch, caplog
) -> None:
    """A gr.Error of one line that names the problem and no server path; nothing written,
    nothing logged as a failure (a bad request is not a bug)."""
    import gradio as gr

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    given, message = BAD_DEMO[case]
    request: dict[str, Any] = {"audio": "good", "query": "dog", **given}
    for key in ("audio", "example"):
        if isinstance(request.get(key), str) and request[key] in demo_files:
            request[key] = str(demo_files[request[key]])
    before = fingerprint(*demo_files.values())
    with caplog.at_level(logging.ERROR), pytest.raises(gr.Error) as info:
        demo_handler(**request, progress=lambda *a, **k: None)
    text = info.value.message
    assert message in text, text
    assert "\n" not in text and "Traceback" not in text
    assert str(demo_files["good"].parents[1]) not in text  # server paths stay hidden
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not (tmp_path / "gradio").exists()
    assert fingerprint(*demo_files.values()) == before


def test_demo_sampler_settings_on_a_mask_model_are_noted_not_fatal(
    demo_handler, good: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    *_, timing = demo_handler(
        str(good), "dog", steps=4, guidance=2.0, progress=lambda *a, **k: None
    )
    assert timing.endswith("steps, guidance ignored: this model is not generative"), timing


# -- signals, a full disk, an unwritable folder ----------------------------------------------------
def test_sigterm_to_a_separate_process_leaves_nothing_behind(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """A scheduler's SIGTERM while two queries' outputs are being written: exit status 143,
    one line, no partial outputs or temporary files, the input untouched."""
    src, out = tmp_path / "long.wav", tmp_path / "out"
    sf.write(src, tone(440, 240.0, RATE).T, RATE, subtype="PCM_16")
    before = fingerprint(src)
    proc = subprocess.Popen(
        [sys.executable, "-m", "querysep", "separate", str(src), "dog", "-q", "remove the cat",
         "--model", str(tiny_bundle), "-o", str(out), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(out.glob("**/.*.tmp")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    assert list(out.glob("**/.*.tmp")), "no output was being written"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["querysep: terminated"], err
    assert_nothing_written(out)
    assert fingerprint(src) == before


class _Mounted:
    """A small tmpfs mounted at `path` (as root), unmounted on exit."""

    def __init__(self, path: Path, options: str) -> None:
        self.path, self.options = path, options

    def __enter__(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        mount = ["mount", "-t", "tmpfs", "-o", self.options, "tmpfs", str(self.path)]
        done = subprocess.run(mount, capture_output=True, text=True)
        assert done.returncode == 0, f"cannot mount a tmpfs as root: {done.stderr}"
        return self.path

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.path)], capture_output=True)


class _ReadOnly:
    """A folder made read-only with chmod 0500 (non-root), restored on exit."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        self.path.chmod(0o500)
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.path.chmod(0o700)


ROOT = os.geteuid() == 0


def _full_or_locked(path: Path) -> tuple[Any, str]:
    """As root a real full disk (1 MiB tmpfs); otherwise a read-only folder (permission)."""
    if ROOT:
        return _Mounted(path, "size=1m"), "no space left"
    return _ReadOnly(path), "permission denied"


@pytest.fixture(scope="module")
def loud(work: Path) -> Path:
    """One second at 96 kHz stereo: each 32-bit output is 750 KiB, a pair exceeds 1 MiB."""
    path = work / "inputs" / "loud.wav"
    noise = np.random.default_rng(4).standard_normal((96_000, 2)).astype(np.float32) * 0.2
    sf.write(path, noise, 96_000, subtype="PCM_16")
    return path


def test_full_disk_cli(capfd, tiny_bundle: Path, loud: Path, tmp_path: Path) -> None:
    place, reason = _full_or_locked(tmp_path / "disk")
    before = fingerprint(loud)
    with place as out:
        code, _, err = cli(capfd, "separate", loud, "dog", "--model", tiny_bundle, "-o", out)
        line = assert_one_error_line(code, err)
        assert reason in line and str(out) in line, line
        assert_nothing_written(out)
    assert fingerprint(loud) == before


def test_full_disk_api(tiny_separator: Separator, loud: Path, tmp_path: Path) -> None:
    place, reason = _full_or_locked(tmp_path / "disk")
    with place as out, pytest.raises(QuerysepError, match=reason) as info:
        try:
            tiny_separator.separate_file(loud, ["dog", "cat"], out)
        finally:
            assert_nothing_written(out)
    assert_one_line_error(info.value)


def _read_only(path: Path) -> Any:
    return _Mounted(path, "ro,size=1m") if ROOT else _ReadOnly(path)


def test_read_only_folder_cli(capfd, tiny_bundle: Path, good: Path, tmp_path: Path) -> None:
    with _read_only(tmp_path / "ro") as out:
        code, _, err = cli(capfd, "separate", good, "dog", "--model", tiny_bundle, "-o", out)
        assert "permission denied" in assert_one_error_line(code, err)
        assert_nothing_written(out)


def test_read_only_folder_api(tiny_separator: Separator, good: Path, tmp_path: Path) -> None:
    with _read_only(tmp_path / "ro") as out:
        with pytest.raises(QuerysepError, match="permission denied") as info:
            tiny_separator.separate_file(good, "dog", out)
        assert_one_line_error(info.value)
        assert_nothing_written(out)


@pytest.mark.parametrize("below", [False, True], ids=["out-is-a-file", "out-below-a-file"])
def test_output_folder_that_is_a_file(
    capfd, tiny_bundle: Path, tiny_separator: Separator, good: Path, below: bool
) -> None:
    """`-o` naming the input file itself (or a folder inside it): refused, input untouched."""
    out = good / "sub" if below else good
    before = fingerprint(good.parent)
    code, _, err = cli(capfd, "separate", good, "dog", "--model", tiny_bundle, "-o", out)
    assert_one_error_line(code, err)
    with pytest.raises(QuerysepError) as info:
        tiny_separator.separate_file(good, "dog", out)
    assert_one_line_error(info.value)
    assert fingerprint(good.parent) == before
    assert_no_temp_files(good.parent)
