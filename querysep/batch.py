"""Separating collections: many inputs -> items -> shared forward passes -> files, resumably.

An item is one recording and its queries. Its outputs mirror the input tree under the output
folder and appear atomically, so an item whose outputs exist is done: a re-run skips it, and
a run that was stopped (Ctrl-C, SIGTERM, a dead rank) redoes only what was unfinished.
Files are decoded, resampled and written in worker threads while one model runs; chunks from
several files share a forward pass (`batch_size` rows). Under torchrun / accelerate launch each
rank takes every world-th item, and rank 0 gathers the summary.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import Tensor

from querysep.errors import DataError, QuerysepError, first_line
from querysep.options import SeparationOptions
from querysep.query import AudioQuery, Query
from querysep.query.parse import slug

#: What a folder or glob contributes: the containers soundfile (libsndfile) decodes.
AUDIO_SUFFIXES = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".w64", ".caf"}
)
LOG_NAME = "querysep-log.jsonl"
SUMMARY_NAME = "querysep-summary.json"
#: A manifest is read whole before the run starts: refuse one no collection needs.
MAX_MANIFEST_BYTES = 256 << 20
#: Query sets whose embeddings stay cached in a run; idle ones beyond this are dropped.
MAX_QUERY_SETS = 256
MANIFEST_FIELDS = ("audio", "query", "negative", "query_audio", "audio_weight", "output")


@dataclass(frozen=True)
class Item:
    """One recording and its queries; `name` is where its outputs go under the output folder
    (a relative path without suffix: `sub/take1` gives `sub/take1_<query>.wav`)."""

    audio: Path
    queries: tuple[Query, ...]
    name: PurePosixPath

    def outputs(self, directory: str | Path, format: str = "wav") -> list[tuple[Path, Path]]:
        folder = Path(directory) / self.name.parent
        base = self.name.name
        return [
            (
                folder / f"{base}_{slug(q.label)}.{format}",
                folder / f"{base}_{slug(q.label)}_residual.{format}",
            )
            for q in self.queries
        ]

    @property
    def inputs(self) -> tuple[Path, ...]:
        """Files the item reads: never to be overwritten."""
        return (self.audio, *(f for q in self.queries for f in q.files))


# -- collecting items -------------------------------------------------------------------------
def collect(inputs: Sequence[str | Path], queries: Sequence[Query]) -> list[Item]:
    """Files, folders (recursive, audio suffixes) and glob patterns -> items, every one with
    `queries`. Output names mirror the inputs' tree below their common folder."""
    if not queries:
        raise DataError("give a query for the inputs (QUERY, -q, --query-audio)")
    files: list[tuple[Path, Path]] = []  # (file, the folder its output name is relative to)
    for spec in inputs:
        files += _expand(str(spec))
    if not files:
        raise DataError("no inputs given")
    return _name_items([(f, anchor, tuple(queries), None) for f, anchor in files])


def _expand(spec: str) -> list[tuple[Path, Path]]:
    path = Path(spec)
    try:
        path.exists()
    except OSError:  # e.g. a name too long for the file system: a failed item, logged
        return [(path, Path.cwd())]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if _is_audio(p, path))
        if not found:
            raise DataError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in {path}")
        return [(p, path) for p in found]
    if path.exists() or path.is_symlink() or not glob.has_magic(spec):
        return [(path, path.parent)]  # a missing file becomes a failed item, logged
    matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
    found = [m for m in matches if m.is_file() and m.suffix.lower() in AUDIO_SUFFIXES]
    if not found:
        raise DataError(f"no audio files match {spec}")
    return [(m, m.parent) for m in found]


def _is_audio(path: Path, root: Path) -> bool:
    hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
    # a dangling link is listed too: it becomes a failed item, not a silently smaller run
    listed = path.is_file() or path.is_symlink()
    return not hidden and path.suffix.lower() in AUDIO_SUFFIXES and listed


