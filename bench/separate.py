"""Separation speed and memory: real-time factor and peak RSS against input length.

    python bench/separate.py                                # small + base, 10 s / 1 min / 10 min
    python bench/separate.py --configs bandsplit-small --durations 10 60 --device cuda --dtype bf16
    python bench/separate.py --configs bandsplit-base resunet-audiosep --durations 60 --compile

Each measurement runs in a fresh process (so peak RSS is that run's own) and streams a
generated 44.1 kHz file to disk through `Separator.separate_file`, as the CLI does. Weights are
random (speed does not depend on them) and the query embedding is a fixed random vector: hub
CLAP towers cannot be downloaded here, and a query is embedded once per run anyway.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_input(path: Path, seconds: int, channels: int, rate: int = 44100) -> None:
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", rate, channels, subtype="PCM_16") as f:
        for start in range(0, seconds, 10):
            n = min(10, seconds - start) * rate
            t = (np.arange(n) + start * rate) / rate
            block = 0.2 * np.sin(2 * np.pi * 220 * t)[:, None] + 0.05 * rng.standard_normal(
                (n, channels)
            )
            f.write(block.astype(np.float32))


def worker(args: argparse.Namespace) -> None:
    import torch

    from querysep.separator import Separator

    sep = Separator.from_config(ROOT / "configs" / "models" / f"{args.config}.yaml").to(
        args.device, args.dtype
    )
    g = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(1, sep.model.query_dim, generator=g), dim=-1)
    sep.embed_queries = lambda queries: (query.repeat(len(queries), 1), None)  # type: ignore[method-assign]
    if args.compile:
        sep.compile()
    with tempfile.TemporaryDirectory() as out:
        warm = Path(out) / "warm.wav"
        # compiled: warm up on full-length chunks (a lone short chunk has a shape of its own)
        make_input(warm, 14 if args.compile else 2, 1)
        start = time.perf_counter()
        sep.separate_file(warm, "warm-up", out)
        warm_s = time.perf_counter() - start
        if sep.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        sep.separate_file(args.input, "query", out)
        if sep.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    result = {
        "config": args.config,
        "params_m": round(sep.model.num_parameters() / 1e6, 2),
        "seconds": args.seconds,
        "channels": args.channels,
        "device": str(sep.device),
        "dtype": str(sep.dtype).replace("torch.", ""),
        "wall_s": round(elapsed, 2),
        "rtf": round(elapsed / args.seconds, 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "compiled": bool(args.compile),
        "warm_up_s": round(warm_s, 1),
    }
    if sep.device.type == "cuda":
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["bandsplit-small", "bandsplit-base"])
    parser.add_argument("--durations", nargs="+", type=int, default=[10, 60, 600])
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model (warm-up compiles)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    machine = platform.processor() or platform.machine()
    print(f"# {machine}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {args.device}, dtype {args.dtype or 'fp32'}")  # fmt: skip
    print("| config | params | input | channels | wall s | RTF | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in args.durations:
            path = Path(tmp) / f"in{seconds}.wav"
            make_input(path, seconds, args.channels)
            for config in args.configs:
                cmd = [sys.executable, __file__, "--worker", "--config", config,
                       "--input", str(path), "--seconds", str(seconds),
                       "--channels", str(args.channels), "--device", args.device]  # fmt: skip
                if args.dtype:
                    cmd += ["--dtype", args.dtype]
                if args.compile:
                    cmd += ["--compile"]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode or not line:
                    print(f"| {config} | failed: {proc.stderr.strip().splitlines()[-1:]} |")
                    continue
                row = json.loads(line[0][7:])
                rows.append(row)
                gpu = f" (GPU {row['peak_gpu_mib']} MiB)" if "peak_gpu_mib" in row else ""
                print(f"| {config} | {row['params_m']} M | {seconds} s | {args.channels} | "
                      f"{row['wall_s']} | {row['rtf']} | {row['peak_rss_mib']}{gpu} |",
                      flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
