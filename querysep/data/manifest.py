"""Caption manifests: one JSON object per line (or CSV rows) naming a clip and its captions.

Everything that trains or evaluates reads clips through a manifest, so this module is strict
about what it accepts (a bad line is a `DataError` naming file and line) and lenient about
what is on disk (`check_entries` reports and drops unusable clips instead of failing).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path, PurePosixPath
from typing import Any

from querysep.errors import AudioError, DataError, first_line
from querysep.files import atomic_write

#: File types scans and converters look for (what libsndfile decodes).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
#: CSV manifests join list fields with this character.
LIST_SEPARATOR = "|"

MISSING, UNREADABLE, EMPTY, NO_CAPTION = "missing", "unreadable", "empty", "no caption"


def default_id(audio: str) -> str:
    """The audio path without its suffix: unique whenever paths are, and readable."""
    return str(PurePosixPath(audio.replace("\\", "/")).with_suffix(""))


@dataclass(frozen=True)
class Entry:
    """One clip: where it is, what it sounds like, and which recording it was cut from."""

    audio: str
    captions: tuple[str, ...]
    labels: tuple[str, ...] = ()
    duration: float | None = None
    sample_rate: int | None = None
    id: str = ""
    source: str = ""
    #: The clip's licence (SPDX id or a short phrase); corpora that ship or train shipped
    #: weights record it per clip.
    license: str = ""

    def __post_init__(self) -> None:
        # Lists from callers become tuples, so entries hash and compare like read ones.
        for name in ("captions", "labels"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if not self.id:
            object.__setattr__(self, "id", default_id(self.audio))


ENTRY_FIELDS = tuple(f.name for f in fields(Entry))


@dataclass
class Manifest:
    """Entries plus the folder their relative audio paths start from."""

    entries: list[Entry]
    root: Path = field(default_factory=Path)

    def path_of(self, entry: Entry) -> Path:
        path = Path(entry.audio)
        return path if path.is_absolute() else self.root / path

    def labels(self) -> set[str]:
        return {label for e in self.entries for label in e.labels}

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)


# ---------------------------------------------------------------------------- reading


def _texts(value: Any, key: str, where: str, split: bool) -> tuple[str, ...]:
    """A list of non-empty strings; CSV cells hold several joined by '|'."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[Any] = value.split(LIST_SEPARATOR) if split else [value]
    elif isinstance(value, list):
        items = value
    else:
        raise DataError(f"{where}: '{key}' must be a string or a list of strings")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise DataError(f"{where}: '{key}' must hold strings, got {json.dumps(item)}")
        text = " ".join(item.split())
        if text:
            out.append(text)
    return tuple(out)