def _name_items(rows: list[tuple[Path, Path, tuple[Query, ...], str | None]]) -> list[Item]:
    """Relative output names below the inputs' common folder; a stem that two inputs share
    (`x.wav`, `x.flac`) keeps its suffix in the name (`x-flac`)."""
    first: dict[tuple[Path, tuple[Query, ...], str | None], Any] = {}
    for row in rows:  # the same file with the same queries, named twice, is one item
        first.setdefault((row[0].absolute(), row[2], row[3]), row)
    unique = list(first.values())
    anchors = [os.path.abspath(anchor) for _, anchor, _, name in unique if name is None]
    base = Path(os.path.commonpath(anchors)) if anchors else Path.cwd()
    named: list[tuple[Path, tuple[Query, ...], PurePosixPath]] = []
    for audio, _, queries, name in unique:
        if name is not None:
            named.append((audio, queries, PurePosixPath(name)))
        else:
            rel = PurePosixPath(Path(os.path.abspath(audio)).relative_to(base).as_posix())
            named.append((audio, queries, rel))
    stems: dict[PurePosixPath, int] = {}
    for audio, _, rel in named:
        if audio.suffix and rel.suffix == audio.suffix:
            stems[rel.with_suffix("")] = stems.get(rel.with_suffix(""), 0) + 1
    items = []
    for audio, queries, rel in named:
        if audio.suffix and rel.suffix == audio.suffix:
            stem = rel.with_suffix("")
            if stems[stem] > 1:
                stem = stem.with_name(f"{stem.name}-{audio.suffix[1:].lower()}")
            rel = stem
        items.append(Item(audio, queries, rel))
    return items


