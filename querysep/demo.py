"""The Gradio web demo: upload or record audio, describe a sound, hear and see it and the rest.

`build_demo()` makes the `gr.Blocks` app that `demo/app.py` serves on a Hugging Face Space, and
`launch()` runs it locally (`querysep demo`). Needs the `demo` extra (gradio, matplotlib).

A Space is shared by strangers, so every request is bounded: upload size (Gradio refuses larger
files before they reach the app) and duration, number of queries, a queue of bounded length with
bounded concurrency, and a time limit per request. Requests only pick among the models offered
at start-up, and the app reads nothing but Gradio's uploads and writes nothing but its own
output files in Gradio's temporary folder, which Gradio deletes after an hour.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from querysep.errors import QueryError, QuerysepError, first_line
from querysep.options import SAMPLER_SETTINGS, SeparationOptions
from querysep.query import AudioQuery, Query
from querysep.query.parse import slug
from querysep.separator import SeparationResult, Separator, load, output_paths

log = logging.getLogger(__name__)

ENV_PREFIX = "QUERYSEP_DEMO_"
#: Examples shipped in a source checkout (`demo/examples`); a Space passes its own folder.
CHECKOUT_EXAMPLES = Path(__file__).resolve().parents[1] / "demo" / "examples"
EXAMPLES_MANIFEST = "examples.json"
#: Inputs at least this long report the engine's progress (shorter ones finish in a blink).
PROGRESS_SECONDS = 10.0
#: Gradio deletes this app's temporary files (uploads, results) older than this, this often.
CACHE_SECONDS = 3600
MAX_QUERY_CHARS = 2000
SPECTROGRAM_WIDTH = 800
SPECTROGRAM_N_FFT = 512
SPECTROGRAM_RANGE_DB = 80.0
MODES = ("extract", "remove")


@dataclass(frozen=True)
class Limits:
    """What one request may cost a shared server; every field has a QUERYSEP_DEMO_* variable."""

    max_seconds: float = 600.0  # longest recording (and example clip) accepted
    max_file_mb: float = 100.0  # largest upload accepted
    max_queries: int = 8  # queries (stems) per request
    queue_size: int = 16  # requests waiting at most; more are turned away
    concurrency: int = 1  # requests separated at once
    time_limit: float = 600.0  # seconds one request may spend separating

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise QuerysepError(f"demo limit {f.name} must be a positive number, got {value!r}")
            if f.type == "int" and value != int(value):
                raise QuerysepError(f"demo limit {f.name} must be a whole number, got {value!r}")
            object.__setattr__(self, f.name, int(value) if f.type == "int" else float(value))


def limits_from_env(environ: Mapping[str, str] | None = None) -> dict[str, float]:
    """The QUERYSEP_DEMO_<FIELD> overrides that are set, as `Limits` keyword arguments.

    They are how a Space (or a container) is configured without editing code.
    """
    environ = os.environ if environ is None else environ
    out: dict[str, float] = {}
    for f in fields(Limits):
        name = ENV_PREFIX + f.name.upper()
        if environ.get(name, "").strip():
            try:
                out[f.name] = float(environ[name])
            except ValueError:
                raise QuerysepError(f"{name} must be a number, got {environ[name]!r}") from None
    return out


def models_from_env(environ: Mapping[str, str] | None = None) -> list[str] | None:
    """QUERYSEP_DEMO_MODELS: comma-separated models to offer (first = default), or None."""
    environ = os.environ if environ is None else environ
    names = [m.strip() for m in environ.get(ENV_PREFIX + "MODELS", "").split(",")]
    return [m for m in names if m] or None


# -- models -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelChoice:
    """A model offered in the menu: a short label (what the UI and the API take) and the spec
    `querysep.separator.load` resolves (registry name, bundle directory or Hub id)."""

    label: str
    spec: str


def model_choices(models: list[str] | None = None) -> list[ModelChoice]:
    """The models given (the first is the default), then the registry's, without repeats.

    With none given the default comes first (querysep-mini on a machine that cannot have
    audiosep-base). A bundle directory is labelled by its folder name, so server paths stay out
    of the page and the API.
    """
    from querysep import pretrained

    given = [str(m) for m in models or []]
    registry = pretrained.names()
    default = pretrained.default_model() if not given and pretrained.DEFAULT_MODEL else None
    if default in registry:
        registry.remove(default)
        registry.insert(0, default)
    choices: list[ModelChoice] = []
    for spec in dict.fromkeys(given + registry):
        path = Path(spec).expanduser()
        label = path.name if spec not in registry and path.is_dir() else spec
        if any(c.label == label for c in choices):
            label = spec  # two bundles in folders of the same name
        choices.append(ModelChoice(label, spec))
    if not choices:
        raise QuerysepError("no model to offer: pass one or more models (CLI: --model PATH)")
    return choices


_LOAD_LOCKS: dict[str, threading.Lock] = {}
_LOAD_LOCKS_GUARD = threading.Lock()


def load_model(spec: str) -> Separator:
    """`separator.load`, once per process even when two requests ask at the same moment; a
    model being downloaded does not hold up requests for the others."""
    with _LOAD_LOCKS_GUARD:
        lock = _LOAD_LOCKS.setdefault(spec, threading.Lock())
    with lock:
        return load(spec, device="auto")


# -- queries -------------------------------------------------------------------------------------
def split_queries(text: str | None) -> list[str]:
    """One query per line or per ';' ("dog barking; a siren"): each gives its own stem."""
    parts = [p.strip() for line in (text or "").splitlines() for p in line.split(";")]
    return [p for p in parts if p]


def limit_text(field: str, text: str | None) -> str:
    """Every text a request carries is held to one length, before any work is done on it."""
    if text is not None and not isinstance(text, str):
        raise QueryError(f"{field} must be text")
    if len(text or "") > MAX_QUERY_CHARS:
        raise QueryError(f"{field} is longer than {MAX_QUERY_CHARS} characters")
    return text or ""


def build_queries(
    text: str | None,
    example: str | None = None,
    example_weight: float = 0.5,
    mode: str | None = "extract",
) -> list[Query]:
    """The queries one request asks for.

    An example clip joins the first text query with weight `example_weight` (or stands alone
    without text). Instruction phrases set each query's mode ("remove the dog"); the "remove"
    toggle turns every query into a removal.
    """
    limit_text("the query", text)
    if mode not in (None, *MODES):
        raise QueryError(f"mode must be 'extract' or 'remove', not {mode!r}")
    texts = split_queries(text)
    if not texts and not example:
        raise QueryError(
            "the query is empty: describe the sound (e.g. 'dog barking') or give an example clip"
        )
    queries = [Query.from_text(t) for t in texts]
    if example:
        w = 0.5 if example_weight is None else example_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
            raise QueryError(f"the example weight must be a number between 0 and 1, got {w!r}")
        clip = AudioQuery(example)
        first = Query.make(texts[0], clip, weights=(1 - w, w)) if texts else Query.make(audio=clip)
        queries = [first, *queries[1:]]
    if mode == "remove":  # relabelled so file names say what the target holds
        queries = [
            q if q.mode == "remove" else replace(q, mode="remove", label=f"remove {q.label}")
            for q in queries
        ]
    return queries


# -- separation (the part a ZeroGPU Space runs on a borrowed GPU) ------------------------------
@dataclass(frozen=True)
class Job:
    """Everything one separation needs, picklable: ZeroGPU runs it in another process."""

    audio: str
    queries: tuple[Query, ...]
    model: str
    negative: str | None = None
    options: SeparationOptions = field(default_factory=SeparationOptions)
    #: Seconds the request may take, and the wall-clock time (time.time()) it must end by.
    time_limit: float = math.inf
    deadline: float = math.inf
    progress: bool = False

    def check_deadline(self) -> None:
        """The engine's stop hook. Gradio's `time_limit` only bounds streaming events and a
        Python thread cannot be killed, so the limit is checked before each forward pass: a run
        stops within one batch of chunks of its deadline and frees its worker."""
        if time.time() > self.deadline:
            raise TimeLimitError(
                f"stopped at the demo's time limit of {self.time_limit:g} s per request: "
                "try a shorter recording, fewer queries or fewer steps"
            )


class TimeLimitError(QuerysepError):
    """A request ran past the demo's per-request time limit."""


