"""Training throughput: examples/s and the share of time spent waiting for data.

    python bench/train.py [--config configs/train/synth-smoke.yaml] [--steps 60] [--workers 0 2]

Runs the trainer for a few steps per setting (first steps include warm-up; the figure is the
whole run's average) on whatever device Accelerate picks: CPU here, a GPU when there is one
(pass --bf16 there). The synthetic corpus and the smoke recipe's fitted CLAP must exist:
`querysep data synth data/synth` and `querysep train-clap data/synth/train.jsonl runs/synth-clap`.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from querysep.train.trainer import Trainer, load_train_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/train/synth-smoke.yaml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[8])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--bf16", action="store_true", help="mixed precision (GPU)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device: {device}, torch threads {torch.get_num_threads()}, config {args.config}")
    print("| batch | workers | steps | examples/s | data wait share |")
    print("|---|---|---|---|---|")
    for batch in args.batch_size:
        for workers in args.workers:
            with tempfile.TemporaryDirectory() as out:
                overrides = [
                    f"train.max_steps={args.steps}",
                    f"train.batch_size={batch}",
                    f"data.num_workers={workers}",
                    f"output_dir={out}",
                    "train.tracker=none",
                    "data.valid=null",
                    "train.progress=false",
                    f"train.valid_every={10**9}",
                    f"train.save_every={10**9}",
                    f"train.mixed_precision={'bf16' if args.bf16 else 'no'}",
                    *args.set,
                ]
                result = Trainer(load_train_config(args.config, overrides)).fit()
            print(
                f"| {batch} | {workers} | {args.steps} | {result['examples_per_s']:.1f} | "
                f"{result['data_wait_share']:.1%} |"
            )


if __name__ == "__main__":
    main()
