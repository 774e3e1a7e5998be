"""What the page's query fields and settings panel ask of the engine, checked before any work."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from querysep.demo.limits import MAX_CANDIDATES, limit_text
from querysep.errors import QueryError
from querysep.options import SAMPLER_SETTINGS
from querysep.query import AudioQuery, Query
from querysep.separator import Separator

MODES = ("extract", "remove")


def split_queries(text: str | None) -> list[str]:
    """One query per line or per ';' ("dog barking; a siren"): each gives its own stem."""
    parts = [p.strip() for line in (text or "").splitlines() for p in line.split(";")]
    return [p for p in parts if p]


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
