"""Published metadata of LASS corpora -> manifest entries.

Each converter reads the dataset's own metadata file as distributed and names audio paths
relative to a data root. Audio files are not opened here; `check_entries` (manifest.py) reads
their headers, and reports and skips what is missing or unusable.
"""

from __future__ import annotations

import csv
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

from querysep.data.manifest import Entry
from querysep.errors import DataError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def _csv_rows(path: Path) -> list[dict[str, str]]:
    if not Path(path).is_file():
        raise DataError(f"metadata file not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def _need(row: dict[str, str], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)}")


def audiocaps(path: Path, pattern: str = "{youtube_id}_{start_time}.wav") -> list[Entry]:
    """AudioCaps `train.csv` / `val.csv` / `test.csv` (audiocap_id, youtube_id, start_time,
    caption). Clips with several captions (val/test have five) become one entry."""
    groups: OrderedDict[str, list[str]] = OrderedDict()
    names: dict[str, str] = {}
    for n, row in enumerate(_csv_rows(path), start=2):
        _need(row, ("youtube_id", "start_time", "caption"), f"{path}:{n}")
        key = f"{row['youtube_id']}_{row['start_time']}"
        groups.setdefault(key, []).append(row["caption"].strip())
        names[key] = pattern.format(youtube_id=row["youtube_id"], start_time=row["start_time"])
    return [
        Entry(audio=names[k], captions=tuple(c), id=k, source=k.rsplit("_", 1)[0])
        for k, c in groups.items()
    ]


def clotho(path: Path, subdir: str = "") -> list[Entry]:
    """Clotho v2 `clotho_captions_{split}.csv`: file_name, caption_1 .. caption_5."""
    entries = []
    for n, row in enumerate(_csv_rows(path), start=2):
        _need(row, ("file_name", "caption_1"), f"{path}:{n}")
        caps = tuple(row[k].strip() for k in sorted(row) if k.startswith("caption_") and row[k])
        name = row["file_name"]
        entries.append(Entry(audio=f"{subdir}/{name}" if subdir else name, captions=caps, id=name))
    return entries


def wavcaps(path: Path, subdir: str = "") -> list[Entry]:
    """WavCaps JSON ({"data": [...]}). The subsets name files differently: FreeSound and
    SoundBible give `id` (+ `.flac`), BBC Sound Effects `id` too, AudioSet_SL `id` ending in
    `.wav`; some releases add `audio` or `file_name`. Durations are kept when given."""
    if not Path(path).is_file():
        raise DataError(f"metadata file not found: {path}")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not JSON ({exc.msg})") from None
    items = data.get("data") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a list under 'data'")
    entries = []
    for n, item in enumerate(items):
        name = _wavcaps_name(item, f"{path} item {n}")
        caption = item.get("caption")
        if not caption:
            raise DataError(f"{path} item {n}: no caption")
        duration = item.get("duration")
        entries.append(
            Entry(
                audio=f"{subdir}/{name}" if subdir else name,
                captions=(str(caption).strip(),),
                duration=float(duration) if duration else None,
                id=str(item.get("id", name)),
            )
        )
    return entries


def _wavcaps_name(item: Any, where: str) -> str:
    """A real file name when one is given (AudioSet_SL ids end in `.wav`; some releases fill
    `audio` with the placeholder "wav_path"), else the id + `.flac` as the releases ship."""
    if not isinstance(item, dict):
        raise DataError(f"{where}: not an object")
    values = [str(item[k]) for k in ("file_name", "id", "audio") if item.get(k)]
    for value in values:
        if value.lower().endswith(AUDIO_SUFFIXES):
            return Path(value).name
    if item.get("id"):
        return f"{item['id']}.flac"
    raise DataError(f"{where}: no id or file name")


