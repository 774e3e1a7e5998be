"""Flow separator: quality and time against the number of network evaluations (NFE).

    python bench/flow.py --flow runs/synth-smoke-flow/final --bandsplit runs/synth-smoke/final \\
        --test data/synth/test.jsonl

Held-out mixtures are drawn from the test manifest as `querysep evaluate manifest` draws them
(one interferer, 0 dB, fixed seed). The flow model is sampled with 1, 2, 4, 8, 16 and 32 steps
(Euler without guidance: one evaluation per step) and with best-of-k re-ranking; the band-split
model is one forward pass (train both for equal CPU time to compare them fairly). CLAPScore
uses the bundle's own query encoder; the reference target's and the mixture's scores are
printed for scale.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch


def run(separator, items, **options) -> dict[str, float]:
    from querysep import metrics
    from querysep.evaluate import score

    rows, elapsed, seconds = [], 0.0, 0.0
    rate = separator.sample_rate
    for i, item in enumerate(items):
        mixture, source = item.load()
        seed = {"seed": i} if "steps" in options else {}
        start = time.perf_counter()
        result = separator.separate(mixture, item.caption, sample_rate=rate, **options, **seed)
        elapsed += time.perf_counter() - start
        seconds += len(mixture) / rate
        estimate = result.target[0]
        row = score(estimate, source, mixture)
        row["clap"] = metrics.clap_score(separator.query_encoder, estimate, rate, item.caption)
        rows.append(row)
    out = {k: float(np.mean([r[k] for r in rows])) for k in ("sdri", "si_sdri", "clap")}
    out["sec_per_sec"] = elapsed / seconds
    return out


def reference_scores(separator, items) -> tuple[float, float]:
    from querysep import metrics

    enc, rate = separator.query_encoder, separator.sample_rate
    target, mixture = [], []
    for item in items:
        mix, src = item.load()
        target.append(metrics.clap_score(enc, src, rate, item.caption))
        mixture.append(metrics.clap_score(enc, mix, rate, item.caption))
    return float(np.mean(target)), float(np.mean(mixture))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flow", type=Path, required=True, help="trained flow bundle")
    parser.add_argument("--bandsplit", type=Path, help="band-split bundle to compare with")
    parser.add_argument("--test", type=Path, required=True, help="held-out manifest")
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--nfe", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--candidates", type=int, nargs="*", default=[4], help="best-of-k at 4 NFE")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from querysep.evaluate import manifest_items
    from querysep.separator import Separator

    torch.set_num_threads(args.threads)
    flow = Separator.from_pretrained(args.flow, device="cpu")
    items = manifest_items(args.test, flow.sample_rate, args.items, 0, args.seconds)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads; {len(items)} mixtures of {args.seconds} s at "
          f"{flow.sample_rate} Hz")  # fmt: skip
    clean, mix = reference_scores(flow, items)
    print(f"CLAPScore of the reference targets {clean:.3f}, of the mixtures {mix:.3f}")
    print("| model | steps | NFE | SDRi dB | SI-SDRi dB | CLAPScore | s per s audio |")
    print("|---|---|---|---|---|---|---|")

    def line(name: str, steps: str, nfe: str, r: dict[str, float]) -> None:
        print(f"| {name} | {steps} | {nfe} | {r['sdri']:.2f} | {r['si_sdri']:.2f} | "
              f"{r['clap']:.3f} | {r['sec_per_sec']:.3f} |", flush=True)  # fmt: skip

    results = {}
    for n in args.nfe:
        results[n] = run(flow, items, steps=n)
        line("flow", str(n), str(n), results[n])
    for k in args.candidates:
        line(f"flow, best of {k}", "4", f"{4 * k}", run(flow, items, steps=4, candidates=k))
    if args.bandsplit:
        bandsplit = Separator.from_pretrained(args.bandsplit, device="cpu")
        line("band-split", "-", "1", run(bandsplit, items))
    if 4 in results and 32 in results:
        gap = results[32]["si_sdri"] - results[4]["si_sdri"]
        print(f"SI-SDRi gap, 32 vs 4 NFE: {gap:.2f} dB (target: within 0.5 dB)")


if __name__ == "__main__":
    main()
