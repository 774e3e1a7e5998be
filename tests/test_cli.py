from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from querysep import __version__

from .conftest import CONFIGS, bad_audio_files, tone

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


def test_bad_inputs_give_one_line_errors(bundle: Path, tmp_path: Path) -> None:
    for name, path in bad_audio_files(tmp_path).items():
        out = run("separate", str(path), "dog", "--model", str(bundle), "-o", str(tmp_path / "o"))
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
def test_bad_arguments(bundle: Path, tmp_path: Path, args: list[str], message: str) -> None:
    src = tmp_path / "in.wav"
    sf.write(src, tone(440, 0.5, 16000).T, 16000)
    model = [] if "--model" in args else ["--model", str(bundle)]
    out = run("separate", str(src), *args, *model, "-o", str(tmp_path / "o"))
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr


def test_default_model_offline_says_what_to_download(tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    sf.write(src, tone(440, 0.5, 16000).T, 16000)
    env = {**ENV, "QUERYSEP_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-m", "querysep", "separate", str(src), "dog", "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
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
    """A 20x longer file costs no more memory: files are read, separated and written in blocks."""
    peaks = {}
    for seconds in (15, 300):
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
    # 300 s of stereo float32 alone is 100 MiB: growth must stay far below that
    assert peaks[300] - peaks[15] < 40, peaks
