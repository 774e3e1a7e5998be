"""ResUNet mask estimator in the layout of AudioSep's ResUNet30, so its weights load as is.

    wave -> STFT -> |X| -> BatchNorm over frequency -> residual conv UNet (additive FiLM from
         the query at every norm) -> magnitude mask + phase rotation -> iSTFT

With `negative: true` every norm also gets a FiLM from a negative query ("not that"), a
conditioning of its own. Folded into the positive embedding instead, a negative read as a
blurred positive and cost querysep-mini 0.5 dB; with its own FiLMs, trained from the first
step, it gains 0.2 dB (bench/README.md; knowing the interferer exactly would give 1 dB).

Tensors inside the UNet are [b, c, time, freq]. Numerics follow AudioSep exactly where they
matter for loading its checkpoint: the magnitude floor, the dropped top bin, time padded to a
multiple of 32, LeakyReLU slope 0.01 and BatchNorm momentum.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from querysep.dsp import STFT
from querysep.errors import ConfigError
from querysep.models import register_family
from querysep.models.base import SeparatorModel
from querysep.nn import FiLM

DEFAULTS: dict[str, Any] = {
    "n_fft": 2048,
    "hop_length": 320,
    "widths": [32, 64, 128, 256, 384, 384],
    "momentum": 0.01,
    "presence_gate": False,
    "negative": False,
}
#: AudioSep's pooling: time and frequency halve in the first five blocks, frequency only in
#: the sixth.
_POOLS = [(2, 2), (2, 2), (2, 2), (2, 2), (2, 2), (1, 2)]
_MAG_FLOOR = 1e-10  # on |X|^2, as AudioSep computes its spectrogram


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, negative_slope=0.01)


Cond = tuple[Tensor, Tensor | None]  # (query [b, d], negative [b, d]: set where FiLMs read it)


def _film(cond_dim: int, channels: int, scale: bool = False) -> FiLM:
    return FiLM(cond_dim, channels, scale=scale, channel_axis=1)


def _condition(x: Tensor, film: FiLM, neg: FiLM | None, cond: Cond) -> Tensor:
    """`x + beta(query)`, then `* (1 + gamma_neg(negative)) + beta_neg(negative)` where the
    model takes negatives: a scale as well, so "not that" can turn channels down. The negative's
    FiLM starts as the identity, so adding it to a trained model changes nothing until trained."""
    query, negative = cond
    x = film(x, query)
    return neg(x, negative) if neg is not None else x


class ConvBlock(nn.Module):
    """Two (norm + FiLM beta -> LeakyReLU -> 3x3 conv) steps around a residual path."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, momentum: float, negative: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, momentum=momentum)
        self.film1 = _film(cond_dim, c_in)
        self.neg1 = _film(cond_dim, c_in, scale=True) if negative else None
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=momentum)
        self.film2 = _film(cond_dim, c_out)
        self.neg2 = _film(cond_dim, c_out, scale=True) if negative else None
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor, cond: Cond) -> Tensor:
        h = self.conv1(_act(_condition(self.bn1(x), self.film1, self.neg1, cond)))
        h = self.conv2(_act(_condition(self.bn2(h), self.film2, self.neg2, cond)))
        return h + (self.shortcut(x) if self.shortcut is not None else x)


class PresenceGate(nn.Module):
    """How sure the model is that the queried sound is in the chunk at all, in [0, 1].

    A mask estimator asked for a sound that is not there still lets some of the mixture
    through (querysep-mini: a median of -7 dB); training the masks harder towards silence costs
    quality on the sounds that are there. A separate yes/no score scales the whole chunk
    instead. It reads the query-conditioned bottleneck, one score per bottleneck frame, and
    keeps the largest: a sound heard anywhere in the chunk keeps the chunk, however long it is.
    """

    def __init__(self, channels: int, query_dim: int, hidden: int = 64, open_logit: float = 4.0):
        super().__init__()
        self.score = nn.Sequential(
            nn.Linear(channels + query_dim, hidden), nn.SiLU(), nn.Linear(hidden, 1)
        )
        nn.init.zeros_(self.score[-1].weight)
        nn.init.constant_(self.score[-1].bias, open_logit)  # starts open: outputs barely change

    def forward(self, x: Tensor, query: Tensor) -> Tensor:
        """x [b, c, t, f] bottleneck, query [b, d] -> gate [b]."""
        frames = rearrange(x.float().mean(-1), "b c t -> b t c")
        query = repeat(query.float(), "b d -> b t d", t=frames.shape[1])
        logits = self.score(torch.cat([frames, query], dim=-1))  # b t 1
        return torch.sigmoid(logits.amax(dim=(1, 2)))


