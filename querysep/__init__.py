"""querysep: query-conditioned universal sound separation.

import querysep
result = querysep.separate("street.wav", "dog barking", model="path/to/bundle")
result.save("out/")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from querysep.errors import AudioError, ConfigError, ModelLoadError, QueryError, QuerysepError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from querysep.options import SeparationOptions
    from querysep.query import AudioQuery, Query
    from querysep.separator import SeparationResult, Separator

_LAZY = {
    "Separator": "querysep.separator",
    "SeparationResult": "querysep.separator",
    "SeparationOptions": "querysep.options",
    "separate": "querysep.separator",
    "Query": "querysep.query",
    "AudioQuery": "querysep.query",
    "ClapQueryEncoder": "querysep.query",
}


def __getattr__(name: str) -> Any:
    # torch and transformers load only when a model is actually needed, so `querysep --version`
    # and error paths stay instant.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'querysep' has no attribute {name!r}")


__all__ = [
    "AudioError",
    "AudioQuery",
    "ClapQueryEncoder",
    "ConfigError",
    "ModelLoadError",
    "Query",
    "QueryError",
    "QuerysepError",
    "SeparationOptions",
    "SeparationResult",
    "Separator",
    "__version__",
    "separate",
]
