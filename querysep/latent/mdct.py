"""A parameter-free latent space: the MDCT, a lapped orthogonal transform.

Encoding is exact and invertible (sine window, 50 % overlap, time-domain aliasing cancelled
between neighbouring frames), costs one matrix product, needs no weights and no download. It
is the latent space of tiny test models and of the learning test, where a random VAE would
hide whether the flow model learns anything.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from querysep.errors import ConfigError
from querysep.latent.base import LatentAutoencoder, check_spec


def mdct_basis(n: int) -> Tensor:
    """[n, 2n] orthonormal MDCT analysis rows with the sine (Princen-Bradley) window."""
    t = torch.arange(2 * n, dtype=torch.float64) + 0.5
    k = torch.arange(n, dtype=torch.float64) + 0.5
    window = torch.sin(math.pi * t / (2 * n))
    basis = torch.cos(math.pi / n * torch.outer(k, t + n / 2))
    return (math.sqrt(2.0 / n) * window * basis).float()


class MDCTAutoencoder(LatentAutoencoder):
    """`{type: mdct, hop: 256}`: hop coefficients per channel and frame; frames = t / hop + 1
    (one extra frame covers the half-windows at both ends)."""

    kind = "mdct"

    def __init__(self, spec: dict[str, Any], sample_rate: int):
        super().__init__()
        check_spec(self.kind, spec, {"hop", "channels"})
        hop, channels = spec.get("hop", 256), spec.get("channels", 1)
        if not isinstance(hop, int) or hop < 2 or hop % 2:
            raise ConfigError(f"mdct autoencoder: hop must be an even integer >= 2, got {hop!r}")
        if channels not in (1, 2):
            raise ConfigError(f"mdct autoencoder: channels is 1 or 2, got {channels!r}")
        self.sample_rate, self.channels, self.hop = sample_rate, channels, hop
        self.latent_dim = hop * channels
        self.register_buffer("basis", mdct_basis(hop), persistent=False)

    def _encode(self, audio: Tensor) -> Tensor:
        x = torch.nn.functional.pad(audio.float(), (self.hop, self.hop))
        blocks = rearrange(x, "b c (f n) -> b c f n", n=self.hop)
        frames = torch.cat([blocks[..., :-1, :], blocks[..., 1:, :]], dim=-1)  # b c f 2n
        return rearrange(frames @ self.basis.T, "b c f n -> b (c n) f")

    def _decode(self, latent: Tensor) -> Tensor:
        coeffs = rearrange(latent.float(), "b (c n) f -> b c f n", c=self.channels)
        first, second = (coeffs @ self.basis).chunk(2, dim=-1)  # halves of each 2n frame
        zero = torch.zeros_like(first[..., :1, :])
        blocks = torch.cat([first, zero], dim=-2) + torch.cat([zero, second], dim=-2)
        return rearrange(blocks, "b c f n -> b c (f n)")[..., self.hop : -self.hop]
