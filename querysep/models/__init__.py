"""Separator families, looked up by the `family` name stored in configs and bundles."""

from __future__ import annotations

from typing import Any

from querysep.errors import ConfigError
from querysep.models.base import SeparatorModel

_FAMILIES: dict[str, type[SeparatorModel]] = {}


def register_family(cls: type[SeparatorModel]) -> type[SeparatorModel]:
    _FAMILIES[cls.family] = cls
    return cls


def families() -> list[str]:
    _load_builtin()
    return sorted(_FAMILIES)


def family_class(family: str) -> type[SeparatorModel]:
    _load_builtin()
    if family not in _FAMILIES:
        raise ConfigError(
            f"unknown model family {family!r} (known: {', '.join(sorted(_FAMILIES))})"
        )
    return _FAMILIES[family]


def build_model(family: str, config: dict[str, Any]) -> SeparatorModel:
    return family_class(family)(config)


def _load_builtin() -> None:
    # Imported lazily so `import querysep` stays cheap and a broken optional family
    # cannot break the others.
    from querysep.models import bandsplit, flow, resunet  # noqa: F401


__all__ = ["SeparatorModel", "build_model", "families", "family_class", "register_family"]
