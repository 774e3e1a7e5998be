"""How well a fitted CLAP knows the classes of `querysep data corpus`, on its held-out split.

    python bench/query_encoder.py querysep/weights/querysep-mini/query_encoder runs/mini-clap \
        --corpus data/corpus

A separator follows a query only as well as its query encoder tells sounds apart, and an
absent target can only be recognised from what the encoder says about the mixture. For each
encoder (a CLAP folder, or a bundle with a `query_encoder/`), on CORPUS/test.jsonl:

1. Zero-shot: every test clip (a 2 s active crop) classified by its nearest caption among
   all captions of all classes; top-1 and top-3 accuracy.
2. Presence: per item, a mixture with the target (A + B at 0 dB) and one without (B + C),
   both 2 s; the cosine between each mixture's audio embedding and A's caption. ROC AUC of
   present against absent (0.5 = chance), and the shares that a cut at the absent items'
   90th percentile keeps.

Mixtures are made as in `bench/mini.py` (its helpers), at CLAP's 48 kHz, seeded per item.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from mini import SECONDS, active_crop, draw_item, load_clips


def encoder_at(path: str):
    from querysep.query.clap import CLAP_SAMPLE_RATE, ClapQueryEncoder  # noqa: F401

    folder = Path(path)
    if (folder / "query_encoder").is_dir():
        folder = folder / "query_encoder"
    return ClapQueryEncoder.from_pretrained(folder)


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """The probability that a random positive scores above a random negative (ties count half)."""
    above = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(above + 0.5 * ties)


def measure(encoder, clips: dict, items: int, seed: int) -> dict[str, float]:
    from querysep.query.clap import CLAP_SAMPLE_RATE

    labels = list(clips)
    frames = round(SECONDS * CLAP_SAMPLE_RATE)
    captions = sorted({(label, c.caption) for label in labels for c in clips[label]})
    text = encoder.embed_text([t for _, t in captions])
    owner = np.array([labels.index(label) for label, _ in captions])

    top1 = top3 = total = 0
    rng = np.random.default_rng(seed)
    for k, label in enumerate(labels):
        for clip in clips[label]:
            emb = encoder.embed_audio([active_crop(rng, clip.audio, frames)], CLAP_SAMPLE_RATE)
            ranked = owner[torch.argsort(text @ emb[0], descending=True).numpy()]
            order = list(dict.fromkeys(ranked.tolist()))  # classes, nearest first
            top1 += order[0] == k
            top3 += k in order[:3]
            total += 1

    present, absent = [], []
    for i in range(items):
        rng = np.random.default_rng([seed, i])
        _, clip_a, _, _, target, crop_b, crop_c = draw_item(rng, clips, i, frames)
        query = encoder.embed_text([clip_a.caption])[0]
        mixes = [target + crop_b, crop_b + crop_c]
        embs = encoder.embed_audio(mixes, CLAP_SAMPLE_RATE)
        present.append(float(embs[0] @ query))
        absent.append(float(embs[1] @ query))
    p, q = np.asarray(present), np.asarray(absent)
    cut = np.quantile(q, 0.9)
    return {
        "top1": top1 / total,
        "top3": top3 / total,
        "clips": total,
        "auc": roc_auc(p, q),
        "present_kept": float(np.mean(p > cut)),
        "items": items,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("encoders", nargs="+", help="CLAP folders or bundles")
    parser.add_argument("--corpus", type=Path, required=True, help="`querysep data corpus` output")
    parser.add_argument("--items", type=int, default=210, help="presence pairs (5 per class)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from querysep.query.clap import CLAP_SAMPLE_RATE

    clips = load_clips(args.corpus, CLAP_SAMPLE_RATE, args.seed)
    print(f"{len(clips)} classes; chance top-1 {1 / len(clips):.1%}")
    print("| encoder | top-1 | top-3 | presence ROC AUC | present kept at absent's 90th pct |")
    print("|---|---|---|---|---|")
    for path in args.encoders:
        r = measure(encoder_at(path), clips, args.items, args.seed)
        print(
            f"| {path} | {r['top1']:.1%} | {r['top3']:.1%} | {r['auc']:.3f} "
            f"| {r['present_kept']:.0%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
