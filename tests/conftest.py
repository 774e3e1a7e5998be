from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (`make test` runs 2 workers) each worker gets its share of the cores, set
# before torch is imported: two workers with a full thread team each would fight over them.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    _share = max(1, (_cores or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
# Tests never read or fill the user's model cache (a converted audiosep-base there would change
# what the default model does).
os.environ["QUERYSEP_CACHE"] = os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"querysep-test-cache-{os.getpid()}"
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
CONFIGS = ROOT / "configs" / "models"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny band-split bundle whose FiLM is perturbed so queries matter."""
    import torch

    from querysep.separator import Separator

    sep = Separator.from_config(CONFIGS / "bandsplit-tiny.yaml", seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in sep.model.named_parameters():
            if "film" in name.lower():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    sep.save_pretrained(out)
    return out


def small_resunet_config() -> dict:
    """A small 16 kHz ResUNet with the tiny CLAP, as a model config."""
    return {
        "family": "resunet",
        "sample_rate": 16_000,
        "model": {"n_fft": 512, "hop_length": 128, "widths": [4, 4, 8, 8, 8, 8]},
        "query_encoder": {"tiny": True},
    }


def small_resunet_bundle(folder: Path) -> Path:
    """A random `small_resunet_config` bundle: what `model.extend` grows and `querysep pack`
    packs in the tests."""
    from querysep.separator import Separator

    return Separator.from_config(small_resunet_config(), seed=1).save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_separator(tiny_bundle: Path):
    from querysep.separator import Separator

    return Separator.from_pretrained(tiny_bundle, device="cpu")


def run_cli(capture: pytest.CaptureFixture[str], *args: object) -> subprocess.CompletedProcess:
    """`querysep ARGS` in this process (no interpreter start-up per call): its exit status and
    what `capture` (capfd sees a library writing to fd 2 too) caught on stdout and stderr."""
    import signal

    from querysep.cli import main

    capture.readouterr()
    handler = signal.getsignal(signal.SIGTERM)  # main() installs its own; put pytest's back
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's --help / --version
        code = exc.code
    finally:
        signal.signal(signal.SIGTERM, handler)
    out, err = capture.readouterr()
    return subprocess.CompletedProcess([str(a) for a in args], code, out, err)


def tone(freq: float, seconds: float, sr: int, channels: int = 1, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([x * (1 - 0.2 * c) for c in range(channels)]).astype(np.float32)


def bad_audio_files(tmp: Path) -> dict[str, Path]:
    """Every kind of unusable input file, by name."""
    import soundfile as sf

    (tmp / "empty.wav").write_bytes(b"")
    (tmp / "random.flac").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp / "folder.wav").mkdir()
    sf.write(tmp / "full.wav", tone(440, 1.0, 16000).T, 16000)
    (tmp / "trunc.wav").write_bytes((tmp / "full.wav").read_bytes()[:3000])
    sf.write(tmp / "full.flac", np.random.default_rng(1).standard_normal((16000, 1)) * 0.1, 16000)
    data = (tmp / "full.flac").read_bytes()
    (tmp / "trunc.flac").write_bytes(data[: len(data) // 2])
    sf.write(tmp / "zero.wav", np.zeros((0, 1)), 16000)
    sf.write(tmp / "slow.wav", np.zeros((100, 1)), 500)
    sf.write(tmp / "nan.wav", np.full((1000, 1), np.nan, np.float32), 16000, subtype="FLOAT")
    names = ("missing.wav", "empty.wav", "random.flac", "folder.wav", "trunc.wav", "trunc.flac",
             "zero.wav", "slow.wav", "nan.wav")  # fmt: skip
    return {name: tmp / name for name in names}


class DemoServer:
    """A `querysep demo` process on 127.0.0.1 (see the `demo_server` fixture)."""

    def __init__(self, url: str, process: subprocess.Popen, log: Path) -> None:
        self.url, self.process, self.log = url, process, log

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


#: Limits the demo tests run under: small, so the limit tests need only small files.
DEMO_TEST_LIMITS = {"MAX_SECONDS": "20", "MAX_FILE_MB": "1", "CONCURRENCY": "2", "QUEUE_SIZE": "32"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_demo(
    bundle: Path | None, workdir: Path, limits: dict[str, str], env: dict[str, str] | None = None
) -> DemoServer:
    """Launches `python -m querysep demo --model BUNDLE` (no --model for None: the default
    model) as a user would and waits for it."""
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(workdir / "gradio"),
        **{f"QUERYSEP_DEMO_{k}": v for k, v in limits.items()},
        **(env or {}),
    }
    log = workdir / "server.log"
    model = ["--model", str(bundle)] if bundle else []
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "querysep", "demo", *model, "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir,
        )  # fmt: skip
    return wait_for(DemoServer(f"http://127.0.0.1:{port}/", process, log))


def wait_for(server: DemoServer, seconds: float = 120) -> DemoServer:
    """Waits until the server answers; its log in the error when it exits or stays silent."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"the demo exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            urllib.request.urlopen(server.url, timeout=2).close()
            return server
        except OSError:
            time.sleep(0.3)
    server.process.kill()
    raise RuntimeError(f"the demo did not answer within {seconds:g} s:\n{server.log_tail()}")


def stop_demo(server: DemoServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def demo_server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    """The web demo serving the tiny bundle, shared by the API and browser tests."""
    server = start_demo(tiny_bundle, tmp_path_factory.mktemp("demo"), DEMO_TEST_LIMITS)
    yield server
    stop_demo(server)
