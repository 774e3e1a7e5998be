"""The models a demo offers, and loading each once however many requests ask for it."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from querysep.errors import QuerysepError
from querysep.separator import Separator, load


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