def run_job(job: Job) -> list[SeparationResult]:
    """Loads (once) and runs the model; the only function that touches the accelerator."""
    separator = load_model(job.model)
    results = separator.separate(
        job.audio,
        list(job.queries),
        negative=job.negative,
        options=job.options,
        progress=job.progress,
        stop_check=job.check_deadline,
    )
    assert isinstance(results, list)
    return results


#: Most best-of-k candidates one request may ask for: each one is a full sampling run.
MAX_CANDIDATES = 8


def sampling_options(
    separator: Separator,
    steps: float | None,
    guidance: float | None,
    seed: float | None,
    shift: float | None = None,
    candidates: float | None = None,
) -> tuple[dict[str, Any], str]:
    """The sampler settings this model takes, and a note when given ones do not apply.

    Band-split and ResUNet models separate deterministically and refuse sampler settings, so
    the settings panel (shared by all models) is only passed on to generative models.
    """
    settings = dict(steps=steps, guidance=guidance, shift=shift, seed=seed, candidates=candidates)
    given = {k: v for k, v in settings.items() if v is not None}
    if candidates is not None and not 1 <= candidates <= MAX_CANDIDATES:
        raise QueryError(f"candidates: this demo samples 1 to {MAX_CANDIDATES} per request")
    accepted = set(separator.model.sampling_options)
    options: dict[str, Any] = {}
    for key in list(given):
        convert, needs = SAMPLER_SETTINGS[key]
        if needs in accepted:
            options[key] = convert(given.pop(key))
    note = f"{', '.join(given)} ignored: this model is not generative" if given else ""
    return options, note


