"""How much a negative query helps a bundle, and how much it could, on `bench/mini.py`'s
three-source mixtures (the same items, drawn the same way).

    python bench/negatives.py querysep/weights/querysep-mini data/corpus

Each item is a crop of class A plus crops of B and C (their sum at A's energy), queried with
A's caption. Mean SDRi against A of:

1. plain: A's caption alone;
2. negative: A's caption with B's caption as the negative query, read as the bundle reads
   negatives (its own input, or folded into the positive; `--negative-fold` sets the fold);
3. competition: the plain estimate P and the estimate N for B's caption, combined after the
   fact as `P * |P|^2 / (|P|^2 + 0.5 |N|^2)` on a 1024 / 256 STFT (training-free, one more
   pass);
4. oracle: the same with the true B in place of N, the most that masking the plain estimate by
   B could give: a bound for negatives read by a model of this quality, not a result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from mini import SECONDS, draw_item, example_clip, load_clips, negatives_read, score, three_sources

COMPETE_WEIGHT = 0.5


def compete(estimate: torch.Tensor, other: torch.Tensor, stft, frames: int) -> np.ndarray:
    """The estimate's STFT bins kept in proportion to how much more of them it claims than
    `other` (a Wiener-style gain between two sources)."""
    p, n = stft(estimate), stft(other)
    gain = p.abs() ** 2 / (p.abs() ** 2 + COMPETE_WEIGHT * n.abs() ** 2 + 1e-8)
    return stft.inverse(p * gain, frames).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="bundle folder or registry name")
    parser.add_argument("corpus", type=Path, help="folder written by `querysep data corpus`")
    parser.add_argument("--items", type=int, default=120, help="bench/mini.py's --check-items")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--negative-fold", type=float, help="fold weight (folding models only)")
    args = parser.parse_args()

    from querysep.dsp import STFT
    from querysep.query import Query, embeddings
    from querysep.separator import Separator

    if args.negative_fold is not None:
        embeddings.NEGATIVE_FOLD = args.negative_fold
    sep = Separator.from_pretrained(args.bundle, device="cpu")
    rate, frames = sep.sample_rate, round(SECONDS * sep.sample_rate)
    clips = load_clips(args.corpus, rate, args.seed)
    stft = STFT(1024, 256)
    rows: dict[str, list[float]] = {k: [] for k in ("plain", "negative", "competition", "oracle")}
    for i in range(args.items):
        rng = np.random.default_rng([args.seed, i])
        _, clip_a, clip_b, _, target, crop_b, crop_c = draw_item(rng, clips, i, frames)
        example_clip(rng, clips, clip_a)  # drawn as bench/mini.py draws it: the same items
        three, true_b = three_sources(target, crop_b, crop_c)
        queries = [clip_a.caption, Query.make(clip_a.caption, negative=clip_b.caption)]
        plain, negative, other_b = (
            torch.from_numpy(r.target[0])
            for r in sep.separate(three, [*queries, clip_b.caption], sample_rate=rate)
        )
        rows["plain"].append(score(plain.numpy(), target, three)["sdri"])
        rows["negative"].append(score(negative.numpy(), target, three)["sdri"])
        rows["competition"].append(
            score(compete(plain, other_b, stft, frames), target, three)["sdri"]
        )
        oracle = compete(plain, torch.from_numpy(true_b.astype(np.float32)), stft, frames)
        rows["oracle"].append(score(oracle, target, three)["sdri"])

    base = float(np.mean(rows["plain"]))
    print(f"{args.bundle}: {args.items} three-source mixtures; negatives {negatives_read(sep)}")
    print("| query | mean SDRi dB | over plain |\n|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {np.mean(values):.2f} | {np.mean(values) - base:+.2f} |")


if __name__ == "__main__":
    main()
