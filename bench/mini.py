"""Separation quality of a bundle on the held-out split of `querysep data corpus`.

    python bench/mini.py runs/mini/final data/corpus --json bench/mini.json

Every mixture is built from CORPUS/test.jsonl at the bundle's rate, seeded per item. Crops are
2 s windows of a 4 s clip, drawn among those whose energy is within 20 dB of the clip's
loudest window (so the sound is there). Clips of one item have different `source`s where
the corpus allows (the test clips of one animal all share one recording).

1. Main: N mixtures, classes taken in turn (N = 10 x 42 by default): a crop of class A plus
   one crop of class B scaled to the same energy (0 dB), queried with A's first caption.
   SDRi (the plain SNR gain, LASS convention) and SI-SDRi over all, per group and per class,
   with the median and the share above 3 dB (returning half the mixture scores 3.01 dB).
2. Caption check (first --check-items mixtures): the same mixtures queried with the caption
   of a third class C, scored against A.
3. Audio example: the same mixtures queried with another whole test clip of class A.
4. Negative query: A plus crops of B and C (each matched to A, their sum scaled to A: 0 dB),
   queried with A's caption, then with A's caption and B's caption as the negative.
5. Absent target: B plus C (0 dB), queried with A's caption; the output's energy relative to
   the mixture's, and the share of items at or below -15 dB (the model returns ~silence).
6. Speed: the real-time factor of one call on 60 s (test clips of two classes, concatenated
   and mixed), after a warm-up call on 2 s.

`--fixtures DIR` writes the held-out mixtures the tests and `make example` use (FIXTURES below,
made the same way) and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SECONDS = 2.0
ACTIVE_DB = -20.0  # crops start where the window's energy is within this of the loudest one
ABSENT_DB = -15.0
SPEED_SECONDS = 60.0


@dataclass(frozen=True)
class Clip:
    label: str
    source: str
    caption: str  # the class's first caption
    audio: np.ndarray  # mono float32 at the bundle's rate


def load_clips(corpus: Path, rate: int, seed: int) -> dict[str, list[Clip]]:
    """Test clips by class (in `corpus.CLASSES` order), each class's list shuffled by seed."""
    from querysep import audio as qaudio
    from querysep.data.corpus import CLASSES
    from querysep.data.manifest import read_manifest

    manifest = read_manifest(corpus / "test.jsonl")
    clips: dict[str, list[Clip]] = defaultdict(list)
    for entry in manifest:
        audio, _ = qaudio.load(manifest.path_of(entry), rate)  # resampled when rates differ
        label = entry.labels[0]
        clips[label].append(Clip(label, entry.source, entry.captions[0], audio.mean(axis=0)))
    rng = np.random.default_rng(seed)
    ordered = sorted(clips, key=lambda c: (CLASSES.index(c) if c in CLASSES else len(CLASSES), c))
    return {
        label: [clips[label][i] for i in rng.permutation(len(clips[label]))] for label in ordered
    }