# -- pictures --------------------------------------------------------------------------------------
@functools.cache
def _palette() -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def _magnitude(audio: np.ndarray, width: int) -> np.ndarray:
    """|STFT| of the channel mean, [bins, <= width frames]: the hop grows with the length, so
    a ten-minute input costs about as much to draw as a ten-second one."""
    import torch

    from querysep.dsp import STFT

    mono = torch.from_numpy(np.ascontiguousarray(audio.mean(axis=0), dtype=np.float32))
    n_fft = SPECTROGRAM_N_FFT
    hop = max(n_fft // 4, math.ceil(mono.numel() / max(1, width - 1)))  # centred: 1 + n // hop
    return STFT(n_fft, hop)(mono).abs().numpy()


def spectrograms(*signals: np.ndarray, width: int = SPECTROGRAM_WIDTH) -> list[np.ndarray]:
    """RGB uint8 spectrograms on one dB scale (the loudest of them = top of the scale), so a
    quiet stem looks quiet next to its mixture. Low frequencies at the bottom."""
    mags = [_magnitude(s, width) for s in signals]
    ref = max(float(m.max()) for m in mags) + 1e-12
    images = []
    for mag in mags:
        db = 20 * np.log10(mag / ref + 1e-12)
        level = np.clip(1 + db / SPECTROGRAM_RANGE_DB, 0, 1)[::-1]
        images.append(_palette()[(level * 255).astype(np.uint8)])
    return images


def release_memory() -> None:
    """Hands freed memory back to the OS after a request.

    A request's buffers are large and are freed in worker threads that each grow their own
    allocator arena; without a trim the server's RSS creeps up to the high-water mark of every
    arena. (No gc.collect(): with torch and Gradio loaded a full collection costs 0.3 s, and
    the buffers are freed by reference counting anyway.)
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> Any:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()

#: What `/separate` returns: target and residual files, three spectrogram pictures (mixture,
#: target, residual), every query's target file, and a timing line.
Outputs = tuple[str, str, str, str, str, list[str], str]


# -- the request handler ------------------------------------------------------------------------
def _user_message(exc: BaseException, paths: Mapping[str, str | None]) -> str:
    """One line for the page: server temp paths shown as the names the user knows, and escaped,
    because Gradio renders error messages as HTML."""
    text = first_line(exc)
    for name, path in paths.items():
        if path:
            text = text.replace(str(path), name)
    return html.escape(text, quote=False)


@dataclass(frozen=True)
class Request:
    """The page's inputs as Gradio hands them over (blank fields are None)."""

    audio: str | None
    query: str | None = None
    example: str | None = None
    example_weight: float | None = None
    negative: str | None = None
    mode: str | None = None
    model: str | None = None
    chunk_seconds: float | None = None
    steps: float | None = None
    guidance: float | None = None
    seed: float | None = None
    shift: float | None = None
    candidates: float | None = None


class DemoHandler:
    """The `/separate` event: validates a request, runs it, writes and draws the results."""

    def __init__(
        self,
        limits: Limits,
        choices: list[ModelChoice],
        compute: Callable[[Job], list[SeparationResult]] = run_job,
    ) -> None:
        self.limits = limits
        self.choices = {c.label: c for c in choices}
        self.default = choices[0]
        self.compute = compute

    def __call__(
        self,
        audio: str | None,
        query: str | None = None,
        example: str | None = None,
        example_weight: float | None = None,
        negative: str | None = None,
        mode: str | None = None,
        model: str | None = None,
        chunk_seconds: float | None = None,
        steps: float | None = None,
        guidance: float | None = None,
        seed: float | None = None,
        shift: float | None = None,
        candidates: float | None = None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's marker)
    ) -> Outputs:
        """Separate `audio` by `query`: returns the target and residual files first."""
        request = Request(audio, query, example, example_weight, negative, mode, model,
                          chunk_seconds, steps, guidance, seed, shift, candidates)  # fmt: skip
        paths = {"the recording": audio, "the example clip": example}
        try:
            return self._separate(request, progress)
        except QuerysepError as exc:
            raise gr.Error(_user_message(exc, paths), print_exception=False) from None
        except gr.Error:
            raise
        except Exception as exc:  # a bug or an exhausted machine: log it, tell the user briefly
            log.exception("separation failed")
            raise gr.Error(f"separation failed: {_user_message(exc, paths)}") from None
        finally:
            release_memory()

    def _separate(self, r: Request, progress: Callable[..., Any]) -> Outputs:
        started = time.time()
        duration = self._check_audio(r.audio, "the recording")
        if r.example:
            self._check_audio(r.example, "the example clip")
        weight = 0.5 if r.example_weight is None else r.example_weight
        negative = limit_text("the negative query", r.negative).strip() or None
        queries = build_queries(r.query, r.example, weight, r.mode or "extract")
        if len(queries) > self.limits.max_queries:
            raise QueryError(
                f"{len(queries)} queries: this demo separates at most "
                f"{self.limits.max_queries} at once"
            )
        choice = self._choice(r.model)
        progress(0.0, desc=f"loading {choice.label}")
        separator = load_model(choice.spec)
        options, note = sampling_options(
            separator, r.steps, r.guidance, r.seed, r.shift, r.candidates
        )
        progress(0.05, desc="separating")
        job = Job(
            audio=str(r.audio),
            queries=tuple(queries),
            model=choice.spec,
            negative=negative,
            options=SeparationOptions(chunk_seconds=r.chunk_seconds or None, **options),
            time_limit=self.limits.time_limit,
            deadline=started + self.limits.time_limit,
            progress=duration >= PROGRESS_SECONDS,
        )
        results = self.compute(job)
        progress(0.95, desc="writing and drawing")
        folder = output_folder()
        files = write_results(results, Path(str(r.audio)).stem, folder)
        first = results[0]
        pictures = write_spectrograms(
            folder, mixture=first.target + first.residual, result=first.target, rest=first.residual
        )
        elapsed = time.time() - started
        summary = (
            f"{duration:.1f} s of audio, {len(results)} quer{'y' if len(results) == 1 else 'ies'} "
            f"with {choice.label} on {separator.device.type}: {elapsed:.2f} s "
            f"({elapsed / duration:.2f}x real time)"
        )
        if note:
            summary += f"; {note}"
        return files[0][0], files[0][1], *pictures, [t for t, _ in files], summary

    def _check_audio(self, path: str | None, what: str) -> float:
        """The file's duration, once it is known to be readable audio within the limits."""
        from querysep import audio as qaudio

        if not path:
            raise QuerysepError(f"{what} is missing: upload or record one")
        if not os.path.isfile(path):
            qaudio.info(path)  # names what is wrong (no such file, a folder) as an AudioError
            raise QuerysepError(f"{what} is not a file: upload or record one")
        size_mb = os.path.getsize(path) / 2**20
        if size_mb > self.limits.max_file_mb:
            raise QuerysepError(
                f"{what} is {size_mb:.1f} MB; this demo takes at most "
                f"{self.limits.max_file_mb:g} MB"
            )
        duration = qaudio.info(path).duration
        if duration > self.limits.max_seconds:
            raise QuerysepError(
                f"{what} is {duration:.1f} s long; this demo takes at most "
                f"{self.limits.max_seconds:g} s"
            )
        return duration

    def _choice(self, label: str | None) -> ModelChoice:
        if not label:
            return self.default
        if label not in self.choices:
            raise QuerysepError(f"unknown model {label!r}: choose one of {', '.join(self.choices)}")
        return self.choices[label]


def output_folder() -> Path:
    """A fresh folder inside Gradio's temporary folder for one request's files.

    Gradio serves files from there without copying them and deletes them with its other
    temporary files. A folder per request also keeps concurrent requests apart: Gradio's own
    saving of returned arrays names files by content and rewrites them in place, so two
    requests with identical pictures could serve each other a half-written file. The folder is
    private to the server's user (0700), as Gradio keeps uploads: on a shared machine other
    users cannot read anyone's results.
    """
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder()) / "querysep" / uuid.uuid4().hex
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)  # whatever the umask
    return folder


