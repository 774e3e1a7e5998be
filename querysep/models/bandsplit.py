"""Band-split RoPE transformer mask estimator, conditioned on a query embedding by FiLM.

    wave -> STFT -> per-band projection -> [dual-path RoPE transformer, FiLM] x depth
         -> per-band MLP + GLU complex masks -> weighted overlap of bands -> iSTFT

Shapes: b batch, t frames, k bands, d model width, f frequency bins.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from querysep.dsp import STFT
from querysep.errors import ConfigError
from querysep.models import register_family
from querysep.models.bands import band_bins, band_weights
from querysep.models.base import SeparatorModel
from querysep.nn import FiLM
from querysep.nn.rope import Rotary, rotate

#: Bounds on what a config may ask for before anything is built (bundles are untrusted).
MAX_N_FFT = 1 << 16
#: Blocks are Python objects: even on the meta device (the check of an untrusted bundle) ten
#: thousand of them take a minute to build, so depth is bounded like n_fft and num_bands.
MAX_DEPTH = 128

DEFAULTS: dict[str, Any] = {
    "n_fft": 2048,
    "hop_length": 512,
    "bands": {"scale": "mel", "num_bands": 48},
    "dim": 128,
    "depth": 4,
    "heads": 4,
    "dim_head": 32,
    "ff_mult": 4,
    "mask_mult": 4,
    "dropout": 0.0,
    "conditioning": "every_block",
    "encoder_depth": None,
    "film_hidden": None,
    "negative": True,
}


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm = nn.RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.out = nn.Linear(heads * dim_head, dim, bias=False)
        self.rotary = Rotary(dim_head)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = rearrange(
            self.qkv(self.norm(x)), "b n (three h e) -> three b h n e", three=3, h=self.heads
        )
        cos, sin = self.rotary(x.shape[1], x.device)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(rearrange(y, "b h n e -> b n (h e)"))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, mult: int, dropout: float):
        super().__init__(
            nn.RMSNorm(dim),
            nn.Linear(dim, dim * mult),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim * mult, dim),
        )


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int, dropout: float):
        super().__init__()
        self.attn = Attention(dim, heads, dim_head, dropout)
        self.ff = FeedForward(dim, ff_mult, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x)
        return x + self.ff(x)


class DualPathBlock(nn.Module):
    """Attention along time within each band, then across bands within each frame."""

    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int, dropout: float):
        super().__init__()
        self.time = TransformerLayer(dim, heads, dim_head, ff_mult, dropout)
        self.band = TransformerLayer(dim, heads, dim_head, ff_mult, dropout)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        x = rearrange(x, "b t k d -> (b k) t d")
        x = rearrange(self.time(x), "(b k) t d -> (b t) k d", b=b)
        return rearrange(self.band(x), "(b t) k d -> b t k d", b=b)


class BandSplit(nn.Module):
    """Each band's complex bins (real and imaginary parts) -> one `dim`-wide token per frame.

    Bins enter unweighted: a band sees its full content and the overlap weights only matter
    when masks are recombined.
    """

    def __init__(self, bins: list[Tensor], dim: int):
        super().__init__()
        for i, idx in enumerate(bins):
            self.register_buffer(f"bins{i}", idx, persistent=False)
        self.proj = nn.ModuleList(
            nn.Sequential(nn.RMSNorm(2 * len(idx)), nn.Linear(2 * len(idx), dim)) for idx in bins
        )

    def forward(self, spec: Tensor) -> Tensor:
        """spec [b, f, t] complex -> [b, t, k, d]."""
        tokens = []
        for i, proj in enumerate(self.proj):
            band = torch.view_as_real(spec[:, getattr(self, f"bins{i}")])  # b f' t 2
            tokens.append(proj(rearrange(band, "b f t c -> b t (f c)")))
        return torch.stack(tokens, dim=2)


class MaskHead(nn.Module):
    """Per-band MLP + GLU -> complex mask for that band's bins, overlaps blended by weight."""

    def __init__(self, bins: list[Tensor], weights: Tensor, dim: int, mult: int, num_bins: int):
        super().__init__()
        self.num_bins = num_bins
        for i, idx in enumerate(bins):
            self.register_buffer(f"bins{i}", idx, persistent=False)
            self.register_buffer(f"w{i}", weights[i, idx], persistent=False)
        self.mlps = nn.ModuleList(
            nn.Sequential(
                nn.Linear(dim, dim * mult),
                nn.Tanh(),
                nn.Linear(dim * mult, 2 * 2 * len(idx)),
                nn.GLU(dim=-1),
            )
            for idx in bins
        )

    def forward(self, x: Tensor) -> Tensor:
        """x [b, t, k, d] -> mask [b, f, t] complex."""
        b, t = x.shape[:2]
        mask = torch.zeros(b, self.num_bins, t, 2, device=x.device, dtype=torch.float32)
        for i, mlp in enumerate(self.mlps):
            m = rearrange(mlp(x[:, :, i]).float(), "b t (f c) -> b f t c", c=2)
            w = getattr(self, f"w{i}")[None, :, None, None]
            mask.index_add_(1, getattr(self, f"bins{i}"), m * w)
        return torch.view_as_complex(mask)


