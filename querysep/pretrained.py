"""Registry of named models: what `model=None` and `--model NAME` resolve to.

Entries know where their weights come from and how to turn them into a bundle in the local
cache. querysep's own trained models and imported ones (AudioSep) register here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from querysep.errors import ModelLoadError


@dataclass(frozen=True)
class PretrainedEntry:
    name: str
    description: str
    license: str
    #: Builds (downloading and converting if needed) the bundle directory and returns it.
    materialize: Callable[[Path], Path]
    sources: tuple[str, ...] = field(default=())


_REGISTRY: dict[str, PretrainedEntry] = {}
#: The model used when none is named. None until a published model is registered.
DEFAULT_MODEL: str | None = None


def register(entry: PretrainedEntry) -> None:
    _REGISTRY[entry.name] = entry


def names() -> list[str]:
    return sorted(_REGISTRY)


def cache_dir() -> Path:
    root = os.environ.get("QUERYSEP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "querysep"
    )
    return Path(root)


def default_model() -> str:
    if DEFAULT_MODEL is None:
        raise ModelLoadError(
            "no default pretrained model is available yet: pass a bundle with model=... "
            "(CLI: --model PATH); make one with `querysep init-model CONFIG OUTDIR`"
        )
    return DEFAULT_MODEL


def lookup(name: str) -> PretrainedEntry | None:
    return _REGISTRY.get(name)


def materialize(name: str) -> Path:
    entry = _REGISTRY[name]
    return entry.materialize(cache_dir() / "models" / name)