def write_results(
    results: list[SeparationResult], stem: str, folder: Path
) -> list[tuple[str, str]]:
    """(target, residual) 16-bit WAVs per query, named as `SeparationResult.save` names them
    (`<stem>_<query>[_residual].wav`); a repeated query gets `<stem>-<k>`."""
    files: list[tuple[str, str]] = []
    used: set[Path] = set()
    for k, result in enumerate(results):
        name = slug(stem)
        if output_paths(folder, name, result.query)[0] in used:
            name = f"{name}-{k + 1}"
        target, residual = result.save(folder, name, subtype="PCM_16")
        used.add(target)
        files.append((str(target), str(residual)))
    return files


def write_spectrograms(folder: Path, **signals: np.ndarray) -> list[str]:
    """One WebP spectrogram per named signal, all on one scale."""
    from PIL import Image

    paths = []
    for name, image in zip(signals, spectrograms(*signals.values()), strict=True):
        path = folder / f"spectrogram-{name}.webp"
        Image.fromarray(image).save(path, quality=90)
        paths.append(str(path))
    return paths


# -- the app -----------------------------------------------------------------------------------
def load_examples(folder: str | Path | None) -> list[list[Any]]:
    """Rows [recording, query, example clip, mode] from `<folder>/examples.json`, if any."""
    if folder is None or not (Path(folder) / EXAMPLES_MANIFEST).is_file():
        return []
    folder = Path(folder)
    rows = json.loads((folder / EXAMPLES_MANIFEST).read_text(encoding="utf-8"))
    return [
        [
            str(folder / row["audio"]),
            row.get("query", ""),
            str(folder / row["example"]) if row.get("example") else None,
            row.get("mode", "extract"),
        ]
        for row in rows
    ]


