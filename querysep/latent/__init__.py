"""Latent spaces for the flow-matching separator: frozen autoencoders behind one interface."""

from __future__ import annotations

from typing import Any

from querysep.errors import ConfigError
from querysep.latent.base import LatentAutoencoder

KINDS = ("mdct", "oobleck", "dac")


def build_autoencoder(spec: dict[str, Any], sample_rate: int) -> LatentAutoencoder:
    """`{type: mdct | oobleck | dac, ...}` -> a frozen autoencoder at `sample_rate`.

    Each type is imported only when asked for, so a missing optional library (diffusers for
    Oobleck) breaks only the configs that use it.
    """
    if not isinstance(spec, dict) or spec.get("type") not in KINDS:
        got = spec.get("type") if isinstance(spec, dict) else spec
        raise ConfigError(f"autoencoder type must be one of {', '.join(KINDS)}, got {got!r}")
    kind = spec["type"]
    if kind == "mdct":
        from querysep.latent.mdct import MDCTAutoencoder as cls
    elif kind == "oobleck":
        from querysep.latent.oobleck import OobleckAutoencoder as cls
    else:
        from querysep.latent.dac import DacAutoencoder as cls
    autoencoder = cls(spec, sample_rate)
    if autoencoder.sample_rate != sample_rate:
        raise ConfigError(
            f"the {kind} autoencoder runs at {autoencoder.sample_rate} Hz but the model's "
            f"sample_rate is {sample_rate}: make them equal"
        )
    return autoencoder.freeze()


__all__ = ["KINDS", "LatentAutoencoder", "build_autoencoder"]
