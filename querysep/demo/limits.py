"""What one request may cost a shared server, and how a Space sets it without editing code."""

from __future__ import annotations  # Limits checks its fields' types by their annotations' text

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from querysep.errors import QueryError, QuerysepError

ENV_PREFIX = "QUERYSEP_DEMO_"
MAX_QUERY_CHARS = 2000
#: Most best-of-k candidates one request may ask for: each one is a full sampling run.
MAX_CANDIDATES = 8


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


def limit_text(field: str, text: str | None) -> str:
    """Every text a request carries is held to one length, before any work is done on it."""
    if text is not None and not isinstance(text, str):
        raise QueryError(f"{field} must be text")
    if len(text or "") > MAX_QUERY_CHARS:
        raise QueryError(f"{field} is longer than {MAX_QUERY_CHARS} characters")
    return text or ""
