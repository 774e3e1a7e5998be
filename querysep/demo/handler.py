"""The `/separate` event: a request checked against the limits, run, its results written."""

from __future__ import annotations

import html
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from querysep.demo.limits import Limits, limit_text
from querysep.demo.media import output_folder, write_results, write_spectrograms
from querysep.demo.models import ModelChoice, load_model
from querysep.demo.queries import build_queries, sampling_options
from querysep.errors import QueryError, QuerysepError, first_line
from querysep.options import SeparationOptions
from querysep.query import Query
from querysep.separator import SeparationResult

log = logging.getLogger("querysep.demo")  # the package's name, which log settings select

#: Inputs at least this long report the engine's progress (shorter ones finish in a blink).
PROGRESS_SECONDS = 10.0


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


# -- the request handler ------------------------------------------------------------------------
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
