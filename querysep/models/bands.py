"""Band layouts in Hz, turned into per-bin weights for any sample rate and FFT size.

Overlapping (mel, ERB) bands are triangles whose weights are normalised to sum to one in every
bin, so masks estimated per band recombine without gain errors (a partition of unity).
Explicit edges give BSRNN-style disjoint bands; edges above Nyquist are dropped, so one layout
serves every rate.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from querysep.errors import ConfigError

MAX_BANDS = 1024


def hz_to_mel(f: Tensor) -> Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def mel_to_hz(m: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def hz_to_erb(f: Tensor) -> Tensor:
    return 21.4 * torch.log10(1.0 + 0.00437 * f)


def erb_to_hz(e: Tensor) -> Tensor:
    return (10.0 ** (e / 21.4) - 1.0) / 0.00437


_SCALES = {"mel": (hz_to_mel, mel_to_hz), "erb": (hz_to_erb, erb_to_hz)}


def band_weights(sample_rate: int, n_fft: int, spec: dict[str, Any]) -> Tensor:
    """[n_bands, n_fft // 2 + 1] non-negative weights; every column sums to one."""
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    scale = spec.get("scale", "mel")
    if scale in _SCALES:
        count = spec.get("num_bands", 48)
        if isinstance(count, bool) or not isinstance(count, int):
            raise ConfigError(f"num_bands must be a whole number, got {count!r}")
        weights = _triangular(freqs, count, *_SCALES[scale])
    elif scale == "edges":
        edges = spec.get("edges_hz", [])
        if not isinstance(edges, list) or len(edges) > MAX_BANDS:
            raise ConfigError(f"edges_hz must be a list of at most {MAX_BANDS} frequencies")
        weights = _disjoint(freqs, [float(e) for e in edges])
    else:
        raise ConfigError(f"unknown band scale {scale!r} (use mel, erb or edges)")
    weights = weights[weights.sum(dim=1) > 0]  # bands that caught no bin at this resolution
    weights = weights / weights.sum(dim=0, keepdim=True)
    return weights.float()


def _triangular(freqs: Tensor, num_bands: int, to_scale: Any, from_scale: Any) -> Tensor:
    if not 1 <= num_bands <= MAX_BANDS:
        raise ConfigError(f"num_bands must be in 1..{MAX_BANDS}, got {num_bands}")
    top = to_scale(freqs[-1])
    points = torch.linspace(0, float(top), num_bands + 2, dtype=torch.float64)
    x = to_scale(freqs)
    lo, mid, hi = points[:-2, None], points[1:-1, None], points[2:, None]
    rising = (x - lo) / (mid - lo)
    falling = (hi - x) / (hi - mid)
    rising[0] = 1.0  # the lowest band reaches down to DC, the highest up to Nyquist
    falling[-1] = 1.0
    tri = torch.clamp(torch.minimum(rising, falling), min=0.0)
    # A bin that falls between the peaks of bands too narrow for this FFT size still belongs
    # to its nearest band.
    orphans = tri.sum(dim=0) == 0
    if orphans.any():
        nearest = (x[orphans][None, :] - mid).abs().argmin(dim=0)
        tri[nearest, orphans.nonzero().squeeze(1)] = 1.0
    return tri


def _disjoint(freqs: Tensor, edges: list[float]) -> Tensor:
    if sorted(edges) != edges or any(e <= 0 for e in edges):
        raise ConfigError("edges_hz must be positive and increasing")
    inner = [e for e in edges if e < freqs[-1]]
    index = torch.bucketize(freqs, torch.tensor(inner, dtype=torch.float64), right=True)
    weights = torch.zeros(len(inner) + 1, len(freqs), dtype=torch.float64)
    weights[index, torch.arange(len(freqs))] = 1.0
    return weights


def bsrnn_edges(max_hz: float = 24_000.0) -> list[float]:
    """The general-audio BSRNN layout: 200 Hz bands to 4 kHz, 500 Hz to 7 kHz, 2 kHz above."""
    edges = [200.0 * i for i in range(1, 21)]
    edges += [4000.0 + 500.0 * i for i in range(1, 7)]
    edges += [7000.0 + 2000.0 * i for i in range(1, math.ceil((max_hz - 7000) / 2000))]
    return edges


def band_bins(weights: Tensor) -> list[Tensor]:
    """Indices of the bins each band touches."""
    return [row.nonzero().squeeze(1) for row in weights]