def read_manifest(path: str | Path, queries: Sequence[Query] = ()) -> list[Item]:
    """A JSONL or CSV manifest -> items. Per row: `audio` (required); `query` (text, or a list;
    in CSV several are joined with ` | `), `negative`, `query_audio`, `audio_weight`, `output`
    (a relative name without suffix). Rows without a query take `queries`. Relative paths are
    relative to the manifest's folder. A malformed manifest is refused whole, naming the row."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise DataError(f"manifest {path} is {size >> 20} MiB; the limit is 256 MiB")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"cannot read manifest {path}: {getattr(exc, 'strerror', None) or first_line(exc)}"
        ) from None
    rows = (
        _csv_rows(text, path)
        if path.suffix.lower() in (".csv", ".tsv")
        else _jsonl_rows(text, path)
    )
    if not rows:
        raise DataError(f"manifest {path} has no rows")
    built = []
    for where, row in rows:
        try:
            built.append(_row_item(row, path.parent, queries))
        except QuerysepError as exc:
            raise DataError(f"{path}:{where}: {exc}") from None
    return _name_items(built)


def _jsonl_rows(text: str, path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: a row must be a JSON object")
        rows.append((n, row))
    return rows


def _csv_rows(text: str, path: Path) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(
        io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ","
    )
    if not reader.fieldnames or "audio" not in reader.fieldnames:
        raise DataError(f"{path}: the header must name an `audio` column")
    rows = []
    for n, row in enumerate(reader, 2):
        if None in row:
            raise DataError(f"{path}:{n}: more cells than header columns")
        clean = {k: v for k, v in row.items() if v not in (None, "")}
        for key in ("query", "negative"):
            if key in clean:
                clean[key] = [part.strip() for part in clean[key].split(" | ") if part.strip()]
        rows.append((n, clean))
    return rows


def _row_item(
    row: dict[str, Any], folder: Path, default: Sequence[Query]
) -> tuple[Path, Path, tuple[Query, ...], str | None]:
    unknown = set(row) - set(MANIFEST_FIELDS)
    if unknown:
        raise DataError(
            f"unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(MANIFEST_FIELDS)}"
        )
    audio = row.get("audio")
    if not isinstance(audio, str) or not audio:
        raise DataError("`audio` must be a path")
    texts = row.get("query", [])
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise DataError("`query` must be text or a list of texts")
    example = row.get("query_audio")
    if example is not None and not isinstance(example, str):
        raise DataError("`query_audio` must be a path")
    weight = row.get("audio_weight", 0.5)
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise DataError(f"`audio_weight` must be a number, got {weight!r}") from None
    if not 0 <= weight <= 1:
        raise DataError(f"`audio_weight` must be between 0 and 1, got {weight}")
    queries = build_queries(
        texts, _resolve(example, folder) if example else None, weight, row.get("negative")
    )
    if not queries:
        if not default:
            raise DataError("the row has no query and none was given on the command line")
        negative = row.get("negative")
        queries = [q.with_negatives(negative) for q in default] if negative else list(default)
    output = row.get("output")
    if output is not None:
        output = _check_output_name(output)
    return _resolve(audio, folder), folder, tuple(queries), output


def build_queries(
    texts: Sequence[str], example: Path | None, audio_weight: float = 0.5, negative: Any = None
) -> list[Query]:
    """The CLI's and a manifest row's queries: the first text mixed with the example recording
    when both are given, each further text its own query."""
    queries: list[Query] = []
    rest = list(texts)
    if example is not None:
        clip = AudioQuery(str(example))
        if rest:
            first = rest.pop(0)
            queries.append(Query.make(first, clip, weights=(1 - audio_weight, audio_weight)))
        else:
            queries.append(Query.make(audio=clip))
    queries += [Query.from_text(t) for t in rest]
    return [q.with_negatives(negative) for q in queries] if negative else queries


def _resolve(value: str, folder: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else folder / path


def _check_output_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError("`output` must be a relative name")
    name = PurePosixPath(value.replace("\\", "/"))
    if name.is_absolute() or ".." in name.parts or any(p.startswith(".") for p in name.parts):
        raise DataError(
            f"`output` {value!r} must stay inside the output folder (no '..', no '/' first)"
        )
    if len(value) > 512:
        raise DataError("`output` is longer than 512 characters")
    return name.as_posix()


def shard(items: Sequence[Item], rank: int, world: int) -> list[Item]:
    """Every world-th item from `rank` on: deterministic, each item on exactly one rank."""
    return list(items[rank::world])


# -- ranks ------------------------------------------------------------------------------------
#: Where launchers put a process's rank, world size and local rank, in the order they are read:
#: torchrun and accelerate launch, Open MPI's mpirun (`accelerate launch --cpu` with
#: `--mpirun_hostfile`), then MPICH / Intel MPI. Slurm's own variables are not read: a batch
#: script's single process sees SLURM_NTASKS too and would wait for ranks that never start.
RANK_VARIABLES = (
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        """This process's place among the launcher's processes (one process when none is set)."""
        env = os.environ
        names = next((n for n in RANK_VARIABLES if n[0] in env or n[1] in env), RANK_VARIABLES[0])
        rank_name, world_name, local_name = names
        try:
            world = int(env.get(world_name, "1"))
            rank = int(env.get(rank_name, "0"))
            local = int(env.get(local_name, "0"))
        except ValueError:
            raise DataError(f"{', '.join(names)} must be whole numbers") from None
        if world < 1 or not 0 <= rank < world:
            raise DataError(f"{rank_name} {rank} is not within {world_name} {world}")
        return cls(rank, world, local)

    def device(self, device: str) -> str:
        """`auto` on a multi-GPU run means this rank's own GPU."""
        if device == "auto" and self.world > 1 and torch.cuda.is_available():
            return f"cuda:{self.local % torch.cuda.device_count()}"
        return device


# -- the run ----------------------------------------------------------------------------------
@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    audio_seconds: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)
    ranks: int = 1

    @property
    def total(self) -> int:
        return self.done + self.skipped + self.failed

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def line(self) -> str:
        return (
            f"{self.done} done, {self.skipped} skipped, {self.failed} failed of {self.total} "
            f"item{'s' if self.total != 1 else ''} in {self.seconds:.1f} s"
        )

    def merge(self, other: Summary) -> None:
        self.done += other.done
        self.skipped += other.skipped
        self.failed += other.failed
        self.seconds = max(self.seconds, other.seconds)
        self.audio_seconds += other.audio_seconds
        self.failures += other.failures


