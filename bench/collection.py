"""Collection throughput on CPU: many short files against the same audio as one long file.

    python bench/collection.py                    # 200 files of 10 s, band-split small
    python bench/collection.py --files 60 --config bandsplit-small

Three runs over the same audio, each in fresh processes, outputs written to disk:
  long     one file of files x 10 s, `Separator.separate_file`, 1 process x 2 threads
  1x2      the files through `separate_files`, 1 process x 2 torch threads (2 workers)
  2x1      the files split by rank (RANK / WORLD_SIZE, as torchrun sets them), 2 processes x 1
           thread each
Per-file overhead = how much slower than `long` a collection run is. Weights are random and the
query embedding a fixed vector, as in bench/separate.py.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATE = 44100


def make_inputs(folder: Path, files: int) -> Path:
    import numpy as np
    import soundfile as sf

    (folder / "in").mkdir(parents=True)
    with sf.SoundFile(folder / "long.wav", "w", RATE, 1, subtype="PCM_16") as long:
        for k in range(files):
            rng = np.random.default_rng(k)
            t = np.arange(10 * RATE) / RATE
            x = 0.2 * np.sin(2 * np.pi * (180 + k) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(folder / "in" / f"f{k:03d}.wav", x.astype(np.float32), RATE, "PCM_16")
            long.write(x.astype(np.float32))
    return folder


def worker(args: argparse.Namespace) -> None:
    import torch

    from querysep import batch
    from querysep.query import Query
    from querysep.separator import Separator

    torch.set_num_threads(args.threads)
    sep = Separator.from_config(ROOT / "configs" / "models" / f"{args.config}.yaml")
    g = torch.Generator().manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(1, sep.model.query_dim, generator=g), dim=-1)
    sep.embed_queries = lambda queries: (query.repeat(len(queries), 1), None)  # type: ignore[method-assign]
    folder = Path(args.folder)
    out = folder / f"out-{args.mode}-{args.threads}"  # every run writes afresh
    start = time.perf_counter()
    if args.mode == "long":
        sep.separate_file(folder / "long.wav", "q", out)
    else:
        items = batch.collect([folder / "in"], [Query.from_text("q")])
        summary = sep.separate_files(items, out, workers=args.threads, log=False)
        assert summary.failed == 0, summary.failures[:3]
    print("RESULT " + json.dumps({"wall_s": time.perf_counter() - start}))


def launch(args: argparse.Namespace, mode: str, threads: int, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--worker", mode, "--folder", args.folder,
           "--config", args.config, "--threads", str(threads)]  # fmt: skip
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env, "OMP_NUM_THREADS": str(threads)},
    )


def timed(procs: list[subprocess.Popen]) -> float:
    """The slowest worker's separation time (model loading and start-up excluded)."""
    walls = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            sys.exit(f"a worker failed:\n{out}")
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        walls.append(json.loads(line[7:])["wall_s"])
    return max(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--config", default="bandsplit-small")
    parser.add_argument("--worker", choices=["long", "files"])
    parser.add_argument("--folder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.worker:
        args.mode = args.worker
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.folder = str(make_inputs(Path(tmp), args.files))
        audio = args.files * 10.0
        long = timed([launch(args, "long", 2, {})])
        one = timed([launch(args, "files", 2, {})])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ranks = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        two = timed(
            [
                launch(args, "files", 1, {**ranks, "RANK": str(r), "LOCAL_RANK": str(r)})
                for r in (0, 1)
            ]
        )
    print(
        f"{args.config}, {args.files} files x 10 s ({audio:.0f} s of audio); separation time, "
        "start-up and model load excluded"
    )
    for name, wall in (("one long file, 1x2", long), ("files, 1 process x 2 threads", one),
                       ("files, 2 processes x 1 thread", two)):  # fmt: skip
        print(f"  {name:30} {wall:7.1f} s  {audio / wall:6.1f}x real time  "
              f"{100 * (wall / long - 1):+5.1f}% vs long")  # fmt: skip
    print("RESULT " + json.dumps({"config": args.config, "files": args.files, "long_s": long,
                                  "files_1x2_s": one, "files_2x1_s": two}))  # fmt: skip


if __name__ == "__main__":
    main()
