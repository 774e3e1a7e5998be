"""The web demo under load: N requests from K concurrent gradio_client clients.

    python bench/demo_load.py                                # tiny random bundle, 20 x 4 clients
    python bench/demo_load.py --config bandsplit-small       # a 10 M-parameter separator
    python bench/demo_load.py --model path/to/bundle --requests 40 --clients 8 --concurrency 2

Starts `querysep demo` in its own process on 127.0.0.1 (as a user would), fires the requests,
checks every answer (length and rate of the input, target + residual == mixture, and the same
target as `Separator.separate` gives in this process), and reports latency percentiles,
throughput and the server's RSS: after start-up, after one warm-up request, at its peak under
load, right after the load and after a few idle seconds. `--config` builds a random bundle from
configs/models/<config>.yaml with the tiny offline query encoder (speed and memory do not
depend on the weights); the separator itself is the config's.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ("dog barking", "a man speaking", "remove the dog barking", "dog barking; a man speaking")
PCM16 = 2.0**-15


def make_bundle(config: str, out: Path) -> Path:
    from querysep.config import load_config
    from querysep.separator import Separator

    cfg = load_config(ROOT / "configs" / "models" / f"{config}.yaml")
    cfg["query_encoder"] = {"tiny": True}  # offline; the separator is the config's own
    return Separator.from_config(cfg, seed=0).save_pretrained(out / config)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model: Path | str, workdir: Path, concurrency: int
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(workdir / "gradio"),
        "QUERYSEP_DEMO_CONCURRENCY": str(concurrency),
        "QUERYSEP_DEMO_QUEUE_SIZE": "256",
    }
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 (kept open for the server's life)
    server = subprocess.Popen(
        [sys.executable, "-m", "querysep", "demo", "--model", str(model), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the demo exited:\n{(workdir / 'server.log').read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return server, url
        except OSError:
            time.sleep(0.3)
    server.kill()
    sys.exit("the demo did not start within 300 s")


class RssSampler(threading.Thread):
    """Polls a process's RSS every `every` seconds and keeps the peak."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        import psutil

        super().__init__(daemon=True)
        self.process, self.every, self.peak = psutil.Process(pid), every, 0
        self.running = True

    def now(self) -> int:
        return self.process.memory_info().rss

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.now())
            time.sleep(self.every)


def read(path: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return audio.T, rate


@dataclass
class Expected:
    """The input and, per bench query, the targets `Separator.separate` gives in-process."""

    mixture: np.ndarray
    rate: int
    targets: dict[str, list[np.ndarray]]


def check(answer: tuple, query: str, expected: Expected) -> None:
    """Raises AssertionError unless the answer is what the engine gives for this request."""
    target, residual, *_, stems, _timing = answer
    t, t_rate = read(target)
    r, r_rate = read(residual)
    shape = expected.mixture.shape
    assert t_rate == r_rate == expected.rate and t.shape == r.shape == shape, (t.shape, t_rate)
    assert np.abs(t + r - expected.mixture).max() <= 2 * PCM16, "target + residual != mixture"
    for stem, want in zip(stems, expected.targets[query], strict=True):
        assert np.abs(read(stem)[0] - want).max() <= PCM16, f"{query}: not the engine's result"


@dataclass
class Round:
    wall: float
    latencies: list[float]
    peak: int
    after: int


def burst(
    url: str, args: argparse.Namespace, expected: Expected, sampler: RssSampler, downloads: Path
) -> Round:
    """`args.requests` requests spread over `args.clients` clients, every answer checked."""
    from gradio_client import Client, handle_file

    clients = [
        Client(url, verbose=False, download_files=str(downloads)) for _ in range(args.clients)
    ]
    latencies: list[float] = []
    lock = threading.Lock()

    def client_loop(k: int) -> None:
        for i in range(k, args.requests, args.clients):
            query = QUERIES[i % len(QUERIES)]
            started = time.perf_counter()
            answer = clients[k].predict(handle_file(str(args.input)), query, api_name="/separate")
            elapsed = time.perf_counter() - started
            check(answer, query, expected)
            with lock:
                latencies.append(elapsed)

    sampler.peak = 0
    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(client_loop, range(args.clients)))
    return Round(time.perf_counter() - started, latencies, sampler.peak, sampler.now())


def engine_results(model: Path | str, path: Path) -> Expected:
    from querysep import audio as qaudio
    from querysep.demo import build_queries
    from querysep.separator import Separator

    mixture, rate = qaudio.load(path)
    local = Separator.from_pretrained(model, device="cpu")
    targets = {
        q: [r.target for r in local.separate(mixture, build_queries(q), sample_rate=rate)]
        for q in QUERIES
    }
    return Expected(mixture, rate, targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="bundle, Hub id or registry name (default: --config)")
    parser.add_argument("--config", default="bandsplit-tiny", help="random bundle from a config")
    parser.add_argument("--input", type=Path, default=ROOT / "demo/examples/dog_and_speech.wav")
    parser.add_argument("--requests", type=int, default=20, help="requests per round")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1, help="bursts, one after the other")
    parser.add_argument("--concurrency", type=int, default=1, help="server's concurrency limit")
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before last RSS")
    args = parser.parse_args()

    import psutil
    import torch
    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        downloads = workdir / "downloads"  # the clients' copies of the answers
        model = args.model or make_bundle(args.config, workdir)
        expected = engine_results(model, args.input)
        server, url = start_server(model, workdir, args.concurrency)
        sampler = RssSampler(server.pid)
        try:
            rss_start = sampler.now()
            Client(url, verbose=False, download_files=str(downloads)).predict(
                handle_file(str(args.input)), "warm-up", api_name="/separate"
            )
            rss_warm = sampler.now()
            sampler.start()
            rounds = [burst(url, args, expected, sampler, downloads) for _ in range(args.rounds)]
            time.sleep(args.settle)
            rss_settled = sampler.now()
            sampler.running = False
        finally:
            server.terminate()
            server.wait(timeout=30)

    mib = 2**-20
    mixture, rate = expected.mixture, expected.rate
    print(
        f"machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
        f"torch {torch.__version__}; model: {args.model or args.config + ' (random weights)'}; "
        f"input {args.input.name} ({mixture.shape[1] / rate:.1f} s, {rate} Hz); server "
        f"concurrency {args.concurrency}; {args.requests} requests from {args.clients} clients "
        f"per round; RSS MiB: {rss_start * mib:.0f} after start-up, {rss_warm * mib:.0f} after "
        f"one warm-up request, {rss_settled * mib:.0f} {args.settle:g} s after the last round"
    )
    print(f"all {sum(len(r.latencies) for r in rounds)} answers checked: correct")
    print("| round | wall s | req/s | p50 s | p90 s | max s | peak RSS MiB | RSS after MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for k, r in enumerate(rounds, 1):
        lat = np.array(r.latencies)
        print(
            f"| {k} | {r.wall:.1f} | {len(lat) / r.wall:.2f} | {np.percentile(lat, 50):.2f} | "
            f"{np.percentile(lat, 90):.2f} | {lat.max():.2f} | {r.peak * mib:.0f} | "
            f"{r.after * mib:.0f} |"
        )


if __name__ == "__main__":
    main()
