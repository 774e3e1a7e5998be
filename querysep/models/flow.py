"""Latent flow-matching separator: a DiT generates the target in a frozen autoencoder's latent
space, conditioned on the mixture latent and the query.

    mixture -> autoencoder.encode -> z_mix ------------------------------.
    noise ~ N(0, I) --[ODE: DiT(cat(x_sigma, z_mix); sigma, query)]--> z_target (+ z_rest, joint)
          -> autoencoder.decode -> target (rest: decoded, or mixture - target)
          -> "project": mask |T|^2 / (|T|^2 + |R|^2) on the mixture STFT, mixture phase
             "raw":     the decoded target as generated

A generative separator fills in what a mask cannot (overlapping sources), the projection keeps
the result faithful to the mixture. Training is rectified flow in diffusers' sigma convention
(`x_sigma = (1 - sigma) x0 + sigma noise`, velocity `noise - x0`), with optional condition
dropout for classifier-free guidance and a SplitMeanFlow average-velocity objective so one or
two network evaluations suffice at inference.

Shapes: b batch, t samples, d latent channels, f latent frames.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from querysep.dsp import STFT
from querysep.errors import ConfigError
from querysep.latent import build_autoencoder
from querysep.latent.sampler import METHODS, VelocityFn, sample
from querysep.models import register_family
from querysep.models.base import SeparatorModel
from querysep.nn.dit import DiT, TimeEmbedding

DEFAULTS: dict[str, Any] = {
    # latent space: {type: mdct | oobleck | dac, ...}; see querysep.latent
    "autoencoder": {"type": "mdct", "hop": 256},
    "latent_scale": 1.0,  # latents are divided by this, so the flow sees roughly unit variance
    "predict": "target",  # target (rest = mixture - target), or joint: target and rest latents
    # velocity network
    "dim": 256,
    "depth": 6,
    "heads": 4,
    "dim_head": 64,
    "ff_mult": 4,
    "negative": True,  # condition on a negative query too
    # training
    "cond_dropout": 0.1,  # share of items trained with the null query (guidance needs it)
    "sigma_sampling": "logit_normal",  # or uniform
    "logit_mean": 0.0,
    "logit_std": 1.0,
    "meanflow_ratio": 0.0,  # share of items trained on average velocities (few-step sampling)
    # their intervals [r, t]: "uniform" takes t = 1 for a quarter of them (where every sampling
    # run starts), else t uniform, and r uniform below t, so the long jumps of 1-4 step sampling
    # are trained; "pair" sorts two sigma draws (short intervals around the middle: 4 steps
    # then measured 1.3 dB SI-SDRi below 32, against 0.1 dB with "uniform"; bench/README.md)
    "meanflow_intervals": "uniform",
    # sampling defaults, each overridable per call
    "steps": 8,
    "guidance": 1.0,  # 1: off (conditional only), 0: unconditional, > 1: extrapolate
    "shift": 1.0,
    "sampler": "euler",  # euler | midpoint | heun
    "output": "project",  # project | raw
    "project_n_fft": 2048,
    "project_hop": 512,
}
OUTPUTS = ("project", "raw")
MAX_DEPTH = 128
_POSITIVE_INTS = (
    "dim",
    "depth",
    "heads",
    "dim_head",
    "ff_mult",
    "steps",
    "project_n_fft",
    "project_hop",
)


@register_family
class FlowSeparator(SeparatorModel):
    """Query-conditioned rectified-flow separator in a frozen autoencoder's latent space."""

    family = "flow"

    @classmethod
    def builds_offline(cls, config: dict[str, Any]) -> bool:
        autoencoder = config.get("autoencoder")
        return not (isinstance(autoencoder, dict) and autoencoder.get("hub_id"))

    accepts_negative = True
    sampling_options = ("steps", "guidance", "shift", "generator")

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        c = self.merge_defaults(config, DEFAULTS)
        _validate(c)
        self.accepts_negative = bool(c["negative"])
        self.joint = c["predict"] == "joint"
        self.latent_scale = float(c["latent_scale"])
        self.autoencoder = build_autoencoder(c["autoencoder"], self.sample_rate)
        d = self.autoencoder.latent_dim
        self.out_channels = d * (2 if self.joint else 1)
        cond_dim = c["dim"]
        self.net = DiT(
            self.out_channels + d,
            self.out_channels,
            cond_dim,
            dim=c["dim"],
            depth=c["depth"],
            heads=c["heads"],
            dim_head=c["dim_head"],
            ff_mult=c["ff_mult"],
        )
        self.time_embed = TimeEmbedding(cond_dim)
        # Only average-velocity models see the step length; plain flow models need no input
        # that is always zero.
        self.interval_embed = TimeEmbedding(cond_dim) if c["meanflow_ratio"] > 0 else None
        self.query_proj = nn.Linear(self.query_dim, cond_dim)
        # No bias: an all-zero negative (what the Separator sends for "none") adds nothing.
        self.negative_proj = (
            nn.Linear(self.query_dim, cond_dim, bias=False) if self.accepts_negative else None
        )
        # The learned "no query" embedding, trained by condition dropout, for guidance.
        self.null_query = nn.Parameter(torch.randn(self.query_dim) / math.sqrt(self.query_dim))
        self.stft = STFT(c["project_n_fft"], c["project_hop"])

    def train(self, mode: bool = True) -> FlowSeparator:
        super().train(mode)
        self.autoencoder.eval()  # frozen: never in training mode
        return self

    # -- latents --------------------------------------------------------------------------
    def encode_latents(self, audio: Tensor) -> Tensor:
        """Mono audio [b, t] -> scaled latents [b, d, f]: what the flow runs on, and what a
        latent cache stores. A stereo autoencoder gets the mono signal on both channels."""
        x = repeat(audio, "b t -> b c t", c=self.autoencoder.channels)
        with torch.no_grad():
            return self.autoencoder.encode(x) / self.latent_scale

    def decode_latents(self, latents: Tensor, length: int) -> Tensor:
        """Scaled latents [b, d, f] -> mono audio [b, length] (channels averaged)."""
        with torch.no_grad():
            audio = self.autoencoder.decode(latents * self.latent_scale, length)
        return audio.float().mean(dim=1)

    def latent_signature(self) -> dict[str, Any]:
        """What a latent cache must match to be reused by this model."""
        return {
            "autoencoder": self.hparams["autoencoder"],
            "latent_scale": self.latent_scale,
            "sample_rate": self.sample_rate,
            "latent_dim": self.autoencoder.latent_dim,
            "hop": self.autoencoder.hop,
        }

    # -- the velocity network -------------------------------------------------------------
    def velocity(
        self,
        x: Tensor,
        mixture_latent: Tensor,
        sigma: Tensor,
        interval: Tensor,
        query: Tensor,
        negative: Tensor | None,
    ) -> Tensor:
        """Velocity (mean velocity over `interval` below `sigma` for average-velocity models)
        at noisy latents x [b, c, f] given the mixture latent [b, d, f]; sigma, interval [b]."""
        cond = self.time_embed(sigma) + self.query_proj(query)
        if self.interval_embed is not None:
            cond = cond + self.interval_embed(interval)
        if self.negative_proj is not None:
            # zeros for "no negative": adds nothing, but keeps every parameter in the graph
            # (DDP insists on that)
            cond = cond + self.negative_proj(
                negative if negative is not None else torch.zeros_like(query)
            )
        return self.net(torch.cat([x.to(mixture_latent.dtype), mixture_latent], dim=1), cond)

    def _null(self, like: Tensor) -> Tensor:
        return self.null_query.to(like.dtype).expand_as(like)

    def _guided(
        self, mixture_latent: Tensor, query: Tensor, negative: Tensor | None, guidance: float
    ) -> VelocityFn:
        """Classifier-free guidance: v_null + w (v_query - v_null), both halves in one batch."""
        if guidance == 1.0:
            return lambda x, s, h: self.velocity(x, mixture_latent, s, h, query, negative)
        queries = torch.cat([query, self._null(query)])
        negatives = (
            torch.cat([negative, torch.zeros_like(negative)]) if negative is not None else None
        )
        mixture2 = torch.cat([mixture_latent, mixture_latent])

        def fn(x: Tensor, sigma: Tensor, interval: Tensor) -> Tensor:
            two = lambda t: torch.cat([t, t])  # noqa: E731
            v = self.velocity(two(x), mixture2, two(sigma), two(interval), queries, negatives)
            cond, uncond = v.float().chunk(2)
            return uncond + guidance * (cond - uncond)

        return fn

    # -- separation -----------------------------------------------------------------------
    def forward(
        self, mixture: Tensor, query: Tensor, negative: Tensor | None = None, **options: Any
    ) -> Tensor:
        """mixture [b, t], query [b, D], negative [b, D] or None -> target [b, t].

        Options: steps, guidance, shift, sampler, output ("project" | "raw"), generator.
        """
        return self.generate(mixture, query, negative, **options)[0]

    def separate_many(
        self, mixture: Tensor, queries: Tensor, negatives: Tensor | None = None, **options: Any
    ) -> Tensor:
        """Encodes each mixture once and samples every query from that encoding."""
        b, k = mixture.shape[0], queries.shape[0]
        latent = self.encode_latents(mixture).repeat_interleave(k, dim=0)
        target, _ = self._generate(
            mixture.repeat_interleave(k, dim=0),
            latent,
            queries.repeat(b, 1),
            negatives.repeat(b, 1) if negatives is not None else None,
            **options,
        )
        return rearrange(target, "(b k) t -> b k t", k=k)

    def generate(
        self, mixture: Tensor, query: Tensor, negative: Tensor | None = None, **options: Any
    ) -> tuple[Tensor, Tensor]:
        """mixture [b, t] -> (target, rest), each [b, t]. In "project" mode they sum to the
        mixture; in "raw" mode rest is the generated rest (joint) or mixture - target."""
        return self._generate(mixture, self.encode_latents(mixture), query, negative, **options)

    def _generate(
        self,
        mixture: Tensor,
        mixture_latent: Tensor,
        query: Tensor,
        negative: Tensor | None,
        *,
        steps: int | None = None,
        guidance: float | None = None,
        shift: float | None = None,
        sampler: str | None = None,
        output: str | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        c = self.hparams
        output = c["output"] if output is None else output
        if output not in OUTPUTS:
            raise ConfigError(f"flow: output is project or raw, not {output!r}")
        guidance = float(c["guidance"] if guidance is None else guidance)
        b, _, frames = mixture_latent.shape
        noise = _randn((b, self.out_channels, frames), generator, mixture_latent.device)
        x0 = sample(
            self._guided(mixture_latent, query, negative, guidance),
            noise,
            steps=c["steps"] if steps is None else steps,
            shift=float(c["shift"] if shift is None else shift),
            method=c["sampler"] if sampler is None else sampler,
            average=self.interval_embed is not None,
        )
        length = mixture.shape[-1]
        if self.joint:
            target_latent, rest_latent = x0.chunk(2, dim=1)
            target = self.decode_latents(target_latent, length)
            rest = self.decode_latents(rest_latent, length)
        else:
            target = self.decode_latents(x0, length)
            rest = mixture.float() - target
        if output == "raw":
            return target, rest
        return self.project(mixture, target, rest)

    def project(self, mixture: Tensor, target: Tensor, rest: Tensor) -> tuple[Tensor, Tensor]:
        """A mask |S|^2 / (|S|^2 + |R|^2) from the generated target S and rest R, applied to
        the mixture STFT with the mixture's phase: the output cannot contain anything the
        mixture lacks, and target + rest == mixture."""
        length = mixture.shape[-1]
        spec = self.stft(mixture)
        target_power = self.stft(target).abs().square()
        rest_power = self.stft(rest).abs().square()
        mask = target_power / (target_power + rest_power).clamp_min(1e-10)
        return (
            self.stft.inverse(mask * spec, length),
            self.stft.inverse((1 - mask) * spec, length),
        )

    # -- training -------------------------------------------------------------------------
    def training_loss(
        self,
        mixture: Tensor | None,
        target: Tensor | None,
        query: Tensor,
        negative: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        latents: tuple[Tensor, ...] | None = None,
    ) -> dict[str, Tensor]:
        """Rectified-flow loss on one batch: mixture, target [b, t], query [b, D].

        `latents` = (mixture, target[, rest]) scaled latents from `encode_latents` (a cache)
        skips the autoencoder; joint models need the rest latent too. Returns "loss" plus the
        flow and average-velocity parts (mean squared velocity errors) for logging.
        """
        c = self.hparams
        x0, mixture_latent = self._training_latents(mixture, target, latents)
        b, device = x0.shape[0], x0.device
        noise = _randn(tuple(x0.shape), generator, device)
        sigma = self._sample_sigma(b, generator, device)
        upper, lower = self._sample_interval(b, generator, device)
        mean_flow = _rand(b, generator, device) < c["meanflow_ratio"]
        sigma_t = torch.where(mean_flow, upper, sigma)
        sigma_r = torch.where(mean_flow, lower, sigma)
        keep = _rand(b, generator, device) >= c["cond_dropout"]
        query = torch.where(keep[:, None], query, self._null(query))
        if negative is not None:
            negative = negative * keep[:, None].to(negative.dtype)
        s = sigma_t[:, None, None]
        x_t = (1 - s) * x0 + s * noise
        velocity_target = noise - x0
        if bool(mean_flow.any()):
            velocity_target = velocity_target.clone()
            velocity_target[mean_flow] = self._split_target(
                x_t[mean_flow],
                mixture_latent[mean_flow],
                sigma_t[mean_flow],
                sigma_r[mean_flow],
                query[mean_flow],
                negative[mean_flow] if negative is not None else None,
                generator,
            )
        pred = self.velocity(x_t, mixture_latent, sigma_t, sigma_t - sigma_r, query, negative)
        err = (pred.float() - velocity_target.float()).square().mean(dim=(1, 2))
        parts = {"loss": err.mean(), "flow_mse": _masked_mean(err.detach(), ~mean_flow)}
        if c["meanflow_ratio"] > 0:
            parts["meanflow_mse"] = _masked_mean(err.detach(), mean_flow)
        return parts

    def _training_latents(
        self, mixture: Tensor | None, target: Tensor | None, latents: tuple[Tensor, ...] | None
    ) -> tuple[Tensor, Tensor]:
        """(x0, mixture latent): x0 is the target latent, with the rest latent stacked on
        channels for joint models. One autoencoder call encodes all of them."""
        if latents is None:
            if mixture is None or target is None:
                raise ValueError("training_loss needs mixture and target audio, or latents=")
            parts = [mixture, target, mixture - target] if self.joint else [mixture, target]
            encoded = self.encode_latents(torch.cat(parts)).chunk(len(parts))
        else:
            encoded = tuple(latents)
            if len(encoded) != (3 if self.joint else 2):
                raise ValueError(
                    "latents= takes (mixture, target, rest) for joint models, "
                    "(mixture, target) otherwise"
                )
        mixture_latent, *sources = encoded
        return torch.cat(sources, dim=1), mixture_latent

    def _sample_sigma(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        c = self.hparams
        if c["sigma_sampling"] == "uniform":
            return _rand(n, generator, device)
        return torch.sigmoid(c["logit_mean"] + c["logit_std"] * _randn((n,), generator, device))

    def _sample_interval(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """(sigma_t, sigma_r), sigma_t >= sigma_r: the intervals average velocities are
        trained on."""
        if self.hparams["meanflow_intervals"] == "pair":
            a = self._sample_sigma(n, generator, device)
            b = self._sample_sigma(n, generator, device)
            return torch.maximum(a, b), torch.minimum(a, b)
        start = _rand(n, generator, device) < 0.25
        upper = torch.where(start, torch.ones(n, device=device), _rand(n, generator, device))
        return upper, upper * _rand(n, generator, device)

    @torch.no_grad()
    def _split_target(
        self,
        x_t: Tensor,
        mixture_latent: Tensor,
        sigma_t: Tensor,
        sigma_r: Tensor,
        query: Tensor,
        negative: Tensor | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        """SplitMeanFlow target for the mean velocity over [sigma_r, sigma_t]: split the
        interval at sigma_s, step to sigma_s with the model's own mean velocity, and combine
        (t - r) u(t, r) = (t - s) u(t, s) + (s - r) u(s, r). No Jacobian-vector product."""
        lam = _rand(x_t.shape[0], generator, x_t.device)
        sigma_s = sigma_r + lam * (sigma_t - sigma_r)
        u_ts = self.velocity(x_t, mixture_latent, sigma_t, sigma_t - sigma_s, query, negative)
        x_s = x_t - (sigma_t - sigma_s)[:, None, None] * u_ts.float()
        u_sr = self.velocity(x_s, mixture_latent, sigma_s, sigma_s - sigma_r, query, negative)
        lam = lam[:, None, None]
        return (1 - lam) * u_ts.float() + lam * u_sr.float()


def _validate(c: dict[str, Any]) -> None:
    for key in _POSITIVE_INTS:
        if not isinstance(c[key], int) or isinstance(c[key], bool) or c[key] < 1:
            raise ConfigError(f"flow: {key} must be a positive integer, got {c[key]!r}")
    if c["depth"] > MAX_DEPTH:  # blocks are Python objects, slow to build even on meta
        raise ConfigError(f"flow: depth must be at most {MAX_DEPTH}, got {c['depth']}")
    if c["dim_head"] % 2:
        raise ConfigError("flow: dim_head must be even (rotary embedding)")
    if c["project_hop"] > c["project_n_fft"]:
        raise ConfigError("flow: project_hop must not exceed project_n_fft")
    choices = {"predict": ("joint", "target"), "sigma_sampling": ("logit_normal", "uniform"),
               "meanflow_intervals": ("pair", "uniform"), "sampler": METHODS,
               "output": OUTPUTS}  # fmt: skip
    for key, allowed in choices.items():
        if c[key] not in allowed:
            raise ConfigError(f"flow: {key} is one of {', '.join(allowed)}, got {c[key]!r}")
    ranges = {"cond_dropout": (0.0, 0.99), "meanflow_ratio": (0.0, 1.0), "guidance": (0.0, 1e3),
              "logit_std": (1e-3, 10.0), "logit_mean": (-10.0, 10.0)}  # fmt: skip
    for key, (lo, hi) in ranges.items():
        if not isinstance(c[key], (int, float)) or not lo <= c[key] <= hi:
            raise ConfigError(f"flow: {key} must be in [{lo}, {hi}], got {c[key]!r}")
    for key in ("latent_scale", "shift"):
        if not isinstance(c[key], (int, float)) or not c[key] > 0:
            raise ConfigError(f"flow: {key} must be a positive number, got {c[key]!r}")
    if not isinstance(c["autoencoder"], dict):
        raise ConfigError("flow: autoencoder must be a mapping such as {type: mdct, hop: 256}")


def _randn(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Normal noise drawn on the generator's own device (a CPU generator can seed a GPU run)."""
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where).to(device)


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    where = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=where).to(device)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1)