@register_family
class BandSplitSeparator(SeparatorModel):
    """Band-split RoPE transformer; FiLM at every block, or once after a query-agnostic encoder
    (Banquet style) so one mixture encoding serves many queries."""

    family = "bandsplit"

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        c = self.merge_defaults(config, DEFAULTS)
        self._validate(c)
        self.accepts_negative = bool(c["negative"])
        self.stft = STFT(c["n_fft"], c["hop_length"])
        with torch.device("cpu"):  # computed tables, real even when the model is built on meta
            weights = band_weights(self.sample_rate, c["n_fft"], c["bands"])
            bins = band_bins(weights)
        dim, depth = c["dim"], c["depth"]
        block = lambda: DualPathBlock(dim, c["heads"], c["dim_head"], c["ff_mult"], c["dropout"])  # noqa: E731
        self.band_split = BandSplit(bins, dim)
        self.blocks = nn.ModuleList(block() for _ in range(depth))
        cond_dim = self.query_dim * (2 if self.accepts_negative else 1)
        if c["conditioning"] == "every_block":
            self.encoder_depth = 0
            self.films = nn.ModuleList(
                FiLM(cond_dim, dim, hidden=c["film_hidden"]) for _ in range(depth)
            )
        else:
            self.encoder_depth = (
                c["encoder_depth"] if c["encoder_depth"] is not None else depth // 2
            )
            self.films = nn.ModuleList([FiLM(cond_dim, dim, hidden=c["film_hidden"])])
        self.norm = nn.RMSNorm(dim)
        self.mask = MaskHead(bins, weights, dim, c["mask_mult"], self.stft.num_bins)

    @staticmethod
    def _validate(c: dict[str, Any]) -> None:
        for key in (
            "n_fft",
            "hop_length",
            "dim",
            "depth",
            "heads",
            "dim_head",
            "ff_mult",
            "mask_mult",
        ):
            if not isinstance(c[key], int) or c[key] < 1:
                raise ConfigError(f"bandsplit: {key} must be a positive integer, got {c[key]!r}")
        if c["n_fft"] > MAX_N_FFT:
            raise ConfigError(f"bandsplit: n_fft must be at most {MAX_N_FFT}, got {c['n_fft']}")
        if c["depth"] > MAX_DEPTH:
            raise ConfigError(f"bandsplit: depth must be at most {MAX_DEPTH}, got {c['depth']}")
        if c["hop_length"] > c["n_fft"]:
            raise ConfigError("bandsplit: hop_length must not exceed n_fft")
        if c["dim_head"] % 2:
            raise ConfigError("bandsplit: dim_head must be even (rotary embedding)")
        if c["conditioning"] not in ("every_block", "once"):
            raise ConfigError(
                f"bandsplit: conditioning is every_block or once, not {c['conditioning']!r}"
            )
        enc = c["encoder_depth"]
        if enc is not None and not (isinstance(enc, int) and 0 <= enc <= c["depth"]):
            raise ConfigError(f"bandsplit: encoder_depth must be in [0, depth], got {enc!r}")
        if not isinstance(c["bands"], dict):
            raise ConfigError(
                "bandsplit: bands must be a mapping such as {scale: mel, num_bands: 48}"
            )

    def _condition(self, query: Tensor, negative: Tensor | None) -> Tensor:
        if not self.accepts_negative:
            return query
        return torch.cat(
            [query, negative if negative is not None else torch.zeros_like(query)], dim=-1
        )

    def _film_blocks(self, x: Tensor, cond: Tensor, start: int) -> Tensor:
        for i in range(start, len(self.blocks)):
            if self.encoder_depth == 0:
                x = self.films[i](x, cond)
            elif i == self.encoder_depth:
                x = self.films[0](x, cond)
            x = self.blocks[i](x)
        if self.encoder_depth == len(self.blocks):
            x = self.films[0](x, cond)
        return x

    def _encode(self, spec: Tensor) -> Tensor:
        x = self.band_split(spec)
        for block in self.blocks[: self.encoder_depth]:
            x = block(x)
        return x

    def _decode(self, x: Tensor, cond: Tensor, spec: Tensor, length: int) -> Tensor:
        x = self.norm(self._film_blocks(x, cond, self.encoder_depth))
        return self.stft.inverse(self.mask(x) * spec, length)

    def forward(self, mixture: Tensor, query: Tensor, negative: Tensor | None = None) -> Tensor:
        length = mixture.shape[-1]
        spec = self.stft(mixture)
        return self._decode(self._encode(spec), self._condition(query, negative), spec, length)

    def separate_many(
        self, mixture: Tensor, queries: Tensor, negatives: Tensor | None = None
    ) -> Tensor:
        if self.encoder_depth == 0:
            return super().separate_many(mixture, queries, negatives)
        b, k, length = mixture.shape[0], queries.shape[0], mixture.shape[-1]
        spec = self.stft(mixture)
        encoded = self._encode(spec).repeat_interleave(k, dim=0)
        cond = self._condition(queries, negatives).repeat(b, 1)
        out = self._decode(encoded, cond, spec.repeat_interleave(k, dim=0), length)
        return rearrange(out, "(b k) n -> b k n", k=k)
