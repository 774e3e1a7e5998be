"""Feature-wise linear modulation from a query embedding: the one FiLM every model uses."""

from __future__ import annotations

from torch import Tensor, nn


class FiLM(nn.Module):
    """`x * (1 + gamma(c)) + beta(c)` along the last axis of `x`.

    The projection starts at zero so a freshly added FiLM is the identity: conditioning can be
    bolted onto a pretrained query-agnostic network without disturbing it. `scale=False` gives
    the additive-only form (beta only) that AudioSep's ResUNet uses.
    """

    def __init__(
        self,
        cond_dim: int,
        dim: int,
        *,
        hidden: int | None = None,
        scale: bool = True,
        channel_axis: int = -1,
    ):
        super().__init__()
        self.dim = dim
        self.scale = scale
        self.channel_axis = channel_axis  # -1: channels last (transformers); 1: [B, C, ...] (convs)
        out = dim * (2 if scale else 1)
        if hidden:
            self.proj: nn.Module = nn.Sequential(
                nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, out)
            )
        else:
            self.proj = nn.Linear(cond_dim, out)
        last = self.proj[-1] if isinstance(self.proj, nn.Sequential) else self.proj
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x: [B, ..., dim] (or [B, dim, ...] with channel_axis=1); cond: [B, cond_dim]."""
        params = self.proj(cond).to(x.dtype)
        ones = [1] * (x.ndim - 2)
        if self.channel_axis == 1:
            params = params.reshape(params.shape[0], params.shape[-1], *ones)
        else:
            params = params.reshape(params.shape[0], *ones, params.shape[-1])
        if not self.scale:
            return x + params
        gamma, beta = params.chunk(2, dim=self.channel_axis)
        return x * (1 + gamma) + beta
