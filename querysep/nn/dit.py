"""A compact diffusion transformer (DiT) over a sequence of latent frames.

    x [b, c, f] -> linear -> [AdaLN-Zero block: RoPE self-attention, MLP] x depth
                -> AdaLN -> linear (zero-initialised) -> [b, c_out, f]

Conditioning is one vector per item (timestep + query embedding, summed by the caller) that
modulates every block through the shared FiLM (AdaLN) and a zero-initialised residual gate,
so a fresh network is the identity on its residual stream and predicts exactly zero.

Shapes: b batch, f latent frames, c channels, d model width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from querysep.nn.film import FiLM
from querysep.nn.rope import Rotary, rotate


def sinusoidal(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """[b] scalars -> [b, dim] sin/cos features (the transformer position code, for times)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class TimeEmbedding(nn.Module):
    """A flow time sigma in [0, 1] -> a conditioning vector, via sinusoids of 1000 sigma (the
    diffusers timestep scale, so the features span the same range as theirs)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, sigma: Tensor) -> Tensor:
        return self.mlp(sinusoidal(1000.0 * sigma, self.freq_dim).to(self.mlp[0].weight.dtype))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.q_norm = nn.RMSNorm(dim_head)  # QK-norm keeps attention logits bounded
        self.k_norm = nn.RMSNorm(dim_head)
        self.out = nn.Linear(heads * dim_head, dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h e) -> three b h n e", three=3, h=self.heads)
        q, k = rotate(self.q_norm(q), cos, sin), rotate(self.k_norm(k), cos, sin)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(rearrange(y, "b h n e -> b n (h e)"))


class DiTBlock(nn.Module):
    """Pre-norm transformer block with AdaLN-Zero: norm -> FiLM(cond) -> sublayer -> gate."""

    def __init__(self, dim: int, cond_dim: int, heads: int, dim_head: int, ff_mult: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.film1 = FiLM(cond_dim, dim)
        self.attn = SelfAttention(dim, heads, dim_head)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.film2 = FiLM(cond_dim, dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, dim * ff_mult),
            nn.GELU(approximate="tanh"),
            nn.Linear(dim * ff_mult, dim),
        )
        self.gates = nn.Linear(cond_dim, 2 * dim)
        nn.init.zeros_(self.gates.weight)
        nn.init.zeros_(self.gates.bias)

    def forward(self, x: Tensor, cond: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        gate_attn, gate_ff = rearrange(self.gates(cond), "b (two d) -> two b 1 d", two=2)
        x = x + gate_attn * self.attn(self.film1(self.norm1(x), cond), cos, sin)
        return x + gate_ff * self.ff(self.film2(self.norm2(x), cond))


class DiT(nn.Module):
    """Velocity network: latent frames [b, in_channels, f] + cond [b, cond_dim] ->
    [b, out_channels, f]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_dim: int,
        *,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        ff_mult: int,
    ):
        super().__init__()
        self.proj_in = nn.Linear(in_channels, dim)
        self.rotary = Rotary(dim_head)
        self.blocks = nn.ModuleList(
            DiTBlock(dim, cond_dim, heads, dim_head, ff_mult) for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False)
        self.film_out = FiLM(cond_dim, dim)
        self.proj_out = nn.Linear(dim, out_channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.proj_in(rearrange(x, "b c f -> b f c"))
        cos, sin = self.rotary(h.shape[1], h.device)
        cond = F.silu(cond)
        for block in self.blocks:
            h = block(h, cond, cos, sin)
        out = self.proj_out(self.film_out(self.norm_out(h), cond))
        return rearrange(out, "b f c -> b c f")
