"""Published metadata of LASS corpora -> manifest entries.

Each converter reads a dataset's metadata file as distributed and names audio paths relative
to that dataset's audio folder. Audio is not opened here: `locate` settles file extensions
against a data root, and `manifest.check_entries` reports and drops what is missing or unusable.

Ids carry the corpus name, so manifests of several corpora can be concatenated. `source` names
the underlying recording in a shared namespace (`youtube:ID`, `freesound:ID`), so AudioCaps and
AudioSet segments, or FSD50K clips and their DCASE captions, never end up mixed with themselves.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from querysep.data.manifest import AUDIO_SUFFIXES, Entry, read_utf8
from querysep.errors import DataError

AUDIOCAPS_PATTERN = "{youtube_id}_{start_time}.wav"
AUDIOSET_PATTERN = "Y{ytid}.wav"

#: Broad FSD50K / AudioSet ancestor classes. FSD50K lists every ancestor of a clip's classes
#: ("Bark, Dog, Domestic_animals_and_pets, Animal"); captions name the specific ones only
#: (labels keep them all).
BROAD_CLASSES = frozenset({
    "animal", "domestic animals and pets", "livestock and farm animals and working animals",
    "wild animals", "music", "musical instrument", "plucked string instrument",
    "bowed string instrument", "brass instrument", "wind instrument and woodwind instrument",
    "percussion", "vehicle", "motor vehicle (road)", "rail transport", "boat and water vehicle",
    "domestic sounds and home sounds", "mechanisms", "tools", "liquid", "human voice",
    "human group actions", "natural sounds", "sounds of things", "source-ambiguous sounds",
})  # fmt: skip
#: Most class names a label caption lists.
CAPTION_CLASSES = 3


# ---------------------------------------------------------------------------- helpers


def _need_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"metadata file not found: {path}")
    return path


def _csv_rows(
    path: str | Path, required: Iterable[str] = (), fieldnames: list[str] | None = None
) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs; a missing column is an error naming the columns found."""
    path = _need_file(path)
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""), fieldnames=fieldnames)
    header = [h.strip() for h in reader.fieldnames or []]
    reader.fieldnames = header
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"{path}:1: missing column(s) {', '.join(missing)} (found: {', '.join(header)})"
        )
    rows = []
    try:
        for row in reader:
            rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}))
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: {exc}") from None
    return rows


def _json(path: str | Path) -> Any:
    path = _need_file(path)
    try:
        return json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None


def _items(data: Any, path: Path) -> list[Any]:
    """The record list of a JSON metadata file: {"data": [...]} or a bare list."""
    items = data.get("data") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a list of records (or one under 'data')")
    return items