def _number(value: Any, key: str, where: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: '{key}' must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise DataError(f"{where}: '{key}' must be a positive number, got {value!r}")
    return number


def parse_entry(obj: Any, where: str, *, split_lists: bool = False) -> Entry:
    """A manifest record -> Entry; `where` ("file:line") starts every error message."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    audio = obj.get("audio")
    if not isinstance(audio, str) or not audio.strip():
        raise DataError(f"{where}: needs an 'audio' path")
    captions = _texts(obj.get("captions") or obj.get("caption"), "captions", where, split_lists)
    if not captions:
        raise DataError(f"{where}: needs at least one caption")
    rate = _number(obj.get("sample_rate"), "sample_rate", where)
    if rate is not None and rate != int(rate):
        raise DataError(f"{where}: 'sample_rate' must be a whole number of Hz, got {rate:g}")
    ident, source = obj.get("id") or "", obj.get("source") or ""
    if not isinstance(ident, str | int) or not isinstance(source, str | int):
        raise DataError(f"{where}: 'id' and 'source' must be strings")
    licence = obj.get("license") or ""
    if not isinstance(licence, str):
        raise DataError(f"{where}: 'license' must be a string")
    return Entry(
        audio=audio.strip(),
        captions=captions,
        labels=_texts(obj.get("labels"), "labels", where, split_lists),
        duration=_number(obj.get("duration"), "duration", where),
        sample_rate=int(rate) if rate is not None else None,
        id=str(ident),
        source=str(source),
        license=licence.strip(),
    )


def read_utf8(path: Path) -> str:
    """The whole file as text; a bad byte is a DataError naming its line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text") from None


def _jsonl_records(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    # split("\n"), not splitlines(): U+2028 and friends may sit unescaped inside JSON strings.
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not JSON ({exc.msg}, column {exc.colno})") from None


def _csv_records(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in ("audio", "captions|caption") if not set(c.split("|")) & set(header)]
    if missing:
        raise DataError(f"{path}:1: missing column(s) {', '.join(missing)}")
    try:
        for row in reader:
            yield reader.line_num, {k: v for k, v in row.items() if k is not None}
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: {exc}") from None


def read_manifest(path: str | Path, root: str | Path | None = None) -> Manifest:
    """JSONL (or `.csv`) -> Manifest; audio paths resolve against `root` (default: the
    manifest's folder). Ids must be unique: they name clips in caches and reports."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    text = read_utf8(path)
    is_csv = path.suffix.lower() == ".csv"
    records = _csv_records(path, text) if is_csv else _jsonl_records(path, text)
    entries: list[Entry] = []
    first_line: dict[str, int] = {}
    for n, obj in records:
        entry = parse_entry(obj, f"{path}:{n}", split_lists=is_csv)
        if entry.id in first_line:
            raise DataError(f"{path}:{n}: duplicate id {entry.id!r} (first on line "
                            f"{first_line[entry.id]})")  # fmt: skip
        first_line[entry.id] = n
        entries.append(entry)
    return Manifest(entries, Path(root) if root is not None else path.parent)


# ---------------------------------------------------------------------------- writing


def _check_writable(entries: list[Entry], csv_lists: bool) -> None:
    """Refuse what `read_manifest` would refuse, so a written manifest always reads back."""
    seen: set[str] = set()
    for entry in entries:
        if not entry.audio or not any(c.strip() for c in entry.captions):
            raise DataError(f"clip {entry.id!r} needs an audio path and at least one caption")
        if entry.duration is not None and not (
            math.isfinite(entry.duration) and entry.duration > 0
        ):
            raise DataError(f"clip {entry.id!r}: duration must be a positive number of seconds")
        if entry.id in seen:
            raise DataError(f"duplicate clip id {entry.id!r}: ids must be unique in a manifest")
        seen.add(entry.id)
        if csv_lists and any(LIST_SEPARATOR in t for t in entry.captions + entry.labels):
            raise DataError(
                f"clip {entry.id!r}: a caption or label contains '{LIST_SEPARATOR}', which CSV "
                "manifests use as a separator: write a .jsonl manifest instead"
            )


def _row(entry: Entry, join: Callable[[tuple[str, ...]], Any]) -> dict[str, Any]:
    """The entry as a record, its tuples turned into lists (JSON) or joined strings (CSV)."""
    values = {name: getattr(entry, name) for name in ENTRY_FIELDS}
    return {k: join(v) if isinstance(v, tuple) else v for k, v in values.items()}


def write_manifest(entries: Iterable[Entry], path: str | Path) -> Path:
    """JSONL (or CSV, by suffix), written atomically: readers never see half a manifest."""
    path = Path(path)
    entries = list(entries)
    is_csv = path.suffix.lower() == ".csv"
    _check_writable(entries, is_csv)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if is_csv:
                writer = csv.DictWriter(f, fieldnames=list(ENTRY_FIELDS))
                writer.writeheader()
                writer.writerows(_row(e, LIST_SEPARATOR.join) for e in entries)
            else:
                f.writelines(json.dumps(_row(e, list)) + "\n" for e in entries)

    atomic_write(path, write)
    return path


def rebase(entries: Iterable[Entry], root: str | Path, base: str | Path) -> list[Entry]:
    """Audio paths relative to `root` -> relative to `base` (absolute ones stay), so a manifest
    written somewhere else still finds its clips."""
    root, base = os.path.abspath(root), os.path.abspath(base)
    if root == base:
        return list(entries)
    out = []
    for entry in entries:
        if os.path.isabs(entry.audio):
            out.append(entry)
            continue
        target = os.path.join(root, entry.audio)
        try:
            audio = Path(os.path.relpath(target, base)).as_posix()
        except ValueError:  # another drive (Windows): only an absolute path works
            audio = target
        out.append(replace(entry, audio=audio))
    return out


# ---------------------------------------------------------------------------- checking


@dataclass
class Report:
    """What a check or scan kept and skipped, by reason, with examples and one error each."""

    kept: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, what: str, detail: str = "") -> None:
        self.skipped.setdefault(reason, []).append(what)
        if detail and reason not in self.details:
            self.details[reason] = detail

    @property
    def total_skipped(self) -> int:
        return sum(map(len, self.skipped.values()))

    def counts(self) -> dict[str, int]:
        return {reason: len(items) for reason, items in sorted(self.skipped.items())}

    def summary(self) -> str:
        total = self.kept + self.total_skipped
        lines = [f"kept {self.kept} of {total} clips, skipped {self.total_skipped}"]
        for reason, items in sorted(self.skipped.items()):
            examples = ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
            lines.append(f"  {reason}: {len(items)} ({examples})")
            if reason in self.details:
                lines.append(f"    e.g. {self.details[reason]}")
        return "\n".join(lines)


def _read_tail(path: Path, frames: int) -> None:
    """Decodes the last frames: a half-copied FLAC passes the header check but fails here,
    instead of in the middle of a training run."""
    import numpy as np
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as f:
            f.seek(max(0, frames - 1024))
            tail = f.read(1024, dtype="float32")
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise AudioError(
            f"cannot decode the end of {path} (truncated?): {first_line(exc)}"
        ) from None
    if len(tail) < min(1024, frames):
        raise AudioError(f"{path} is truncated: its last frames cannot be read")
    if not np.isfinite(tail).all():
        raise AudioError(f"{path} contains NaN or infinite samples")


_EMPTY = re.compile(r"is empty|holds no audio samples")


def _inspect(path: Path, read_headers: bool) -> tuple[str, str] | tuple[float, int]:
    """(reason, detail) for a clip that cannot be used, else (duration, sample_rate)."""
    if not path.exists():
        return MISSING, ""
    if not path.is_file():
        return UNREADABLE, f"{path} is not a file"
    if path.stat().st_size == 0:
        return EMPTY, f"{path} is empty (0 bytes)"
    if not read_headers:
        return math.nan, 0
    from querysep import audio as qaudio

    try:
        info = qaudio.info(path)
        _read_tail(path, info.frames)
    except AudioError as exc:
        return (EMPTY if _EMPTY.search(str(exc)) else UNREADABLE), str(exc)
    return info.duration, info.sample_rate


def check_entries(
    manifest: Manifest,
    min_seconds: float = 1.0,
    read_headers: bool = True,
    *,
    workers: int = 8,
    progress: bool = False,
) -> tuple[Manifest, Report]:
    """Drops missing, unreadable, empty and too-short clips (a training run must never die on
    clip 812 341) and fills in durations and rates from the headers. With `read_headers=False`
    only existence is checked and the manifest's own durations decide what is too short."""
    from tqdm import tqdm

    short = f"shorter than {min_seconds:g} s"
    paths = [manifest.path_of(e) for e in manifest.entries]
    with ThreadPoolExecutor(max(1, workers)) as pool:  # header reads wait on I/O, not the GIL
        results = pool.map(lambda p: _inspect(p, read_headers), paths)
        results = tqdm(results, total=len(paths), disable=not progress, unit="clip", leave=False)
        report, kept = Report(), []
        for entry, result in zip(manifest.entries, results, strict=True):
            if isinstance(result[0], str):
                report.skip(result[0], entry.audio, str(result[1]))
                continue
            if read_headers:
                entry = replace(entry, duration=result[0], sample_rate=int(result[1]))
            if entry.duration is not None and entry.duration < min_seconds:
                report.skip(short, entry.audio, f"{entry.audio} lasts {entry.duration:.2f} s")
                continue
            kept.append(entry)
    report.kept = len(kept)
    return Manifest(kept, manifest.root), report


# ---------------------------------------------------------------------------- scanning

_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def caption_from_name(name: str) -> str:
    """ "DogBark_take-02" -> "dog bark take": separators and pure numbers are dropped."""
    words = re.split(r"[\s_\-.]+", _CAMEL.sub(" ", name))
    return " ".join(w.lower() for w in words if w and not w.isdigit())


def _sidecar_captions(path: Path) -> tuple[str, ...] | None:
    sidecar = path.with_suffix(".txt")
    if not sidecar.is_file():
        return None
    try:
        lines = sidecar.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        return ()
    return tuple(" ".join(x.split()) for x in lines if x.strip())


def scan_folder(
    root: str | Path,
    *,
    captions_from: str = "filename",
    suffixes: tuple[str, ...] = AUDIO_SUFFIXES,
    report: Report | None = None,
) -> list[Entry]:
    """Every audio file under `root` (hidden ones aside), paths relative to it.

    Captions come from a sidecar `NAME.txt` (one caption per line) when there is one, else
    from the file name ("dog_barking_01" -> "dog barking") or, with `captions_from="parent"`,
    the folder name; with `captions_from="sidecar"` files without one are skipped. The label
    is the name- or folder-derived caption, so clips named alike are not mixed together.
    Files that yield no caption are listed in `report`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"not a directory: {root}")
    if captions_from not in ("filename", "parent", "sidecar"):
        raise DataError(f"captions_from must be filename, parent or sidecar, not {captions_from!r}")
    entries = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.suffix.lower() not in suffixes or any(p.startswith(".") for p in rel.parts):
            continue
        if not path.is_file():
            continue
        named = caption_from_name(path.parent.name if captions_from == "parent" else path.stem)
        captions = _sidecar_captions(path)
        if captions is None and captions_from != "sidecar":
            captions = (named,) if named else ()
        if not captions:
            if report is not None:
                report.skip(NO_CAPTION, rel.as_posix())
            continue
        labels = (named,) if named and captions_from != "sidecar" else ()
        ident = default_id(rel.as_posix())
        entries.append(Entry(rel.as_posix(), captions, labels, id=ident, source=ident))
    return entries
