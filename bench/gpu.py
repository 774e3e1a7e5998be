"""The GPU check: one command, at most about 8 minutes on one GPU.

    python bench/gpu.py                 # everything below; figures as a table and one JSON line
    python bench/gpu.py --quick         # fewer repeats (a smoke run, also works on CPU)

1. Throughput, in seconds of audio per second, of band-split small / base and the AudioSep
   ResUNet on 60 s inputs at fp32 and bf16, batch 1 / 8 / 16, with peak GPU memory.
2. The largest difference between CPU (fp32) and GPU outputs on the same 10 s input.
3. Bulk: 200 generated 10 s files through `Separator.separate_files` (bf16, batch 16): files per
   hour, against the same model's batch-16 throughput on one long input.

Weights are random (speed does not depend on them) and the query embedding is a fixed random
vector: Hub CLAP towers cannot be downloaded on the device machine, and a query is embedded once
per run anyway.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RATE = 44100


def separator(config: str, device: str, dtype: str):
    from querysep.separator import Separator

    sep = Separator.from_config(ROOT / "configs" / "models" / f"{config}.yaml").to(device, dtype)
    g = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(1, sep.model.query_dim, generator=g), dim=-1)
    sep.embed_queries = lambda queries: (query.repeat(len(queries), 1), None)  # type: ignore[method-assign]
    return sep


def signal(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    x = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    return x[None].astype(np.float32)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def throughput(sep, audio: np.ndarray, batch: int, repeats: int, device: str) -> dict:
    from querysep.options import SeparationOptions

    opts = SeparationOptions(batch_size=batch)
    sep.separate(audio[:, : RATE * 7], "q", sample_rate=RATE, options=opts)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        sep.separate(audio, "q", sample_rate=RATE, options=opts)
    sync(device)
    wall = time.perf_counter() - start
    row = {"x_realtime": round(repeats * audio.shape[1] / RATE / wall, 1)}
    if device.startswith("cuda"):
        row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return row


def cpu_gpu_difference(config: str, device: str) -> dict:
    audio = signal(10.0, seed=1)
    ref = separator(config, "cpu", "fp32").separate(audio, "q", sample_rate=RATE).target
    out = {}
    for dtype in ("fp32", "bf16"):
        got = separator(config, device, dtype).separate(audio, "q", sample_rate=RATE).target
        out[dtype] = float(np.abs(got - ref).max())
    return out


def bulk(config: str, device: str, files: int, batch: int) -> dict:
    import soundfile as sf

    from querysep import batch as qbatch
    from querysep.options import SeparationOptions
    from querysep.query import Query

    sep = separator(config, device, "bf16" if device.startswith("cuda") else "fp32")
    opts = SeparationOptions(batch_size=batch)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for k in range(files):
            sf.write(folder / f"f{k:03d}.wav", signal(10.0, seed=k)[0], RATE)
        items = qbatch.collect([Path(tmp) / "in"], [Query.from_text("q")])
        sep.separate_files(items[:4], Path(tmp) / "warm", options=opts, log=False)
        sync(device)
        start = time.perf_counter()
        summary = sep.separate_files(items, Path(tmp) / "out", options=opts, log=False)
        sync(device)
        wall = time.perf_counter() - start
    assert summary.done == files, summary.failures[:3]
    return {
        "files": files,
        "wall_s": round(wall, 1),
        "files_per_hour": round(files / wall * 3600),
        "x_realtime": round(files * 10.0 / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and files")
    parser.add_argument(
        "--configs", nargs="+", default=["bandsplit-small", "bandsplit-base", "resunet-audiosep"]
    )
    args = parser.parse_args()
    device = args.device
    repeats = 1 if args.quick else 3
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.machine()
    print(f"# {gpu}, torch {torch.__version__}, device {device}")
    audio = signal(60.0)
    report: dict = {"device": gpu, "throughput": [], "difference": {}, "bulk": {}}
    dtypes = ("fp32", "bf16") if device.startswith("cuda") else ("fp32",)
    batches = (1, 8, 16)
    print(f"{'config':18} {'dtype':5} " + " ".join(f"{'b' + str(b):>16}" for b in batches))
    for config in args.configs:
        for dtype in dtypes:
            sep = separator(config, device, dtype)
            cells = []
            for b in batches:
                row = throughput(sep, audio, b, repeats, device)
                report["throughput"].append({"config": config, "dtype": dtype, "batch": b, **row})
                mem = f" {row['peak_gpu_mib']}M" if "peak_gpu_mib" in row else ""
                cells.append(f"{row['x_realtime']:>9.1f}x{mem:>6}")
            print(f"{config:18} {dtype:5} " + " ".join(f"{c:>16}" for c in cells), flush=True)
            del sep
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    if device.startswith("cuda"):
        for config in args.configs:
            diff = cpu_gpu_difference(config, device)
            report["difference"][config] = diff
            print(
                f"CPU vs GPU, {config}: max |diff| fp32 {diff['fp32']:.2e}, bf16 {diff['bf16']:.2e}"
            )
    files = 20 if args.quick else 200
    report["bulk"] = bulk("bandsplit-base", device, files, 16)
    print(
        f"bulk, bandsplit-base, {files} x 10 s files, batch 16: {report['bulk']['files_per_hour']} "
        f"files/hour ({report['bulk']['x_realtime']}x real time)"
    )
    print("RESULT " + json.dumps(report))


if __name__ == "__main__":
    main()
