"""The one STFT helper every model uses, so analysis/synthesis conventions never drift apart."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class STFT(nn.Module):
    """Centred Hann STFT / inverse STFT that always runs in float32.

    Spectral ops stay in float32 even under bf16/fp16 autocast: half-precision FFTs lose
    too much of the phase for masks to reconstruct cleanly.
    """

    def __init__(self, n_fft: int, hop_length: int, win_length: int | None = None) -> None:
        super().__init__()
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.win_length = int(win_length or n_fft)
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)

    @property
    def num_bins(self) -> int:
        return self.n_fft // 2 + 1

    def forward(self, wave: Tensor) -> Tensor:
        """[..., T] real -> [..., F, frames] complex.

        Inputs shorter than one window are zero-padded on the right (reflect padding needs
        more samples); `inverse(spec, T)` crops back to the true length.
        """
        shape = wave.shape
        if shape[-1] < self.n_fft:
            wave = torch.nn.functional.pad(wave, (0, self.n_fft - shape[-1]))
        with torch.autocast(wave.device.type, enabled=False):
            spec = torch.stft(
                wave.reshape(-1, wave.shape[-1]).float(),
                self.n_fft,
                self.hop_length,
                self.win_length,
                window=self.window.float(),
                center=True,
                return_complex=True,
            )
        return spec.reshape(*shape[:-1], *spec.shape[-2:])

    def inverse(self, spec: Tensor, length: int) -> Tensor:
        """[..., F, frames] complex -> [..., length] real."""
        shape = spec.shape
        with torch.autocast(spec.device.type, enabled=False):
            wave = torch.istft(
                spec.reshape(-1, *shape[-2:]).to(torch.complex64),
                self.n_fft,
                self.hop_length,
                self.win_length,
                window=self.window.float(),
                center=True,
                length=length,
            )
        return wave.reshape(*shape[:-2], length)