def zerogpu(limits: Limits) -> Callable[[Callable], Callable] | None:
    """`spaces.GPU` when the `spaces` package is installed (Hugging Face Spaces), else None.

    On ZeroGPU hardware each run borrows a GPU for a duration that grows with the input,
    capped by the time limit; elsewhere `spaces.GPU` does nothing and the CPU (or a local GPU)
    is used.
    """
    try:
        import spaces
    except ImportError:
        return None

    def duration(job: Job) -> int:
        from querysep import audio as qaudio

        seconds = qaudio.info(job.audio).duration * len(job.queries)
        return int(min(limits.time_limit, 30 + 0.2 * seconds))

    return spaces.GPU(duration=duration)


def build_demo(
    models: list[str] | None = None,
    *,
    max_seconds: float = Limits.max_seconds,
    max_file_mb: float = Limits.max_file_mb,
    max_queries: int = Limits.max_queries,
    queue_size: int = Limits.queue_size,
    concurrency: int = Limits.concurrency,
    time_limit: float = Limits.time_limit,
    examples_dir: str | Path | None = CHECKOUT_EXAMPLES,
    gpu: Callable[[Callable], Callable] | None = None,
    preload: bool = True,
) -> gr.Blocks:
    """The app. `models`: bundles, Hub ids or registry names offered (first = default; None:
    the registry). `gpu`: a decorator for the separation function (`zerogpu(...)` on a
    Space). `preload` loads the default model now rather than on the first request.
    """
    limits = Limits(max_seconds, max_file_mb, max_queries, queue_size, concurrency, time_limit)
    choices = model_choices(models)
    if preload:
        load_model(choices[0].spec)
    handler = DemoHandler(limits, choices, gpu(run_job) if gpu else run_job)
    examples = load_examples(examples_dir)

    with gr.Blocks(
        title="querysep: separate any sound you describe",
        analytics_enabled=False,
        delete_cache=(CACHE_SECONDS, CACHE_SECONDS),
    ) as demo:
        gr.Markdown(
            "# querysep: separate any sound you describe\n"
            "Upload or record a recording, say what you want (*dog barking*, *remove the "
            "traffic noise*) or give an example clip, and get that sound and the rest. "
            f"Up to {limits.max_seconds:g} s and {limits.max_file_mb:g} MB per recording; "
            "several queries (one per line) give one stem each."
        )
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(
                    sources=["upload", "microphone"], type="filepath", label="Recording"
                )
                query = gr.Textbox(
                    value="",
                    label="Sound to extract",
                    placeholder="dog barking   (one query per line, or ';' between them)",
                    lines=2,
                )
                mode = gr.Radio(
                    list(MODES),
                    value="extract",
                    label="Mode",
                    info="remove: get everything except the sound ('remove the X' works too)",
                )
                with gr.Accordion("Example clip and negative query", open=False):
                    example = gr.Audio(
                        sources=["upload", "microphone"],
                        type="filepath",
                        label="Example of the sound (optional)",
                    )
                    example_weight = gr.Slider(
                        0, 1, value=0.5, step=0.05, label="Weight of the example against the text"
                    )
                    negative = gr.Textbox(
                        value="", label="But not (negative query)", placeholder="speech"
                    )
                with gr.Accordion("Model and settings", open=False):
                    model = gr.Dropdown(
                        [c.label for c in choices], value=choices[0].label, label="Model"
                    )
                    chunk = gr.Number(
                        value=None, minimum=1, maximum=60,
                        label="Chunk length in seconds (blank: the model's own)",
                    )  # fmt: skip
                    steps = gr.Number(
                        value=None, precision=0, minimum=1, maximum=100,
                        label="Sampling steps (flow models; blank: the model's own)",
                    )  # fmt: skip
                    guidance = gr.Number(
                        value=None, minimum=0, maximum=20, label="Guidance (flow models)"
                    )
                    seed = gr.Number(value=None, precision=0, label="Seed (flow models)")
                    shift = gr.Number(
                        value=None, minimum=0.1, maximum=10,
                        label="Sigma schedule shift (flow models; blank: the model's own)",
                    )  # fmt: skip
                    candidates = gr.Number(
                        value=None, precision=0, minimum=1, maximum=MAX_CANDIDATES,
                        label="Candidates: sample k, keep the best by CLAPScore (flow models)",
                    )  # fmt: skip
                run = gr.Button("Separate", variant="primary")
            with gr.Column():
                target = gr.Audio(
                    type="filepath", label="Result: what you asked for", buttons=["download"]
                )
                residual = gr.Audio(type="filepath", label="The rest", buttons=["download"])
                timing = gr.Textbox(label="Timing", interactive=False)
                stems = gr.Files(label="All results (one file per query)")
        with gr.Row():
            pictures = [
                gr.Image(label=name, interactive=False, type="filepath")
                for name in ("Mixture", "Result", "The rest")
            ]
        inputs = [audio, query, example, example_weight, negative, mode, model, chunk, steps,
                  guidance, seed, shift, candidates]  # fmt: skip
        run.click(
            handler,
            inputs=inputs,
            outputs=[target, residual, *pictures, stems, timing],
            api_name="separate",
            api_description="Separate a recording by a text query: returns the target and "
            "residual files, three spectrograms, all targets and a timing line.",
            concurrency_limit=limits.concurrency,
            concurrency_id="separate",
        )
        if examples:
            gr.Examples(
                examples,
                inputs=[audio, query, example, mode],
                label="Examples: CC0 animal recordings mixed with synthetic speech",
                cache_examples=False,
            )
    demo.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency)
    return demo


def launch(
    models: list[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    *,
    examples_dir: str | Path | None = CHECKOUT_EXAMPLES,
    gpu: Callable[[Callable], Callable] | None = None,
    **limits: float,
) -> None:
    """Serves the app until interrupted. Limits not given come from QUERYSEP_DEMO_* variables,
    then the defaults; models not given from QUERYSEP_DEMO_MODELS, then the registry."""
    settings = Limits(**{**limits_from_env(), **limits})
    demo = build_demo(
        models or models_from_env(), examples_dir=examples_dir, gpu=gpu, **asdict(settings)
    )
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=f"{settings.max_file_mb:g}mb",
        theme=gr.themes.Default(
            font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
        ),  # system fonts: the page fetches nothing from font CDNs
    )