def fsd50k(path: Path, subdir: str = "") -> list[Entry]:
    """FSD50K ground truth (`dev.csv` / `eval.csv`: fname, labels, mids[, split]): labels are
    AudioSet class names ("Dog,Bark"); the caption is made from them."""
    entries = []
    for n, row in enumerate(_csv_rows(path), start=2):
        _need(row, ("fname", "labels"), f"{path}:{n}")
        labels = tuple(x.replace("_", " ") for x in row["labels"].split(",") if x)
        name = f"{row['fname']}.wav"
        entries.append(
            Entry(
                audio=f"{subdir}/{name}" if subdir else name,
                captions=(caption_from_labels(labels),),
                labels=labels,
                id=row["fname"],
            )
        )
    return entries


def dcase2024(path: Path, subdir: str = "") -> list[Entry]:
    """DCASE 2024 T9 development captions for FSD50K clips: a CSV with the file name and one
    generated caption per clip (columns `fname`/`file_name` and `caption`)."""
    entries = []
    for n, row in enumerate(_csv_rows(path), start=2):
        name = row.get("fname") or row.get("file_name") or row.get("filename")
        if not name or not row.get("caption"):
            raise DataError(f"{path}:{n}: needs a file name column and a caption")
        name = name if name.lower().endswith(AUDIO_SUFFIXES) else f"{name}.wav"
        entries.append(
            Entry(audio=f"{subdir}/{name}" if subdir else name, captions=(row["caption"].strip(),),
                  id=Path(name).stem)
        )  # fmt: skip
    return entries


def audioset(segments: Path, labels_csv: Path, pattern: str = "Y{ytid}.wav") -> list[Entry]:
    """AudioSet segment lists (`YTID, start_seconds, end_seconds, positive_labels`, with `#`
    comment lines) + `class_labels_indices.csv` (index, mid, display_name)."""
    names = {r["mid"]: r["display_name"] for r in _csv_rows(labels_csv)}
    if not Path(segments).is_file():
        raise DataError(f"metadata file not found: {segments}")
    entries = []
    with open(segments, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = next(csv.reader([line], skipinitialspace=True))
            if len(parts) < 4:
                raise DataError(f"{segments}:{n}: expected YTID, start, end, labels")
            ytid, mids = parts[0], parts[3].split(",")
            unknown = [m for m in mids if m not in names]
            if unknown:
                raise DataError(f"{segments}:{n}: unknown label id {unknown[0]}")
            labels = tuple(names[m] for m in mids)
            entries.append(
                Entry(audio=pattern.format(ytid=ytid), captions=(caption_from_labels(labels),),
                      labels=labels, id=ytid, source=ytid)
            )  # fmt: skip
    return entries


def caption_from_labels(labels: tuple[str, ...] | list[str]) -> str:
    """Class names as a caption a CLAP text tower understands: "the sound of a and b"."""
    clean = [lab.replace("_", " ").strip().lower() for lab in labels if lab.strip()]
    if not clean:
        return "a sound"
    return "the sound of " + (
        clean[0] if len(clean) == 1 else ", ".join(clean[:-1]) + " and " + clean[-1]
    )


def scan_folder(root: Path, captions_from: str = "filename") -> list[Entry]:
    """Every audio file under `root`; captions from a sidecar `.txt` (one per line) when
    present, else from the file name ("dog_barking_01" -> "dog barking") or parent folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"not a directory: {root}")
    if captions_from not in ("filename", "parent"):
        raise DataError("captions_from must be 'filename' or 'parent'")
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        sidecar = path.with_suffix(".txt")
        if sidecar.is_file():
            captions = tuple(x.strip() for x in sidecar.read_text().splitlines() if x.strip())
            label = ""
        else:
            stem = path.parent.name if captions_from == "parent" else path.stem
            words = [w for w in stem.replace("-", "_").split("_") if w and not w.isdigit()]
            label = " ".join(words).lower()
            captions = (label,) if label else ()
        if not captions:
            continue
        rel = path.relative_to(root).as_posix()
        labels = (label,) if label else ()
        entries.append(Entry(audio=rel, captions=captions, labels=labels, id=rel))
    return entries
