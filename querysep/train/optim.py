"""Learning-rate schedules, AutoClip and EMA: small stateful pieces the trainer checkpoints."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from querysep.errors import ConfigError

SCHEDULES = ("cosine", "constant", "wsd")


def lr_factor(
    step: int,
    *,
    schedule: str,
    warmup_steps: int,
    total_steps: int,
    min_ratio: float = 0.0,
    decay_fraction: float = 0.2,
) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based).

    Linear warm-up, then cosine to `min_ratio`, constant, or warmup-stable-decay (flat until
    the last `decay_fraction` of training, then linear to `min_ratio`).
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_start = 1.0 - decay_fraction
    if progress < decay_start:
        return 1.0
    return 1.0 - (1.0 - min_ratio) * (progress - decay_start) / max(decay_fraction, 1e-8)


class AutoClip:
    """Clips the gradient norm at a percentile of all norms seen so far (Seetharaman et al.
    2020), so the threshold follows the loss scale instead of being tuned by hand."""

    def __init__(self, percentile: float = 10.0, history: int = 10_000) -> None:
        if not 0 < percentile <= 100:
            raise ConfigError("autoclip percentile must be in (0, 100]")
        self.percentile = percentile
        self.history_size = history
        self.norms: list[float] = []

    def threshold(self, norm: float) -> float:
        if math.isfinite(norm):
            self.norms.append(norm)
            self.norms = self.norms[-self.history_size :]
        if not self.norms:
            return float("inf")
        return float(torch.tensor(self.norms).quantile(self.percentile / 100).item())

    def state_dict(self) -> dict[str, Any]:
        return {"norms": list(self.norms)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.norms = [float(x) for x in state["norms"]]


class EMA:
    """Exponential moving average of a model's floating-point state."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ConfigError("ema decay must be in (0, 1)")
        self.decay = decay
        self.shadow = {
            k: v.detach().clone().float()
            for k, v in model.state_dict().items()
            if v.dtype.is_floating_point
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, value in model.state_dict().items():
            if key in self.shadow:
                self.shadow[key].lerp_(value.detach().float(), 1 - self.decay)

    @torch.no_grad()
    def apply_to(self, model: nn.Module) -> None:
        """Writes the averaged weights into `model` (the trainer swaps them back after use)."""
        state = model.state_dict()
        for key, value in self.shadow.items():
            state[key].copy_(value.to(state[key].dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        for key, value in state["shadow"].items():
            self.shadow[key].copy_(value)
