"""Training losses for waveform separators, weighted and summed as a config asks.

L1-SNR (10 log10 of the L1 error over the reference's L1 norm) is scale-aware like SNR but keeps
useful gradients on quiet targets; "absent target" examples (silent reference) fall back to the
plain error energy, so the model is pushed towards silence instead of dividing by zero.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from querysep.dsp import STFT
from querysep.errors import ConfigError

EPS = 1e-8


def l1_snr(estimate: Tensor, reference: Tensor) -> Tensor:
    """Mean over items of -10 log10(|s| / |s - s_hat|) on the waveform, [B, ..., T] inputs."""
    err = (estimate - reference).abs().flatten(1).sum(-1)
    ref = reference.abs().flatten(1).sum(-1)
    return (10 * torch.log10((err + EPS) / (ref + EPS))).mean()


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
        unknown = set(weights) - set(self.NAMES)
        if unknown:
            raise ConfigError(f"unknown loss terms {sorted(unknown)}; known: {list(self.NAMES)}")
        self.weights = {k: float(v) for k, v in weights.items() if float(v) != 0}
        if not self.weights:
            raise ConfigError("the loss needs at least one non-zero weight")
        self.stft = STFT(n_fft, hop_length)
        self.stfts = nn.ModuleList(STFT(n, h) for n, h in resolutions)

    def forward(self, estimate: Tensor, reference: Tensor) -> dict[str, Tensor]:
        estimate, reference = estimate.float(), reference.float()
        parts: dict[str, Tensor] = {}
        for name in self.weights:
            if name == "l1_snr":
                parts[name] = l1_snr(estimate, reference)
            elif name == "spec_l1_snr":
                parts[name] = spec_l1_snr(estimate, reference, self.stft)
            elif name == "mrstft":
                parts[name] = multi_resolution_stft(estimate, reference, self.stfts)
            else:
                parts[name] = neg_si_sdr(estimate, reference)
        parts["loss"] = torch.stack([self.weights[k] * v for k, v in parts.items()]).sum()
        return parts