def active_crop(rng: np.random.Generator, audio: np.ndarray, frames: int) -> np.ndarray:
    """A random `frames`-long window among those within ACTIVE_DB of the loudest (10 ms hops)."""
    if len(audio) <= frames:
        return np.pad(audio, (0, frames - len(audio)))
    starts = np.arange(0, len(audio) - frames + 1, max(1, frames // 200))
    cumulative = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    energy = cumulative[starts + frames] - cumulative[starts]
    start = int(rng.choice(starts[energy >= energy.max() * 10 ** (ACTIVE_DB / 10)]))
    return audio[start : start + frames]


def gain(x: np.ndarray, reference: np.ndarray) -> float:
    """The factor that scales `x` to the energy of `reference`."""
    return np.sqrt(np.sum(reference**2) / (np.sum(x**2) + 1e-12))


def matched(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`x` scaled to the energy of `reference`."""
    return x * gain(x, reference)


def pick(rng: np.random.Generator, clips: list[Clip], avoid: set[str]) -> Clip:
    """A random clip whose source is not in `avoid` (any clip if all of them are)."""
    fresh = [c for c in clips if c.source not in avoid] or clips
    return fresh[int(rng.integers(len(fresh)))]


def draw_item(
    rng: np.random.Generator, clips: dict[str, list[Clip]], i: int, frames: int
) -> tuple[str, Clip, Clip, Clip, np.ndarray, np.ndarray, np.ndarray]:
    """Item i: class A in turn, two other classes B and C, a clip of each from different
    sources, and crops of B and C at A's energy: (A, clips A/B/C, crops A/B/C)."""
    labels = list(clips)
    a = labels[i % len(labels)]
    b, c = (str(x) for x in rng.choice([x for x in labels if x != a], size=2, replace=False))
    clip_a = clips[a][(i // len(labels)) % len(clips[a])]
    clip_b = pick(rng, clips[b], {clip_a.source})
    clip_c = pick(rng, clips[c], {clip_a.source, clip_b.source})
    target = active_crop(rng, clip_a.audio, frames)
    crop_b, crop_c = (matched(active_crop(rng, x.audio, frames), target) for x in (clip_b, clip_c))
    return a, clip_a, clip_b, clip_c, target, crop_b, crop_c


def example_clip(rng: np.random.Generator, clips: dict[str, list[Clip]], clip_a: Clip) -> Clip:
    """Another test clip of A's class, from another source where there is one: the audio
    example query (A's own clip when its class has no other)."""
    other = [x for x in clips[clip_a.label] if x is not clip_a]
    return pick(rng, other, {clip_a.source}) if other else clip_a


def three_sources(
    target: np.ndarray, crop_b: np.ndarray, crop_c: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A plus B and C, their sum scaled to A's energy (0 dB): (the mixture, B as mixed)."""
    scale = gain(crop_b + crop_c, target)
    return target + (crop_b + crop_c) * scale, crop_b * scale


def stats(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "above_3db": float(np.mean(v > 3)),
    }


def block(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"items": len(rows), **{k: stats([r[k] for r in rows]) for k in ("sdri", "si_sdri")}}


def score(estimate: np.ndarray, target: np.ndarray, mixture: np.ndarray) -> dict[str, float]:
    from querysep import metrics

    return {
        "sdri": float(metrics.sdr_improvement(estimate, target, mixture)),
        "si_sdri": float(metrics.si_sdr_improvement(estimate, target, mixture)),
    }


#: (name, target class, interferer classes, class of the other caption, description): the
#: example `make example` plays, first, then a sweep that no result chose: every third class
#: as the target, the class 17 places on as the interferer, the class 8 places on for the
#: wrong caption, and absent targets (two other classes, the target's caption).
FIXTURES = (
    ("dog_piano", "dog", ("piano",), "trumpet", "a dog barking over a piano phrase"),
    ("woman_drums", "woman_speaking", ("drum_kit",), "cow", "a woman speaking over a drum kit"),
    ("violin_rain", "violin", ("rain",), "hi_hat", "a violin in the rain"),
    ("absent_dog", "dog", ("trumpet", "man_speaking"), "", "a trumpet and a man speaking"),
)


def fixture_plan() -> list[tuple[str, str, tuple[str, ...], str, str]]:
    from querysep.data.corpus import CLASSES

    n, plan = len(CLASSES), list(FIXTURES)
    for k, a in enumerate(CLASSES[::3]):
        b, c = CLASSES[(3 * k + 17) % n], CLASSES[(3 * k + 8) % n]
        plan.append((f"sweep{k:02d}_{a}", a, (b,), c, f"{a} over {b}"))
    for k, a in enumerate(CLASSES[1::10]):
        b, c = CLASSES[(10 * k + 5) % n], CLASSES[(10 * k + 25) % n]
        plan.append((f"absent{k:02d}_{a}", a, (b, c), "", f"{b} and {c}, no {a}"))
    return plan


def write_fixtures(clips: dict[str, list[Clip]], rate: int, out: Path, seed: int) -> None:
    """Held-out mixtures at 0 dB (2 s, 16-bit), their targets and queries in items.json."""
    from querysep import audio as qaudio
    from querysep.data.corpus import captions_of

    out.mkdir(parents=True, exist_ok=True)
    frames, items = round(SECONDS * rate), []
    for k, (name, a, others, other, description) in enumerate(fixture_plan()):
        rng = np.random.default_rng([seed, 1 << 21, k])
        target = active_crop(rng, clips[a][0].audio, frames)
        noise = sum(active_crop(rng, clips[b][0].audio, frames) for b in others)
        absent = name.startswith("absent")
        mixture = matched(noise, target) + (0 if absent else target)
        scale = 0.5 / max(np.abs(mixture).max(), np.abs(target).max())
        qaudio.save(out / f"{name}.wav", (mixture * scale)[None], rate, subtype="PCM_16")
        item = {"name": name, "mixture": f"{name}.wav", "query": captions_of(a)[0],
                "description": description}  # fmt: skip
        if not absent:
            qaudio.save(out / f"{name}_target.wav", (target * scale)[None], rate, subtype="PCM_16")
            item |= {"target": f"{name}_target.wav", "other_query": captions_of(other)[0]}
        items.append(item)
    (out / "items.json").write_text(json.dumps(items, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(items)} held-out mixtures to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="bundle folder or registry name")
    parser.add_argument("corpus", type=Path, help="folder written by `querysep data corpus`")
    parser.add_argument("--items", type=int, default=420, help="main mixtures (10 per class)")
    parser.add_argument("--check-items", type=int, default=120, help="mixtures for checks 2-5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="write every figure here too")
    parser.add_argument("--fixtures", type=Path, help="write the tests' held-out mixtures, exit")
    parser.add_argument(
        "--negative-fold",
        type=float,
        help="weight of the negative in `normalize(pos - w * neg)`, for models that fold "
        "negatives into the query (default: the library's, 0.5); a measurement knob only",
    )
    args = parser.parse_args()

    from querysep import metrics
    from querysep.data.corpus import GROUPS, group_of
    from querysep.query import AudioQuery, Query
    from querysep.separator import Separator

    began = time.perf_counter()
    if args.negative_fold is not None:
        from querysep.query import embeddings

        embeddings.NEGATIVE_FOLD = args.negative_fold
    if args.threads:
        torch.set_num_threads(args.threads)
    sep = Separator.from_pretrained(args.bundle, device="cpu")
    rate, frames = sep.sample_rate, round(SECONDS * sep.sample_rate)
    clips = load_clips(args.corpus, rate, args.seed)
    if args.fixtures:
        write_fixtures(clips, rate, args.fixtures, args.seed)
        return
    labels = list(clips)
    if len(labels) < 3:
        sys.exit(f"{args.corpus}: the test split needs at least 3 classes, it has {len(labels)}")
    checks = min(args.check_items, args.items)

    rows: list[dict[str, Any]] = []
    wrong, example, plain, negative, absent = [], [], [], [], []
    for i in range(args.items):
        rng = np.random.default_rng([args.seed, i])
        a, clip_a, clip_b, clip_c, target, crop_b, crop_c = draw_item(rng, clips, i, frames)
        mixture = target + crop_b
        queries: list[Any] = [clip_a.caption]
        if i < checks:
            shot = example_clip(rng, clips, clip_a).audio
            queries += [clip_c.caption, AudioQuery(shot, rate)]
        results = sep.separate(mixture, queries, sample_rate=rate)
        # whether B, and whether B or C, is of A's group
        kin = [group_of(a) == group_of(x.label) for x in (clip_b, clip_c)]
        row = {"label": a, "kin": kin[0], "kin_any": any(kin)}
        rows.append({**row, **score(results[0].target[0], target, mixture)})
        if i < checks:
            wrong.append(score(results[1].target[0], target, mixture))
            example.append(score(results[2].target[0], target, mixture))
            three, _ = three_sources(target, crop_b, crop_c)
            both = sep.separate(
                three,
                [clip_a.caption, Query.make(clip_a.caption, negative=clip_b.caption)],
                sample_rate=rate,
            )
            plain.append(score(both[0].target[0], target, three))
            negative.append(score(both[1].target[0], target, three))
            others = crop_b + crop_c
            out = sep.separate(others, clip_a.caption, sample_rate=rate).target[0]
            absent.append(float(metrics.energy_ratio_db(out, others)))
        if (i + 1) % 20 == 0 or i + 1 == args.items:
            print(f"{i + 1}/{args.items} mixtures", file=sys.stderr, flush=True)

    # speed: 60 s of two classes' test clips, concatenated and mixed at 0 dB
    rng = np.random.default_rng([args.seed, 1 << 20])
    x, y = (str(v) for v in rng.choice(labels, size=2, replace=False))
    n = round(SPEED_SECONDS * rate)
    long_x, long_y = (np.resize(np.concatenate([c.audio for c in clips[v]]), n) for v in (x, y))
    long = long_x + matched(long_y, long_x)
    sep.separate(long[:frames], clips[x][0].caption, sample_rate=rate)  # warm-up
    start = time.perf_counter()
    sep.separate(long, clips[x][0].caption, sample_rate=rate)
    elapsed = time.perf_counter() - start

    kin_b = [r["kin"] for r in rows[:checks]]
    kin_bc = [r["kin_any"] for r in rows[:checks]]
    by_group = {g: [r for r in rows if group_of(r["label"]) == g] for g in GROUPS}
    by_class = {c: [r for r in rows if r["label"] == c] for c in labels}
    report: dict[str, Any] = {
        "bundle": str(args.bundle),
        "corpus": str(args.corpus),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "sample_rate": rate,
        "seconds": SECONDS,
        "seed": args.seed,
        "negatives": negatives_read(sep),
        "main": {
            "all": block(rows),
            "groups": {g: block(r) for g, r in by_group.items() if r},
            "classes": {c: block(r) for c, r in by_class.items() if r},
        },
        "caption_check": {"items": checks, "right": block(rows[:checks]), "other": block(wrong)},
        "audio_query": block(example),
        "negative": {"plain": block(plain), "with_negative": block(negative)},
        "absent": {
            **absent_block(absent),
            "threshold_db": ABSENT_DB,
            "same_group": absent_block([x for x, k in zip(absent, kin_bc, strict=True) if k]),
            "other_group": absent_block([x for x, k in zip(absent, kin_bc, strict=True) if not k]),
        },
        "same_group": {
            "main": block([r for r in rows if r["kin"]]),
            "main_other": block([r for r in rows if not r["kin"]]),
            "negative_gain": gains(plain, negative, kin_b, True),
            "negative_gain_other": gains(plain, negative, kin_b, False),
        },
        "speed": {
            "input_seconds": SPEED_SECONDS,
            "seconds": elapsed,
            "rtf": elapsed / SPEED_SECONDS,
        },
    }
    report["wall_seconds"] = time.perf_counter() - began
    print_report(report, labels)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


def absent_block(levels: list[float]) -> dict[str, float]:
    v = np.asarray(levels, dtype=np.float64)
    if not len(v):
        return {"items": 0, "median_db": float("nan"), "share_at_or_below_db": float("nan")}
    return {
        "items": len(v),
        "median_db": float(np.median(v)),
        "share_at_or_below_db": float(np.mean(v <= ABSENT_DB)),
    }


def gains(
    plain: list[dict[str, float]], negative: list[dict[str, float]], kin: list[bool], want: bool
) -> dict[str, float]:
    """Mean SDRi gain of the negative query over the items whose B is (not) of A's group."""
    d = [n["sdri"] - p["sdri"] for p, n, k in zip(plain, negative, kin, strict=True) if k == want]
    return {"items": len(d), "mean": float(np.mean(d)) if d else float("nan")}


def negatives_read(sep: Any) -> str:
    from querysep.query import embeddings

    if getattr(sep.model, "accepts_negative", False):
        return "by the model's own input"
    return f"folded into the query, normalize(pos - {embeddings.NEGATIVE_FOLD:g} * neg)"


def print_report(r: dict[str, Any], labels: list[str]) -> None:
    from querysep.data.corpus import group_of

    def line(name: str, b: dict[str, Any]) -> str:
        s, si = b["sdri"], b["si_sdri"]
        cells = [f"{s['mean']:.2f}", f"{s['median']:.2f}", f"{100 * s['above_3db']:.0f} %"]
        cells += [f"{si['mean']:.2f}", f"{si['median']:.2f}"]
        return f"| {name} | {b['items']} | " + " | ".join(cells) + " |"

    head = "| items | SDRi | SDRi median | SDRi > 3 dB | SI-SDRi | SI-SDRi median |"
    rule = "|---|---|---|---|---|---|---|"
    main = r["main"]
    print(f"bundle {r['bundle']} ({r['sample_rate']} Hz); corpus {r['corpus']}/test.jsonl; "
          f"torch {r['torch']}, {r['threads']} threads; seed {r['seed']}")  # fmt: skip
    print(f"\n### Main: {main['all']['items']} mixtures of {r['seconds']:g} s, one interferer "
          "at 0 dB, the target's caption (dB)\n")  # fmt: skip
    print(f"| group {head}\n{rule}")
    print(line("**all**", main["all"]))
    for group, b in main["groups"].items():
        print(line(group, b))
    print(f"\n| class {head}\n{rule}")
    for label in labels:
        if label in main["classes"]:
            print(line(f"{label} ({group_of(label)})", main["classes"][label]))

    check, neg, gone = r["caption_check"], r["negative"], r["absent"]
    print(f"\n### Query checks: the first {check['items']} mixtures (dB)\n")
    print(f"| query {head}\n{rule}")
    print(line("the target's caption", check["right"]))
    print(line("a third class's caption", check["other"]))
    print(line("another clip of the target's class", r["audio_query"]))
    print(line("3 sources: the target's caption", neg["plain"]))
    print(line("3 sources: + an interferer's caption as negative", neg["with_negative"]))
    gap = check["right"]["sdri"]["mean"] - check["other"]["sdri"]["mean"]
    print(f"\nright caption vs another class's caption: {gap:.2f} dB apart (SDRi)")
    helped = neg["with_negative"]["sdri"]["mean"] - neg["plain"]["sdri"]["mean"]
    print(f"negative query: {helped:+.2f} dB SDRi (3 sources; negatives {r['negatives']})")
    share = 100 * gone["share_at_or_below_db"]
    print(f"absent target ({gone['items']} mixtures of two other classes, the target's caption): "
          f"output <= {gone['threshold_db']:g} dB of the mixture's energy in {share:.0f} % of "
          f"them, median {gone['median_db']:.1f} dB")  # fmt: skip
    kin = r["same_group"]
    print("\nby the interferers' group (same as the target's / another):")
    print(f"- main SDRi: {kin['main']['sdri']['mean']:.2f} ({kin['main']['items']} items) / "
          f"{kin['main_other']['sdri']['mean']:.2f} ({kin['main_other']['items']})")  # fmt: skip
    same, other = kin["negative_gain"], kin["negative_gain_other"]
    print(f"- negative query: {same['mean']:+.2f} dB ({same['items']} items) / "
          f"{other['mean']:+.2f} dB ({other['items']})")  # fmt: skip
    same, other = gone["same_group"], gone["other_group"]
    print(f"- absent target <= {gone['threshold_db']:g} dB: "
          f"{100 * same['share_at_or_below_db']:.0f} % ({same['items']} items) / "
          f"{100 * other['share_at_or_below_db']:.0f} % ({other['items']})")  # fmt: skip
    speed = r["speed"]
    print(f"speed: {speed['input_seconds']:g} s in {speed['seconds']:.2f} s, RTF "
          f"{speed['rtf']:.3f} ({r['threads']} threads)")  # fmt: skip
    print(f"wall time of the bench: {r['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
