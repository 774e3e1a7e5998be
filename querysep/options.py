"""`SeparationOptions`: how to separate (chunking and the sampler), not what.

One object carries these settings through the API, the CLI, the demo and collection runs, and
checks them when it is made, before any model loads. What depends on the model (a deterministic
family takes no sampler settings, the model's own chunking defaults) is checked by `Separator`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from querysep.config import validate_inference
from querysep.errors import QueryError

#: Sampler settings and the model option a family must list in `sampling_options` to take each
#: (seed and candidates need a sampling generator).
SAMPLER_SETTINGS: dict[str, tuple[type, str]] = {
    "steps": (int, "steps"),
    "guidance": (float, "guidance"),
    "shift": (float, "shift"),
    "seed": (int, "generator"),
    "candidates": (int, "generator"),
}
CHUNK_SETTINGS = ("chunk_seconds", "overlap", "batch_size")
#: The most samples best-of-k re-ranking may draw per chunk: k forward passes each.
MAX_CANDIDATES = 64
MAX_STEPS = 1000


@dataclass(frozen=True)
class SeparationOptions:
    """Unset (None) settings take the model's defaults."""

    chunk_seconds: float | None = None
    overlap: float | None = None
    batch_size: int | str | None = None  # chunks per forward pass, or "auto"
    steps: int | None = None
    guidance: float | None = None
    shift: float | None = None
    seed: int | None = None
    candidates: int | None = None

    def __post_init__(self) -> None:
        chunking = {k: getattr(self, k) for k in CHUNK_SETTINGS}
        # a placeholder for each unset setting, so that the given ones are checked alone
        probe = {"chunk_seconds": 1.0, "overlap": 0.0, "batch_size": "auto"}
        probe.update({k: v for k, v in chunking.items() if v is not None})
        try:
            validate_inference(probe, "separation settings")
        except Exception as exc:  # ConfigError: a user's option, so a QueryError here
            raise QueryError(str(exc)) from None
        _check_whole(self.steps, "steps", 1, MAX_STEPS)
        _check_whole(self.candidates, "candidates", 1, MAX_CANDIDATES)
        _check_whole(self.seed, "seed", 0, 2**63 - 1)
        _check_real(self.guidance, "guidance", lambda v: v >= 0, ">= 0")
        _check_real(self.shift, "shift", lambda v: v > 0, "> 0")

    @classmethod
    def make(cls, options: SeparationOptions | None = None, **settings: Any) -> SeparationOptions:
        """`options` with the given keyword settings on top (None leaves a setting as it is)."""
        given = {k: v for k, v in settings.items() if v is not None}
        unknown = set(given) - {f.name for f in fields(cls)}
        if unknown:
            raise QueryError(f"unknown separation setting(s): {', '.join(sorted(unknown))}")
        return replace(options or cls(), **given)

    def sampler(self) -> dict[str, Any]:
        """The sampler settings that are set."""
        return {k: getattr(self, k) for k in SAMPLER_SETTINGS if getattr(self, k) is not None}

    def chunking(self, defaults: dict[str, Any]) -> dict[str, Any]:
        """The model's inference defaults with the chunk settings that are set on top."""
        merged = dict(defaults)
        merged.update({k: getattr(self, k) for k in CHUNK_SETTINGS if getattr(self, k) is not None})
        return merged

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _check_whole(value: Any, name: str, low: int, high: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise QueryError(f"{name} must be a whole number from {low} to {high}, got {value!r}")


def _check_real(value: Any, name: str, ok: Any, rule: str) -> None:
    if value is None:
        return
    good = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not good or not math.isfinite(value) or not ok(value):
        raise QueryError(f"{name} must be a finite number {rule}, got {value!r}")
