"""Training losses for waveform separators, weighted and summed as a config asks.

L1-SNR (10 log10 of the L1 error over the reference's L1 norm) is scale-aware like SNR but keeps
useful gradients on quiet targets. For "absent target" examples (a silent reference) that ratio
is undefined, so the estimate is measured against the mixture instead, down to a floor (-30 dB
by default; `loss.silent_floor_db` in a training config): the model is pushed towards silence
on the same dB scale. With many absent items, a shallower floor (-15 dB, querysep-mini's recipe)
keeps "return silence for every query" from being the cheapest answer early in training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from querysep.dsp import STFT
from querysep.errors import ConfigError

EPS = 1e-8


SILENT_FLOOR = 1e-3  # -30 dB: how quiet an estimate of an absent target needs to get


def l1_snr(
    estimate: Tensor,
    reference: Tensor,
    mixture: Tensor | None = None,
    silent_floor: float = SILENT_FLOOR,
) -> Tensor:
    """Mean over items of 10 log10(|s - s_hat|_1 / |s|_1), [B, ...] inputs.

    Items whose reference is silent score 10 log10(|s_hat|_1 / |x|_1 + floor) against the
    mixture x when it is given.
    """
    err = (estimate - reference).abs().flatten(1).sum(-1)
    ref = reference.abs().flatten(1).sum(-1)
    per_item = 10 * torch.log10((err + EPS) / (ref + EPS))
    if mixture is not None:
        silent = ref <= EPS * reference[0].numel()
        if silent.any():
            mix = mixture.abs().flatten(1).sum(-1)
            quiet = 10 * torch.log10(err / (mix + EPS) + silent_floor)
            per_item = torch.where(silent, quiet, per_item)
    return per_item.mean()


def spec_l1_snr(estimate: Tensor, reference: Tensor, stft: STFT) -> Tensor:
    """L1-SNR on the real and imaginary parts of the complex spectrogram."""
    est, ref = torch.view_as_real(stft(estimate)), torch.view_as_real(stft(reference))
    return l1_snr(est, ref)


def multi_resolution_stft(estimate: Tensor, reference: Tensor, stfts: nn.ModuleList) -> Tensor:
    """Spectral convergence + log-magnitude L1, averaged over several resolutions."""
    total = estimate.new_zeros(())
    for stft in stfts:
        est, ref = stft(estimate).abs(), stft(reference).abs()
        convergence = torch.linalg.norm(ref - est) / (torch.linalg.norm(ref) + EPS)
        log_mag = (torch.log(est + 1e-5) - torch.log(ref + 1e-5)).abs().mean()
        total = total + convergence + log_mag
    return total / len(stfts)


def neg_si_sdr(estimate: Tensor, reference: Tensor) -> Tensor:
    est = estimate - estimate.mean(-1, keepdim=True)
    ref = reference - reference.mean(-1, keepdim=True)
    alpha = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + EPS)
    target = alpha * ref
    ratio = target.pow(2).sum(-1) / ((est - target).pow(2).sum(-1) + EPS)
    return -(10 * torch.log10(ratio + EPS)).mean()


class SeparationLoss(nn.Module):
    """sum_k weight_k * loss_k(estimate, reference); parts are returned for logging."""

    NAMES = ("l1_snr", "spec_l1_snr", "mrstft", "si_sdr")

    def __init__(
        self,
        weights: Mapping[str, float],
        *,
        n_fft: int = 1024,
        hop_length: int = 256,
        resolutions: tuple[tuple[int, int], ...] = ((512, 128), (1024, 256), (2048, 512)),
    ) -> None:
        super().__init__()
        weights = dict(weights)
        floor_db = weights.pop("silent_floor_db", 10 * math.log10(SILENT_FLOOR))
        if isinstance(floor_db, bool) or not isinstance(floor_db, int | float) or floor_db >= 0:
            raise ConfigError(f"loss.silent_floor_db must be a negative number, got {floor_db!r}")
        #: How far below the mixture an absent target's estimate is rewarded for going (L1, dB).
        #: A deep floor lets the silent items' log-gradient outweigh everything else early in
        #: training, and the model learns to return silence for every query.
        self.silent_floor = 10 ** (floor_db / 10)
        unknown = set(weights) - set(self.NAMES)
        if unknown:
            raise ConfigError(
                f"unknown loss terms {sorted(unknown)}; known: {list(self.NAMES)} "
                "(and silent_floor_db)"
            )
        for name, value in weights.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value < math.inf
            ):
                raise ConfigError(f"loss.{name} must be a finite weight >= 0, got {value!r}")
        self.weights = {k: float(v) for k, v in weights.items() if float(v) != 0}
        if not self.weights:
            raise ConfigError("the loss needs at least one non-zero weight")
        self.stft = STFT(n_fft, hop_length)
        self.stfts = nn.ModuleList(STFT(n, h) for n, h in resolutions)

    def forward(
        self, estimate: Tensor, reference: Tensor, mixture: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Terms other than L1-SNR skip items whose reference is silent (their ratios are
        undefined there); L1-SNR scores those against `mixture`."""
        estimate, reference = estimate.float(), reference.float()
        keep = reference.abs().flatten(1).sum(-1) > EPS * reference[0].numel()
        est, ref = estimate[keep], reference[keep]
        parts: dict[str, Tensor] = {}
        for name in self.weights:
            if name == "l1_snr":
                parts[name] = l1_snr(estimate, reference, mixture, self.silent_floor)
            elif not keep.any():
                parts[name] = estimate.new_zeros(())
            elif name == "spec_l1_snr":
                parts[name] = spec_l1_snr(est, ref, self.stft)
            elif name == "mrstft":
                parts[name] = multi_resolution_stft(est, ref, self.stfts)
            else:
                parts[name] = neg_si_sdr(est, ref)
        parts["loss"] = torch.stack([self.weights[k] * v for k, v in parts.items()]).sum()
        return parts