def run(
    separator: Any,
    items: Iterable[Item],
    output_dir: str | Path,
    *,
    options: SeparationOptions | None = None,
    format: str = "wav",
    subtype: str | None = None,
    force: bool = False,
    workers: int | None = None,
    log: bool = True,
    progress: bool = False,
    on_item: Callable[[dict[str, Any]], None] | None = None,
) -> Summary:
    """Separates this rank's share of `items` into `output_dir`; see the module docstring."""
    items = list(items)
    if any(not isinstance(i, Item) for i in items):
        raise DataError("items must be querysep.batch.Item (see batch.collect / read_manifest)")
    options = options or SeparationOptions()
    separator.sampling_options(options)
    outdir = Path(output_dir)
    _check_collisions(items, outdir, format)
    ranks = Ranks.from_env()
    _join(ranks)
    mine = shard(items, ranks.rank, ranks.world)
    outdir.mkdir(parents=True, exist_ok=True)
    plan = separator.plan(options)
    workers = workers or max(2, min(16, plan.batch_size))
    if not 1 <= workers <= 64:
        raise DataError(f"workers must be from 1 to 64, got {workers}")
    forward = SharedForward(separator, options, rows=plan.batch_size)
    log_path = outdir / (LOG_NAME if ranks.world == 1 else f"querysep-log.rank{ranks.rank}.jsonl")
    journal = _Journal(log_path if log else None)
    summary, counting = Summary(ranks=ranks.world), threading.Lock()
    start = time.perf_counter()
    bar = _items_bar(len(mine), progress)
    lone = len(mine) == 1  # one file: its own progress bar instead of a count of files

    def one(item: Item) -> None:
        record = _do_item(
            separator, item, outdir, format, subtype, force, forward, plan, progress and lone
        )
        record["rank"] = ranks.rank
        journal.write(record)
        with counting:
            summary.done += record["status"] == "done"
            summary.skipped += record["status"] == "skipped"
            summary.failed += record["status"] == "failed"
            summary.audio_seconds += record.pop("audio_seconds", 0.0)
            if record["status"] == "failed":
                summary.failures.append({"input": record["input"], "error": record["error"]})
            if bar is not None:
                bar.update(1)
        if on_item is not None:
            on_item(record)

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="querysep") as pool:
            pending: set[Future[None]] = set()
            try:
                for item in mine:  # a bounded window of items in flight: flat memory
                    if len(pending) >= 2 * workers:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for f in finished:
                            f.result()
                    pending.add(pool.submit(one, item))
                for f in pending:
                    f.result()
            except BaseException:  # Ctrl-C / SIGTERM: stop the workers, let them clean up
                forward.stop()
                for f in pending:
                    f.cancel()
                raise
    finally:
        forward.stop()
        if bar is not None:
            bar.close()
    summary.seconds = time.perf_counter() - start
    if ranks.world > 1:
        summary = _gather(summary, ranks)
    if log and ranks.rank == 0:
        from querysep.files import atomic_write

        payload = {**asdict(summary), "total": summary.total, "ok": summary.ok}
        atomic_write(
            outdir / SUMMARY_NAME,
            lambda p: p.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8"),
        )
    return summary


def _check_collisions(items: list[Item], outdir: Path, format: str) -> None:
    owner: dict[Path, Path] = {}
    for item in items:
        for pair in item.outputs(outdir, format):
            for p in pair:
                if p in owner:
                    raise DataError(
                        f"{owner[p]} and {item.audio} would both write {p}: give them different "
                        "output names (manifest `output`) or queries"
                    )
                owner[p] = item.audio