class Up(nn.Module):
    """Norm + FiLM -> transposed conv upsampling, concatenated with the skip, then a ConvBlock."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: tuple[int, int],
        cond_dim: int,
        momentum: float,
        negative: bool,
    ):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, momentum=momentum)
        self.film1 = _film(cond_dim, c_in)
        self.neg1 = _film(cond_dim, c_in, scale=True) if negative else None
        self.conv1 = nn.ConvTranspose2d(c_in, c_out, stride, stride=stride, bias=False)
        self.conv_block2 = ConvBlock(2 * c_out, c_out, cond_dim, momentum, negative)

    def forward(self, x: Tensor, skip: Tensor, cond: Cond) -> Tensor:
        x = self.conv1(_act(_condition(self.bn1(x), self.film1, self.neg1, cond)))
        return self.conv_block2(torch.cat([x, skip], dim=1), cond)


@register_family
class ResUNetSeparator(SeparatorModel):
    """AudioSep-compatible ResUNet30: 25.6 M parameters at the default widths (AudioSep's
    26.5 M less the decoder norms and FiLMs it builds but never uses)."""

    family = "resunet"

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        c = self.merge_defaults(config, DEFAULTS)
        widths = list(c["widths"])
        if len(widths) != len(_POOLS) or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ConfigError(f"resunet: widths must be {len(_POOLS)} positive integers")
        self.stft = STFT(c["n_fft"], c["hop_length"])
        bins = self.stft.num_bins - 1  # the top bin is dropped so frequency halves evenly
        freq_factor = math.prod(p[1] for p in _POOLS)
        if bins % freq_factor:
            raise ConfigError(f"resunet: n_fft / 2 must be divisible by {freq_factor}")
        self.time_factor = math.prod(p[0] for p in _POOLS)
        m, q = c["momentum"], self.query_dim
        self.accepts_negative = bool(c["negative"])
        neg = self.accepts_negative
        self.bn0 = nn.BatchNorm2d(self.stft.num_bins, momentum=m)
        self.pre_conv = nn.Conv2d(1, widths[0], 1)
        ins = [widths[0], *widths[:-1]]
        self.encoders = nn.ModuleList(
            ConvBlock(i, o, q, m, neg) for i, o in zip(ins, widths, strict=True)
        )
        self.center = ConvBlock(widths[-1], widths[-1], q, m, neg)
        outs = widths[::-1]  # each decoder block returns to the width of its skip
        self.decoders = nn.ModuleList(
            Up(i, o, pool, q, m, neg)
            for i, o, pool in zip([widths[-1], *outs[:-1]], outs, _POOLS[::-1], strict=True)
        )
        self.after_conv = nn.Conv2d(widths[0], 3, 1)
        self.presence = PresenceGate(widths[-1], q) if c["presence_gate"] else None

    def forward(self, mixture: Tensor, query: Tensor, negative: Tensor | None = None) -> Tensor:
        length = mixture.shape[-1]
        if self.accepts_negative and negative is None:
            # zeros, as the Separator sends for "no negative" beside queries that have one: the
            # two must give the same output (the negative FiLMs' biases apply to both)
            negative = torch.zeros_like(query)
        cond = (query, negative)
        spec = self.stft(mixture)  # b f n
        mag = torch.clamp(spec.real**2 + spec.imag**2, min=_MAG_FLOOR).sqrt()
        cos, sin = spec.real / mag, spec.imag / mag
        x = rearrange(self.bn0(rearrange(mag, "b f n -> b f n 1")), "b f n 1 -> b 1 n f")
        frames = x.shape[2]
        x = F.pad(x, (0, 0, 0, -frames % self.time_factor))[..., :-1]
        x = self.pre_conv(x)
        skips = []
        for block, pool in zip(self.encoders, _POOLS, strict=True):
            x = block(x, cond)
            skips.append(x)
            x = F.avg_pool2d(x, pool)
        x = self.center(x, cond)
        gate = self.presence(x, query) if self.presence is not None else None
        for up, skip in zip(self.decoders, reversed(skips), strict=True):
            x = up(x, skip, cond)
        x = F.pad(self.after_conv(x), (0, 1))[:, :, :frames].float()  # top bin back (mask 0)
        mask_mag = torch.sigmoid(x[:, 0])
        m_real, m_imag = torch.tanh(x[:, 1]), torch.tanh(x[:, 2])
        m_abs = torch.clamp((m_real**2 + m_imag**2).sqrt(), min=_MAG_FLOOR)
        m_cos, m_sin = m_real / m_abs, m_imag / m_abs
        out_mag = F.relu(rearrange(mag, "b f n -> b n f") * mask_mag)
        cos, sin = rearrange(cos, "b f n -> b n f"), rearrange(sin, "b f n -> b n f")
        real = out_mag * (cos * m_cos - sin * m_sin)
        imag = out_mag * (sin * m_cos + cos * m_sin)
        if gate is not None:
            real, imag = real * gate[:, None, None], imag * gate[:, None, None]
        return self.stft.inverse(rearrange(torch.complex(real, imag), "b n f -> b f n"), length)
