"""Few-step ODE sampling of a flow-matching model in diffusers' sigma convention.

    x_sigma = (1 - sigma) x0 + sigma noise,   velocity v = noise - x0,   sigma: 1 -> 0

The sigma schedule (and its `shift`, sigma -> s sigma / (1 + (s - 1) sigma)) comes from
diffusers' `FlowMatchEulerDiscreteScheduler`, which also takes the Euler steps. Models trained
with the average-velocity (MeanFlow-style) objective are asked for the mean velocity over each
step's interval, so one or two evaluations cover the whole path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from querysep.errors import ConfigError

if TYPE_CHECKING:
    from diffusers import FlowMatchEulerDiscreteScheduler

#: (x [b, ...], sigma [b], interval [b]) -> velocity like x. `interval` is the length of the
#: step the velocity is averaged over (0: the instantaneous velocity).
VelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]
METHODS = ("euler", "midpoint", "heun")


def make_scheduler(
    steps: int, shift: float = 1.0, device: torch.device | None = None
) -> FlowMatchEulerDiscreteScheduler:
    """diffusers' scheduler for `steps` steps from sigma 1 (noise) to 0, shifted by `shift`."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    if not shift > 0:
        raise ConfigError(f"shift must be positive, got {shift!r}")
    scheduler = FlowMatchEulerDiscreteScheduler(shift=float(shift))
    # Evenly spaced sigmas 1, 1 - 1/n, ..., 1/n (then 0), as diffusers' SD3 and Flux pipelines
    # pass them. The scheduler's own default ends at sigma 1/1000, which spends the last of
    # few steps on almost nothing (2 steps would be 1 -> 0.001 -> 0).
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps).tolist(), device=device)
    return scheduler


def function_evaluations(steps: int, method: str) -> int:
    """Network evaluations per sample (before classifier-free guidance doubles them)."""
    return steps if method == "euler" else 2 * steps - (method == "heun")


def sample(
    velocity: VelocityFn,
    noise: Tensor,
    *,
    steps: int,
    shift: float = 1.0,
    method: str = "euler",
    average: bool = False,
) -> Tensor:
    """Integrates from `noise` (sigma = 1) to sigma = 0 and returns the sample.

    `average=True` asks for mean velocities over each whole step (an average-velocity model);
    "midpoint" and "heun" spend a second evaluation per step on the instantaneous velocity.
    """
    if method not in METHODS:
        raise ConfigError(f"sampler must be one of {', '.join(METHODS)}, got {method!r}")
    scheduler = make_scheduler(steps, shift, noise.device)
    sigmas = scheduler.sigmas.to(noise.device)
    x = noise.float()
    ones = torch.ones(x.shape[0], device=x.device)
    for i, timestep in enumerate(scheduler.timesteps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if method == "euler":
            interval = (sigma - sigma_next) if average else 0 * sigma
            v = velocity(x, sigma * ones, interval * ones)
            x = scheduler.step(v.float(), timestep, x, return_dict=False)[0]
        else:
            x = _second_order(velocity, x, sigma, sigma_next, method, ones)
    return x


def _second_order(
    velocity: VelocityFn, x: Tensor, sigma: Tensor, sigma_next: Tensor, method: str, ones: Tensor
) -> Tensor:
    zero = torch.zeros_like(ones)
    v = velocity(x, sigma * ones, zero).float()
    if method == "midpoint":
        mid = 0.5 * (sigma + sigma_next)
        v = velocity(x + (mid - sigma) * v, mid * ones, zero).float()
    elif sigma_next > 0:  # Heun; the last step to sigma = 0 stays Euler (as in EDM)
        v_next = velocity(x + (sigma_next - sigma) * v, sigma_next * ones, zero).float()
        v = 0.5 * (v + v_next)
    return x + (sigma_next - sigma) * v
