"""Caption manifests: one JSON object per line (or CSV rows) naming a clip and its captions."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from querysep.errors import DataError
from querysep.files import atomic_write


@dataclass(frozen=True)
class Entry:
    audio: str
    captions: tuple[str, ...]
    labels: tuple[str, ...] = ()
    duration: float | None = None
    sample_rate: int | None = None
    id: str = ""
    source: str = ""


@dataclass
class Manifest:
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


def _entry(obj: dict, where: str) -> Entry:
    if not isinstance(obj, dict) or not obj.get("audio"):
        raise DataError(f"{where}: needs an 'audio' path")
    captions = obj.get("captions", obj.get("caption", ()))
    if isinstance(captions, str):
        captions = [c for c in captions.split("|") if c.strip()]
    if not captions:
        raise DataError(f"{where}: needs at least one caption")
    labels = obj.get("labels") or ()
    if isinstance(labels, str):
        labels = [x for x in labels.split("|") if x.strip()]
    duration = obj.get("duration")
    rate = obj.get("sample_rate")
    return Entry(
        audio=str(obj["audio"]),
        captions=tuple(str(c).strip() for c in captions),
        labels=tuple(str(x).strip() for x in labels),
        duration=float(duration) if duration not in (None, "") else None,
        sample_rate=int(rate) if rate not in (None, "") else None,
        id=str(obj.get("id") or Path(str(obj["audio"])).stem),
        source=str(obj.get("source") or ""),
    )


def read_manifest(path: str | Path, root: str | Path | None = None) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    entries: list[Entry] = []
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix == ".csv":
            for n, row in enumerate(csv.DictReader(f), start=2):
                entries.append(_entry(row, f"{path}:{n}"))
        else:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{n}: not JSON ({exc.msg})") from None
                entries.append(_entry(obj, f"{path}:{n}"))
    return Manifest(entries, Path(root) if root is not None else path.parent)


def write_manifest(entries: Iterable[Entry], path: str | Path) -> Path:
    """JSONL (or CSV, by suffix), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [asdict(e) for e in entries]

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if path.suffix == ".csv":
                writer = csv.DictWriter(f, fieldnames=list(Entry.__dataclass_fields__))
                writer.writeheader()
                for row in rows:
                    writer.writerow(
                        {k: "|".join(v) if isinstance(v, tuple) else v for k, v in row.items()}
                    )
            else:
                for row in rows:
                    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in row.items()}
                    f.write(json.dumps(plain) + "\n")

    atomic_write(path, write)
    return path


@dataclass
class Report:
    """What `check_entries` kept and skipped, by reason, with a few examples each."""

    kept: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, what: str) -> None:
        self.skipped.setdefault(reason, []).append(what)

    def summary(self) -> str:
        lines = [f"kept {self.kept} clips, skipped {sum(map(len, self.skipped.values()))}"]
        for reason, items in sorted(self.skipped.items()):
            examples = ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
            lines.append(f"  {len(items):6d} {reason}: {examples}")
        return "\n".join(lines)


def _read_tail(path: Path, frames: int) -> None:
    """Decodes the last frames: a file cut short (a half-copied FLAC) passes the header check
    but fails here, instead of in the middle of a training run."""
    import soundfile as sf

    from querysep.errors import AudioError

    try:
        with sf.SoundFile(str(path)) as f:
            f.seek(max(0, frames - 1024))
            got = f.read(1024).shape[0]
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise AudioError(f"{path}: {exc}") from None
    if got < min(1024, frames):
        raise AudioError(f"{path} is truncated")


def check_entries(manifest: Manifest, min_seconds: float = 1.0) -> tuple[Manifest, Report]:
    """Reads every clip's header: missing, unreadable, empty and too-short clips are reported
    and dropped (a training run must never die on clip 812 341); durations are filled in."""
    from querysep import audio as qaudio
    from querysep.errors import AudioError

    report = Report()
    kept = []
    for entry in manifest.entries:
        path = manifest.path_of(entry)
        if not path.exists():
            report.skip("missing", entry.audio)
            continue
        try:
            info = qaudio.info(path)
            _read_tail(path, info.frames)
        except AudioError as exc:
            reason = "empty" if "empty" in str(exc) or "no audio" in str(exc) else "unreadable"
            report.skip(reason, entry.audio)
            continue
        if info.duration < min_seconds:
            report.skip(f"shorter than {min_seconds:g} s", entry.audio)
            continue
        kept.append(replace(entry, duration=info.duration, sample_rate=info.sample_rate))
    report.kept = len(kept)
    return Manifest(kept, manifest.root), report