def _do_item(
    separator: Any,
    item: Item,
    outdir: Path,
    format: str,
    subtype: str | None,
    force: bool,
    forward: SharedForward,
    plan: Any,
    progress: bool = False,
) -> dict[str, Any]:
    from querysep.apply import open_source
    from querysep.audio import check_outputs

    start = time.perf_counter()
    pairs = item.outputs(outdir, format)
    record: dict[str, Any] = {
        "input": str(item.audio),
        "queries": [q.label for q in item.queries],
        "outputs": [str(p) for pair in pairs for p in pair],
    }
    flat = [p for pair in pairs for p in pair]
    try:
        check_outputs(pairs, list(item.inputs), force=True)  # never an input, whatever force says
        if not force and all(p.exists() for p in flat):
            record["status"] = "skipped"
        else:
            if not force and any(p.exists() for p in flat):
                present = next(p for p in flat if p.exists())
                raise QuerysepError(
                    f"{present} exists but not all of this item's outputs: remove it, or "
                    "pass --force"
                )
            source = open_source(item.audio, None)
            for pair in pairs:
                pair[0].parent.mkdir(parents=True, exist_ok=True)
            with forward.lane(item.queries) as fn:
                separator.write_files(
                    source, item.queries, pairs, fn, plan, subtype=subtype, progress=progress
                )
            record["status"] = "done"
            record["audio_seconds"] = source.frames / source.sample_rate
    except _Stopped:
        raise
    except (QuerysepError, OSError) as exc:
        record.update(status="failed", error=_reason(exc))
    except Exception as exc:  # a model or library failure on this item: the run goes on
        record.update(status="failed", error=f"{type(exc).__name__}: {first_line(exc)}")
    record["seconds"] = round(time.perf_counter() - start, 3)
    record.setdefault("error", None)
    return record


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, QuerysepError):
        from querysep.files import write_error_message

        if exc.filename:
            return write_error_message(exc.filename, exc)
        return exc.strerror or first_line(exc)
    return first_line(exc)


def _join(ranks: Ranks) -> None:
    """Joins the ranks' process group (gloo: it works on CPU and GPU hosts alike). A group made
    here stays for later runs in the process (made again, it fails to connect under torchrun)
    and is taken down at exit: left to interpreter teardown, gloo's threads can abort a process
    that did all its work ("terminate called without an active exception", exit -6; seen once
    in a 2-rank test). A caller's own group is left alone."""
    import atexit
    import datetime

    import torch.distributed as dist

    if ranks.world > 1 and not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:  # torchrun and accelerate set them; mpirun does not
            raise DataError(
                f"{ranks.world} ranks need {' and '.join(missing)} to meet (rank 0's host and a "
                "free port): set them, or launch with torchrun"
            )
        # ranks wait for the slowest one at the end: a week, not the default 30 min
        dist.init_process_group(
            "gloo", rank=ranks.rank, world_size=ranks.world, timeout=datetime.timedelta(days=7)
        )
        atexit.register(_leave)


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _gather(summary: Summary, ranks: Ranks) -> Summary:
    """Rank 0 collects every rank's summary. The wait for the other ranks polls, so a SIGTERM
    (torchrun stopping the group after a rank died) is handled at once."""
    import torch.distributed as dist

    work = dist.barrier(async_op=True)
    while not work.is_completed():
        time.sleep(0.05)
    parts: list[Any] = [None] * ranks.world if ranks.rank == 0 else []
    dist.gather_object(asdict(summary), parts if ranks.rank == 0 else None, dst=0)
    if ranks.rank != 0:
        return summary
    merged = Summary(ranks=ranks.world)
    for part in parts:
        merged.merge(Summary(**part))
    return merged


