"""How well a fitted CLAP knows the classes of `querysep data corpus`, on its held-out split.

    python bench/query_encoder.py querysep/weights/querysep-mini/query_encoder runs/mini-clap \
        --corpus data/corpus

A separator follows a query only as well as its query encoder tells sounds apart, and an
absent target can only be recognised from what the encoder says about the mixture. For each
encoder (a CLAP folder, or a bundle with a `query_encoder/`), on CORPUS/test.jsonl:

1. Zero-shot: every test clip (a random 2 s active crop) classified by its nearest caption
   among all captions of all classes; top-1 and top-3 accuracy (`train.clap.zero_shot_accuracy`,
   what `querysep train-clap --valid` reports).
2. Presence: per item, a mixture with the target (A + B at 0 dB) and one without (B + C),
   both 2 s; the cosine between each mixture's audio embedding and A's caption. ROC AUC of
   present against absent (0.5 = chance), and the shares that a cut at the absent items'
   90th percentile keeps.

3. With `--separator BUNDLE`: the same check on what the separator returns for A's caption
   instead of on the mixture (can an output be recognised as the wrong sound and silenced?),
   on mixtures at the bundle's rate. Besides the AUC: a gate that silences estimates scoring
   at or below the absent items' 90th percentile turns down 90 % of absent targets; the share
   of present targets it would silence too, and their mean SDRi (what the gate would throw
   away).

Presence mixtures are made as in `bench/mini.py` (its helpers), seeded per item: at CLAP's
48 kHz, or at the separator's rate for check 3 (then its first items are `bench/mini.py`'s).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from mini import SECONDS, draw_item, load_clips


def encoder_at(path: str):
    from querysep.query.clap import ClapQueryEncoder

    folder = Path(path)
    if (folder / "query_encoder").is_dir():
        folder = folder / "query_encoder"
    return ClapQueryEncoder.from_pretrained(folder)


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """The probability that a random positive scores above a random negative (ties count half)."""
    above = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(above + 0.5 * ties)


def presence(encoder, clips: dict, items: int, seed: int) -> dict[str, float]:
    from querysep.query.clap import CLAP_SAMPLE_RATE

    frames = round(SECONDS * CLAP_SAMPLE_RATE)
    present, absent = [], []
    for i in range(items):
        rng = np.random.default_rng([seed, i])
        _, clip_a, _, _, target, crop_b, crop_c = draw_item(rng, clips, i, frames)
        query = encoder.embed_text([clip_a.caption])[0]
        embs = encoder.embed_audio([target + crop_b, crop_b + crop_c], CLAP_SAMPLE_RATE)
        present.append(float(embs[0] @ query))
        absent.append(float(embs[1] @ query))
    p, q = np.asarray(present), np.asarray(absent)
    return {"auc": roc_auc(p, q), "present_kept": float(np.mean(p > np.quantile(q, 0.9)))}


def estimate_gate(encoder, separator, clips: dict, items: int, seed: int) -> dict[str, float]:
    """`clips` at the separator's rate."""
    from querysep import metrics

    rate = separator.sample_rate
    frames = round(SECONDS * rate)
    present, absent, sdri = [], [], []
    for i in range(items):
        rng = np.random.default_rng([seed, i])
        _, clip_a, _, _, target, crop_b, crop_c = draw_item(rng, clips, i, frames)
        query = encoder.embed_text([clip_a.caption])[0]
        mixes = [target + crop_b, crop_b + crop_c]
        outs = [separator.separate(m, clip_a.caption, sample_rate=rate).target[0] for m in mixes]
        embs = encoder.embed_audio(outs, rate)
        present.append(float(embs[0] @ query))
        absent.append(float(embs[1] @ query))
        sdri.append(float(metrics.sdr_improvement(outs[0], target, mixes[0])))
    p, q, s = np.asarray(present), np.asarray(absent), np.asarray(sdri)
    silenced = p <= np.quantile(q, 0.9)  # the cut that turns down 90 % of absent targets
    return {
        "auc": roc_auc(p, q),
        "present_silenced": float(silenced.mean()),
        "silenced_sdri": float(s[silenced].mean()) if silenced.any() else float("nan"),
        "mean_sdri": float(s.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("encoders", nargs="+", help="CLAP folders or bundles")
    parser.add_argument("--corpus", type=Path, required=True, help="`querysep data corpus` output")
    parser.add_argument("--items", type=int, default=210, help="presence pairs (5 per class)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--separator", help="bundle: also check presence on its estimates")
    parser.add_argument("--gate-items", type=int, default=120, help="pairs for --separator")
    args = parser.parse_args()

    from querysep.data.manifest import read_manifest
    from querysep.query.clap import CLAP_SAMPLE_RATE
    from querysep.train.clap import ClipBank, zero_shot_accuracy

    clips = load_clips(args.corpus, CLAP_SAMPLE_RATE, args.seed)
    bank = ClipBank(read_manifest(args.corpus / "test.jsonl"))  # decoded once for all encoders
    sep = gate_clips = None
    if args.separator:  # loaded once for every encoder
        from querysep.separator import Separator

        sep = Separator.from_pretrained(args.separator, device="cpu")
        gate_clips = load_clips(args.corpus, sep.sample_rate, args.seed)
    print(f"{len(clips)} classes; chance top-1 {1 / len(clips):.1%}")
    print("| encoder | top-1 | top-3 | presence ROC AUC | present kept at absent's 90th pct |")
    print("|---|---|---|---|---|")
    for path in args.encoders:
        encoder = encoder_at(path)
        zero = zero_shot_accuracy(encoder, bank, SECONDS)
        r = presence(encoder, clips, args.items, args.seed)
        print(
            f"| {path} | {zero['accuracy']:.1%} | {zero['top3']:.1%} | {r['auc']:.3f} "
            f"| {r['present_kept']:.0%} |",
            flush=True,
        )
        if sep is not None:
            g = estimate_gate(encoder, sep, gate_clips, args.gate_items, args.seed)
            print(
                f"  on {args.separator}'s estimates ({args.gate_items} pairs): presence ROC AUC "
                f"{g['auc']:.3f}; a gate turning down 90 % of absent targets silences "
                f"{g['present_silenced']:.0%} of present ones (their mean SDRi "
                f"{g['silenced_sdri']:.2f} dB; all present {g['mean_sdri']:.2f} dB)",
                flush=True,
            )


if __name__ == "__main__":
    main()
