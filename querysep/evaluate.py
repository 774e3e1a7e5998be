"""`querysep evaluate`: LASS benchmarks scored the way AudioSep and DCASE 2024 T9 score them.

A benchmark is a list of items (mixture, reference source, caption, class). Items come from
AudioSep's evaluation lists (pre-mixed `mixture-{idx}.wav` / `segment-{idx}.wav` files), the
DCASE 2024 T9 validation CSV (source + noise mixed at the listed SNR), or any caption manifest
(seeded on-the-fly mixtures). Results stream into a per-item CSV, so a long run that stops
resumes where it was; the summary (JSON + Markdown with the published numbers beside ours) and a
per-class SDRi plot are written at the end.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from querysep import audio as qaudio
from querysep import metrics
from querysep.errors import DataError
from querysep.files import atomic_write

#: Published numbers (SDRi, SI-SDR in dB; "SDR" = plain SNR), from the AudioSep paper and the
#: DCASE 2024 T9 baseline, shown beside ours in the Markdown summary.
ANCHORS: dict[str, dict[str, float]] = {
    "audioset": {"sdri": 7.74, "si_sdr": 6.90},
    "vggsound": {"sdri": 9.14, "si_sdr": 9.04},
    "audiocaps": {"sdri": 8.22, "si_sdr": 7.19},
    "clotho": {"sdri": 6.85, "si_sdr": 5.24},
    "esc50": {"sdri": 10.04, "si_sdr": 8.81},
    "music": {"sdri": 10.51, "si_sdr": 9.43},
    "dcase2024": {"sdr": 5.71, "sdri": 5.67, "si_sdr": 3.86},
}
ANCHOR_SOURCE = {
    "dcase2024": "DCASE 2024 T9 baseline",
    **{k: "AudioSep (paper)" for k in ANCHORS if k != "dcase2024"},
}
BENCHMARKS = ("audiocaps", "clotho", "esc50", "music", "audioset", "vggsound", "dcase2024")
SILENT_ENERGY = 1e-8
FIELDS = ["id", "caption", "label", "sdr", "sdri", "si_sdr", "si_sdri", "bss_sdr", "clap_score"]


@dataclass
class Item:
    id: str
    caption: str
    label: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]  # -> (mixture [T], source [T])


# -- benchmark lists ----------------------------------------------------------------------------
def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"evaluation list not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _mono(path: Path, rate: int) -> np.ndarray:
    audio, _ = qaudio.load(path, rate)
    return audio.mean(axis=0)


def audiosep_items(name: str, eval_list: Path, audio_dir: Path, rate: int) -> list[Item]:
    """AudioSep's lists: `idx,caption,...` with `segment-{idx}.wav` and `mixture-{idx}.wav`;
    AudioSet names the files per row; VGGSound has `mix_wav,s0_wav,s0_text`."""
    items = []
    for n, row in enumerate(_rows(eval_list)):
        if name == "vggsound":
            mix, src = audio_dir / row["mix_wav"], audio_dir / row["s0_wav"]
            caption, label, key = row["s0_text"], row["s0_text"], row["file_id"]
        elif name == "audioset":
            src, mix = audio_dir / row["src_wav"], audio_dir / row["noise_wav"]
            caption, label, key = row["caption"], row["caption"], f"{row['idx']}-{n}"
        else:
            idx = row["idx"]
            src, mix = audio_dir / f"segment-{idx}.wav", audio_dir / f"mixture-{idx}.wav"
            label = row["caption"] if name in ("esc50", "music") else ""
            caption, key = row["caption"], idx
        items.append(Item(key, caption, label, _pair_loader(mix, src, rate)))
    return items


def _pair_loader(mix: Path, src: Path, rate: int) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        m, s = _mono(mix, rate), _mono(src, rate)
        n = min(len(m), len(s))
        return m[:n], s[:n]

    return load


def dcase_items(eval_list: Path, audio_dir: Path, rate: int) -> list[Item]:
    """DCASE 2024 T9 `lass_synthetic_validation.csv`: source, noise, snr, caption."""
    items = []
    for n, row in enumerate(_rows(eval_list)):
        try:
            snr = float(row["snr"])
        except (KeyError, ValueError):
            raise DataError(f"{eval_list}: row {n + 2} has no numeric snr") from None
        src, noise = audio_dir / row["source"], audio_dir / row["noise"]
        items.append(Item(f"{n}", row["caption"], "", _mixing_loader(src, noise, snr, rate)))
    return items


def _mixing_loader(
    src: Path, noise: Path, snr: float, rate: int
) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        s, z = _mono(src, rate), _mono(noise, rate)
        n = min(len(s), len(z))
        s, z = s[:n], z[:n]
        gain = np.sqrt(np.sum(s**2) / (np.sum(z**2) * 10 ** (snr / 10) + 1e-12))
        return s + gain * z, s

    return load


def manifest_items(manifest: Path, rate: int, count: int, seed: int, seconds: float) -> list[Item]:
    from querysep.data.manifest import read_manifest
    from querysep.data.mixing import MixingConfig, MixingDataset

    cfg = MixingConfig(seconds=seconds, sample_rate=rate, interferers=(1, 1), snr_db=(0.0, 0.0))
    ds = MixingDataset(read_manifest(manifest), cfg, length=count, seed=seed)

    def loader(i: int) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        def load() -> tuple[np.ndarray, np.ndarray]:
            item = ds[i]  # one draw gives both; drawing twice would mix twice
            return item["mixture"][0].numpy(), item["target"][0].numpy()

        return load

    items = []
    for i in range(count):  # each draw is deterministic, so loading it again later is exact
        item = ds[i]
        items.append(Item(str(i), item["caption"], item["label"], loader(i)))
    return items


# -- scoring ------------------------------------------------------------------------------------
def score(
    estimate: np.ndarray, source: np.ndarray, mixture: np.ndarray, *, bss: bool = False
) -> dict[str, float]:
    sdr = float(metrics.sdr(estimate, source))
    si = float(metrics.si_sdr(estimate, source))
    out = {
        "sdr": sdr,
        "sdri": sdr - float(metrics.sdr(mixture, source)),
        "si_sdr": si,
        "si_sdri": si - float(metrics.si_sdr(mixture, source)),
    }
    if bss:
        out["bss_sdr"] = float(metrics.bss_sdr(estimate, source))
    return out


def summarize(rows: list[dict[str, Any]], benchmark: str) -> dict[str, Any]:
    """Means over items; AudioSet as AudioSep reports it: the mean of per-class medians."""
    keys = [k for k in FIELDS[3:] if rows and all(r.get(k) not in (None, "") for r in rows)]
    summary: dict[str, Any] = {"benchmark": benchmark, "items": len(rows)}
    for key in keys:
        values = np.array([float(r[key]) for r in rows])
        if benchmark == "audioset":
            by_class: dict[str, list[float]] = defaultdict(list)
            for r in rows:
                by_class[r["label"]].append(float(r[key]))
            summary[key] = float(np.mean([np.median(v) for v in by_class.values()]))
        else:
            summary[key] = float(np.mean(values))
    summary["aggregation"] = (
        "mean of per-class medians" if benchmark == "audioset" else "mean over items"
    )
    return summary


def markdown(summary: dict[str, Any]) -> str:
    name = summary["benchmark"]
    anchor = ANCHORS.get(name, {})
    cols = [("sdr", "SDR"), ("sdri", "SDRi"), ("si_sdr", "SI-SDR"), ("si_sdri", "SI-SDRi")]
    cols += [("bss_sdr", "bss_eval SDR"), ("clap_score", "CLAPScore")]
    cols = [(k, t) for k, t in cols if k in summary or k in anchor]
    head = "| system | " + " | ".join(t for _, t in cols) + " |"
    rule = "|---|" + "---|" * len(cols)

    def row(label: str, values: dict[str, float]) -> str:
        cells = [f"{values[k]:.2f}" if k in values else "-" for k, _ in cols]
        return f"| {label} | " + " | ".join(cells) + " |"

    lines = [
        f"### {name} ({summary['items']} items, {summary['aggregation']})",
        "",
        "dB; SDR is the plain SNR (LASS convention); bss_eval SDR is a different, filtered "
        "measure and is never comparable with the SDR column.",
        "",
        head,
        rule,
        row("querysep", summary),
    ]
    if anchor:
        lines.append(row(ANCHOR_SOURCE[name], anchor))
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_class: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by_class[r["label"] or "(no class)"].append(float(r["sdri"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(by_class)), 4))
    if len(by_class) > 1:
        names = sorted(by_class, key=lambda k: np.mean(by_class[k]))
        ax.bar(range(len(names)), [np.mean(by_class[k]) for k in names])
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_ylabel("mean SDRi (dB)")
    else:  # caption benchmarks have no classes: show the spread instead
        ax.hist([float(r["sdri"]) for r in rows], bins=30)
        ax.set_xlabel("SDRi (dB)")
        ax.set_ylabel("items")
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


# -- the run ------------------------------------------------------------------------------------
def _done(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def evaluate(
    separator: Any,
    items: list[Item],
    out_dir: Path,
    benchmark: str,
    rate: int,
    *,
    bss: bool = False,
    clap_score: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Scores every item not already in `out_dir/items.csv`, then writes the summaries."""
    out_dir.mkdir(parents=True, exist_ok=True)
    per_item = out_dir / "items.csv"
    done = _done(per_item)
    fresh = not per_item.is_file()
    todo = [it for it in items if it.id not in done]
    skipped: list[str] = []
    with open(per_item, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if fresh:
            writer.writeheader()
        for item in _progress(todo, progress, len(items), len(done)):
            mixture, source = item.load()
            if float(np.sum(source.astype(np.float64) ** 2)) < SILENT_ENERGY:
                skipped.append(item.id)  # SDR against silence is undefined, not a score
                continue
            result = separator.separate(mixture[None], item.caption, sample_rate=rate)
            estimate = result.target[0]
            row: dict[str, Any] = {"id": item.id, "caption": item.caption, "label": item.label}
            row |= score(estimate, source, mixture, bss=bss)
            if clap_score:
                encoder = separator.query_encoder
                row["clap_score"] = metrics.clap_score(encoder, estimate, rate, item.caption)
            writer.writerow({k: row.get(k, "") for k in FIELDS})
            f.flush()  # a stopped run keeps every finished item
            done[item.id] = row
    wanted = {it.id for it in items}
    rows = [r for k, r in done.items() if k in wanted]
    summary = summarize(rows, benchmark)
    summary["sample_rate"] = rate
    if skipped:
        summary["skipped_silent_reference"] = skipped
    atomic_write(out_dir / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2)))
    atomic_write(out_dir / "summary.md", lambda p: p.write_text(markdown(summary)))
    plot(rows, out_dir / "sdri.png", f"{benchmark}: SDRi")
    return summary


def _progress(items: list[Item], enabled: bool, total: int, done: int) -> Iterator[Item]:
    if not enabled:
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, total=total, initial=done, desc="evaluating", unit="item")
