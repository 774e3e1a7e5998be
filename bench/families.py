"""The three separator families at equal CPU time on `querysep data corpus`: which to ship.

    python bench/families.py [--minutes 6] [--items 126]

Each family trains with querysep-mini's recipe (configs/train/mini.yaml: same data, mixing,
fitted CLAP, batch, optimizer) for the number of steps its measured speed fits into the same
CPU budget, then `bench/mini.py` scores its final bundle on the corpus's held-out test split.
Steps come from examples/s measured on an idle machine (`bench/train.py --config
configs/train/mini.yaml --set model.config=...`), so a busy machine changes the wall time,
not the comparison; the CPU seconds each run really used are printed beside them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

#: family config -> training examples/s with the mini recipe on the idle 2-core CPU: band-split
#: from the first querysep-mini's 5,000-step run, the others from bench/train.py (25 steps of 8).
SPEEDS = {
    "configs/models/bandsplit-mini.yaml": 19.5,
    "configs/models/resunet-mini.yaml": 10.7,
    "configs/models/flow-mini.yaml": 17.3,
}
BATCH = 8


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="training budget per family")
    parser.add_argument("--items", type=int, default=126, help="test mixtures per family")
    parser.add_argument("--out", type=Path, default=Path("runs/families"))
    args = parser.parse_args()
    rows = []
    for config, speed in SPEEDS.items():
        name = Path(config).stem
        steps = round(args.minutes * 60 * speed / BATCH)
        out = args.out / name
        before = cpu_seconds()
        overrides = [
            f"model.config={config}",
            f"train.max_steps={steps}",
            f"output_dir={out}",
            f"train.valid_every={10**9}",
            "train.progress=false",
            "train.tracker=none",
        ]
        sets = [arg for o in overrides for arg in ("--set", o)]
        subprocess.run(
            [sys.executable, "-m", "querysep", "train", "configs/train/mini.yaml", *sets],
            check=True,
        )
        spent = cpu_seconds() - before
        report = out / "bench.json"
        subprocess.run(
            [sys.executable, "bench/mini.py", str(out / "final"), "data/corpus",
             "--items", str(args.items), "--check-items", str(args.items // 3),
             "--json", str(report)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        r = json.loads(report.read_text())
        rows.append((name, steps, spent, r))
    print("\n| family | steps | training CPU s | SDRi | SI-SDRi | audio query SDRi | "
          "absent <= -15 dB | RTF |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    for name, steps, spent, r in rows:
        main_, absent = r["main"]["all"], 100 * r["absent"]["share_at_or_below_db"]
        print(f"| {name} | {steps} | {spent:.0f} | {main_['sdri']['mean']:.2f} | "
              f"{main_['si_sdri']['mean']:.2f} | {r['audio_query']['sdri']['mean']:.2f} | "
              f"{absent:.0f} % | {r['speed']['rtf']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