class _Journal:
    """The run log: one JSON line per finished item, appended with one write (O_APPEND), so
    a crash leaves whole lines and several threads never interleave."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}) + "\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)


def _items_bar(total: int, enabled: bool) -> Any:
    if not enabled or total < 2:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="file", desc="separating")


# -- shared forward passes --------------------------------------------------------------------
class _Stopped(BaseException):
    """The run is being stopped: a worker waiting for the model gives up its file."""


@dataclass(eq=False)  # compared by identity: the queue holds each request once
class _Request:
    rows: Tensor
    result: Tensor | None = None
    error: BaseException | None = None


class SharedForward:
    """Worker threads each stream one file through the overlap-add engine; their chunks meet
    here and one model thread runs them. A pass starts when `rows` rows of one query set are
    queued or every busy worker of that set is waiting, so files share forward passes.
    Decoding, resampling and writing go on in the workers meanwhile. One thread only ever
    calls the model: torch's OpenMP pool then stays one team of threads (calls from several
    threads each start a team of their own, and their spinning threads oversubscribe the
    CPU)."""

    def __init__(self, separator: Any, options: SeparationOptions, rows: int):
        self.separator, self.options, self.rows = separator, options, max(1, rows)
        self._embedding = threading.Lock()  # one embedding per query set
        self._cond = threading.Condition()
        self._groups: dict[tuple[Query, ...], _Group] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, name="querysep-model", daemon=True)
        self._thread.start()

    @contextmanager
    def lane(self, queries: tuple[Query, ...]) -> Iterator[Callable[[Tensor], Tensor]]:
        """The chunk function for one file of a query set, embedded once per run and shared by
        the set's files. While a file is in its lane, the lane's other requests wait for its
        chunks (up to `rows`) instead of running alone."""
        with self._embedding:  # computed in the worker, outside the model thread
            group = self._groups.get(queries)
            if group is None:
                group = _Group(self.separator.chunk_fn(list(queries), self.options))
                with self._cond:  # the model thread walks the groups holding the condition
                    self._groups[queries] = group
        with self._cond:
            group.busy += 1
        try:
            yield lambda rows: self._submit(group, rows)
        finally:
            with self._cond:
                group.busy -= 1
                self._cond.notify_all()
            with self._embedding, self._cond:  # a million captions: not a million groups
                if group.busy == 0 and len(self._groups) > MAX_QUERY_SETS:
                    self._groups.pop(queries, None)

    def stop(self) -> None:
        """Ends the model thread; waiting workers give up their files."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _submit(self, group: _Group, rows: Tensor) -> Tensor:
        request = _Request(rows)
        with self._cond:
            group.queue.append(request)
            group.waiting += 1
            self._cond.notify_all()
            try:
                while request.result is None and request.error is None:
                    if self._stopped:
                        raise _Stopped
                    self._cond.wait(0.5)
            finally:
                group.waiting -= 1
                if request in group.queue:
                    group.queue.remove(request)
                self._cond.notify_all()
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    def _serve(self) -> None:
        """The model thread: runs whichever query set has a pass ready."""
        with self._cond:
            while not self._stopped:
                ready = next(
                    ((g, b) for g in list(self._groups.values()) if (b := self._take(g))), None
                )
                if ready is None:
                    self._cond.wait(0.5)
                    continue
                group, batch = ready
                self._cond.release()
                try:
                    self._run(group, batch)
                finally:
                    self._cond.acquire()
                    self._cond.notify_all()

    def _take(self, group: _Group) -> list[_Request]:
        queued = sum(r.rows.shape[0] for r in group.queue)
        if not group.queue or (queued < self.rows and group.waiting < group.busy):
            return []
        length = group.queue[0].rows.shape[-1]  # a short file's lone chunk has its own length
        batch, n = [], 0
        for r in list(group.queue):
            if r.rows.shape[-1] == length and (not batch or n + r.rows.shape[0] <= self.rows):
                batch.append(r)
                n += r.rows.shape[0]
                group.queue.remove(r)
        return batch

    @staticmethod
    def _run(group: _Group, batch: list[_Request]) -> None:
        try:
            out = group.fn(torch.cat([r.rows for r in batch]))
            parts = torch.split(out, [r.rows.shape[0] for r in batch])
            for r, part in zip(batch, parts, strict=True):
                r.result = part
        except BaseException as exc:  # every file in the pass fails the same way
            for r in batch:
                r.error = exc


@dataclass
class _Group:
    fn: Callable[[Tensor], Tensor]
    queue: list[_Request] = field(default_factory=list)
    waiting: int = 0
    busy: int = 0