def _number(text: str, where: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: expected a number of seconds, got {text!r}") from None
    return int(value) if value.is_integer() else value


def _format(pattern: str, **fields: Any) -> str:
    """A file name from a user's pattern; its mistakes are one-line errors, not KeyErrors."""
    try:
        return pattern.format(**fields)
    except KeyError as exc:
        known = ", ".join("{" + k + "}" for k in fields)
        raise DataError(
            f"pattern {pattern!r}: unknown field {{{exc.args[0]}}} (use {known})"
        ) from None
    except (ValueError, IndexError) as exc:
        raise DataError(f"pattern {pattern!r}: {exc}") from None


def _with_suffix(name: str, suffix: str) -> str:
    """`name` as a file name: kept when it already names an audio file, else `suffix` added."""
    return name if name.lower().endswith(AUDIO_SUFFIXES) else name + suffix


def _stem(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).stem


def caption_from_labels(labels: Iterable[str]) -> str:
    """Class names as a caption a CLAP text tower understands: "the sound of a, b and c".

    Broad ancestor classes are left out when a more specific one is there, and at most
    `CAPTION_CLASSES` are named: "Bark, Dog, Domestic_animals_and_pets, Animal" -> "the sound
    of bark and dog"."""
    names = list(dict.fromkeys(" ".join(x.replace("_", " ").split()).lower() for x in labels))
    names = [x for x in names if x]
    specific = [x for x in names if x not in BROAD_CLASSES] or names
    named = specific[:CAPTION_CLASSES]
    if not named:
        return "a sound"
    return "the sound of " + (
        named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    )


def _label_names(labels: Iterable[str]) -> tuple[str, ...]:
    """Readable class names, one per class: "Motor_vehicle_(road)" -> "Motor vehicle (road)"."""
    return tuple(" ".join(x.replace("_", " ").split()) for x in labels if x.strip())


def locate(entries: Iterable[Entry], root: str | Path) -> list[Entry]:
    """Entries whose file is absent under `root` but present with another audio extension
    (a corpus downloaded as FLAC whose metadata says .wav) point at the file that is there."""
    root = Path(root)
    out = []
    for entry in entries:
        path = root / entry.audio
        if not path.exists():
            for suffix in AUDIO_SUFFIXES:
                other = path.with_suffix(suffix)
                if other != path and other.is_file():
                    audio = PurePosixPath(entry.audio).with_suffix(suffix)
                    entry = replace(entry, audio=str(audio))
                    break
        out.append(entry)
    return out


# ---------------------------------------------------------------------------- converters


def audiocaps(path: str | Path, *, pattern: str = AUDIOCAPS_PATTERN) -> list[Entry]:
    """AudioCaps `train.csv` / `val.csv` / `test.csv` (audiocap_id, youtube_id, start_time,
    caption). The captions of one clip (five in val/test) become one entry. `pattern` names
    the files: fields {youtube_id}, {start_time} (= {start}, seconds, a number: `{start:.0f}`)
    and {end} (start + 10 s), e.g. "Y{youtube_id}.wav" or "{youtube_id}_{start_time}.wav"."""
    groups: dict[tuple[str, str], list[str]] = {}
    files: dict[tuple[str, str], str] = {}
    for n, row in _csv_rows(path, ("youtube_id", "start_time", "caption")):
        ytid, start = row["youtube_id"], row["start_time"]
        if not ytid or not row["caption"]:
            raise DataError(f"{path}:{n}: empty youtube_id or caption")
        key = (ytid, start)
        if key not in files:
            seconds = _number(start, f"{path}:{n}")
            files[key] = _format(pattern, youtube_id=ytid, start_time=seconds, start=seconds,
                                 end=seconds + 10)  # fmt: skip
        groups.setdefault(key, []).append(row["caption"])
    return [
        Entry(files[key], tuple(dict.fromkeys(caps)), id=f"audiocaps/{key[0]}_{key[1]}",
              source=f"youtube:{key[0]}")
        for key, caps in groups.items()
    ]  # fmt: skip


def clotho(path: str | Path) -> list[Entry]:
    """Clotho v2 `clotho_captions_{development,validation,evaluation}.csv`: file_name,
    caption_1 .. caption_5. Audio lives in the split's folder under the same file name."""
    entries = []
    for n, row in _csv_rows(path, ("file_name", "caption_1")):
        columns = sorted((k for k in row if k.startswith("caption_")), key=_caption_index)
        captions = tuple(row[k] for k in columns if row[k])
        if not row["file_name"] or not captions:
            raise DataError(f"{path}:{n}: empty file_name or no caption")
        name = row["file_name"]
        entries.append(Entry(name, captions, id=f"clotho/{_stem(name)}", source=f"clotho:{name}"))
    return entries


def _caption_index(column: str) -> int:
    tail = column.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


#: Words in WavCaps json file names -> subset (the release names them `fsd_final.json`,
#: `bbc_final.json`, `sb_final.json`, `as_final.json`).
WAVCAPS_SUBSETS = {"freesound": "freesound", "fsd": "freesound", "bbc": "bbc",
                   "soundbible": "soundbible", "sb": "soundbible", "audioset": "audioset",
                   "as": "audioset"}  # fmt: skip


def _wavcaps_subset(path: Path, items: list[Any]) -> str:
    for word in re.split(r"[\s_.\-]+", path.stem.lower()):
        if word in WAVCAPS_SUBSETS:
            return WAVCAPS_SUBSETS[word]
    first = items[0] if items and isinstance(items[0], dict) else {}
    if str(first.get("id", "")).endswith(".wav"):  # AudioSet_SL ids are "Y<ytid>.wav"
        return "audioset"
    return "wavcaps"


def _wavcaps_source(subset: str, stem: str) -> str:
    if subset == "audioset":
        ytid = stem[1:] if len(stem) == 12 and stem.startswith("Y") else stem
        return f"youtube:{ytid}"
    return f"{subset}:{stem}"


def wavcaps(path: str | Path, *, suffix: str = ".flac") -> list[Entry]:
    """A WavCaps json ({"data": [{"id", "caption", "duration", ...}]}). The subsets differ:
    FreeSound ids are Freesound ids, BBC Sound Effects ids are catalogue numbers, SoundBible
    ids are small integers, AudioSet_SL ids are "Y<youtube id>.wav"; `audio` holds the
    placeholder "wav_path". The released audio is FLAC named by id (`suffix`); the subset,
    guessed from the file name or the ids, sets `source`."""
    path = Path(path)
    items = _items(_json(path), path)
    subset = _wavcaps_subset(path, items)
    entries = []
    for n, item in enumerate(items):
        where = f"{path}: record {n}"
        if not isinstance(item, dict):
            raise DataError(f"{where}: not an object")
        name = next((str(item[k]) for k in ("id", "file_name") if item.get(k) not in (None, "")),
                    None)  # fmt: skip
        caption = item.get("caption") or item.get("captions")
        captions = (caption,) if isinstance(caption, str) else tuple(caption or ())
        if name is None or not captions or not all(isinstance(c, str) for c in captions):
            raise DataError(f"{where}: needs an 'id' and a 'caption' string")
        stem = _stem(name)
        duration = item.get("duration")
        good = isinstance(duration, int | float) and not isinstance(duration, bool) and duration > 0
        entries.append(
            Entry(stem + suffix, captions, duration=float(duration) if good else None,
                  id=f"wavcaps/{subset}/{stem}", source=_wavcaps_source(subset, stem))
        )  # fmt: skip
    return entries


def _fsd50k_vocabulary(path: str | Path) -> dict[str, str]:
    """FSD50K `vocabulary.csv` (no header: index, label, mid) -> mid: label."""
    rows = _csv_rows(path, fieldnames=["index", "label", "mid"])
    vocab = {row["mid"]: row["label"] for _, row in rows if row.get("mid")}
    if not vocab:
        raise DataError(f"{path}: no 'index,label,mid' rows")
    return vocab


def fsd50k(
    path: str | Path, *, vocabulary: str | Path | None = None, split: str | None = None
) -> list[Entry]:
    """FSD50K ground truth (`dev.csv`: fname, labels, mids, split; `eval.csv`: no split).
    Labels are AudioSet class names ("Bark,Dog,Domestic_animals_and_pets,Animal"); the caption
    is made from them. With `vocabulary` (FSD50K `vocabulary.csv`) labels come from the mids,
    checked against it; `split` keeps only dev.csv rows of that split ("train" or "val")."""
    vocab = _fsd50k_vocabulary(vocabulary) if vocabulary is not None else None
    rows = _csv_rows(path, ("fname", "mids" if vocab else "labels", *(("split",) if split else ())))
    entries = []
    for n, row in rows:
        if split and row["split"] != split:
            continue
        if vocab is not None:
            unknown = [m for m in row["mids"].split(",") if m and m not in vocab]
            if unknown:
                raise DataError(f"{path}:{n}: label id {unknown[0]} is not in {vocabulary}")
            raw = [vocab[m] for m in row["mids"].split(",") if m]
        else:
            raw = row["labels"].split(",")
        labels = _label_names(raw)
        if not row["fname"] or not labels:
            raise DataError(f"{path}:{n}: empty fname or labels")
        fname = row["fname"]
        entries.append(
            Entry(f"{fname}.wav", (caption_from_labels(labels),), labels, id=f"fsd50k/{fname}",
                  source=f"freesound:{fname}")
        )  # fmt: skip
    return entries


def _pick(record: dict[str, Any], keys: tuple[str, ...]) -> Any:
    """The first of `keys` present in `record`, ignoring case ("Captions", "captions")."""
    lowered = {k.lower(): v for k, v in record.items() if isinstance(k, str)}
    return next((lowered[k] for k in keys if lowered.get(k) not in (None, "", [])), None)


_DCASE_FILE = ("wav", "fname", "file_name", "filename", "audio", "index", "id")
_DCASE_LABELS = ("tags", "labels")


def _dcase_entry(record: dict[str, Any], where: str) -> Entry:
    name = _pick(record, _DCASE_FILE)
    caption = _pick(record, ("caption", "captions"))
    if caption is None:  # CSV: caption_1, caption_2, ...
        caption = [v for k, v in sorted(record.items()) if k.lower().startswith("caption") and v]
    captions = (caption,) if isinstance(caption, str) else tuple(caption or ())
    if name is None or not captions or not all(isinstance(c, str) for c in captions):
        raise DataError(f"{where}: needs a file name and a caption")
    tags = _pick(record, _DCASE_LABELS) or ()
    tags = tags.split(",") if isinstance(tags, str) else [str(t) for t in tags]
    name = PurePosixPath(str(name).replace("\\", "/")).name
    stem = _stem(name)
    source = f"freesound:{stem}" if stem.isdigit() else f"dcase2024:{stem}"
    return Entry(_with_suffix(name, ".wav"), captions, _label_names(tags),
                 id=f"dcase2024/{stem}", source=source)  # fmt: skip


def dcase2024(path: str | Path) -> list[Entry]:
    """DCASE 2024 Task 9 caption files. The development set's FSD50K captions
    (`fsd50k_dev_auto_caption.json`: {"data": [{"wav": "<fname>.wav", "caption"}]}, one
    generated caption per clip), the validation metadata (a JSON list with a file index,
    captions and tags) and CSV exports (file name column + caption column(s)) are all read.
    FSD50K-numbered clips share `source` with `fsd50k` entries."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        items = _items(_json(path), path)
        records = [(f"{path}: record {n}", item) for n, item in enumerate(items)]
    else:
        records = [(f"{path}:{n}", row) for n, row in _csv_rows(path)]
    entries = []
    for where, record in records:
        if not isinstance(record, dict):
            raise DataError(f"{where}: not an object")
        entries.append(_dcase_entry(record, where))
    return entries


def _audioset_classes(path: str | Path) -> dict[str, str]:
    return {row["mid"]: row["display_name"] for _, row in _csv_rows(path, ("mid", "display_name"))}


def audioset(
    segments: str | Path, labels_csv: str | Path, *, pattern: str = AUDIOSET_PATTERN
) -> list[Entry]:
    """AudioSet segment lists (`YTID, start_seconds, end_seconds, positive_labels`, `#`
    comment lines) + `class_labels_indices.csv` (index, mid, display_name): labels are the
    class names and the caption is made from them. `pattern` names the files: fields {ytid},
    {start}, {end} (numbers: "{ytid}_{start:.3f}_{end:.3f}.wav" for DESED-style names)."""
    names = _audioset_classes(labels_csv)
    segments = _need_file(segments)
    entries = []
    for n, line in enumerate(read_utf8(segments).split("\n"), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = next(csv.reader([line], skipinitialspace=True))
        if len(parts) < 4 or not parts[0].strip():
            raise DataError(f"{segments}:{n}: expected YTID, start, end, labels")
        ytid = parts[0].strip()
        start, end = (_number(p, f"{segments}:{n}") for p in parts[1:3])
        mids = [m.strip() for m in parts[3].split(",") if m.strip()]
        unknown = [m for m in mids if m not in names]
        if unknown or not mids:
            raise DataError(f"{segments}:{n}: unknown label id {unknown[0] if unknown else '-'} "
                            f"(not in {labels_csv})")  # fmt: skip
        labels = tuple(names[m] for m in mids)
        entries.append(
            Entry(_format(pattern, ytid=ytid, start=start, end=end), (caption_from_labels(labels),),
                  labels, id=f"audioset/{ytid}_{start:g}", source=f"youtube:{ytid}")
        )  # fmt: skip
    return entries
