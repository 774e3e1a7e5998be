"""The contract between separator families and the streaming engine."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from querysep.errors import ConfigError


class SeparatorModel(nn.Module):
    """A mono, query-conditioned separator at a fixed sample rate.

    Subclasses take their hyper-parameters as one plain dict (what the bundle's config.json
    stores) and implement `forward`. The engine folds channels and chunks into the batch, so a
    model only ever sees fixed-length mono chunks.
    """

    family: ClassVar[str] = ""
    #: Whether `forward` uses the `negative` embedding itself; otherwise the Separator folds a
    #: negative query into the positive embedding.
    accepts_negative: ClassVar[bool] = False
    #: Per-call keyword options `separate_many` takes (generative families: "steps",
    #: "guidance", "generator"). Deterministic mask models take none, and asking them for one
    #: is an error rather than a silently ignored setting.
    sampling_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        try:
            self.sample_rate = int(config["sample_rate"])
            self.query_dim = int(config["query_dim"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{self.family} config needs integer sample_rate and query_dim ({exc})"
            ) from None

    @classmethod
    def builds_offline(cls, config: dict[str, Any]) -> bool:
        """Whether building from `config` reads nothing from outside (no hub weights), so it
        can be built a second time on the meta device to check a bundle before allocating."""
        return True

    def merge_defaults(self, config: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
        """The family's hyper-parameters with defaults filled in; a misspelt key is an error,
        not something silently ignored."""
        unknown = set(config) - set(defaults) - {"sample_rate", "query_dim"}
        if unknown:
            names = sorted(map(str, unknown))
            more = f" (+{len(names) - 5} more)" if len(names) > 5 else ""
            raise ConfigError(f"{self.family}: unknown config keys {names[:5]}{more}")
        self.hparams = {**defaults, **config}
        return self.hparams

    def forward(self, mixture: Tensor, query: Tensor, negative: Tensor | None = None) -> Tensor:
        """mixture [B, T], query [B, D] (unit norm), negative [B, D] or None -> target [B, T]."""
        raise NotImplementedError

    def separate_many(
        self, mixture: Tensor, queries: Tensor, negatives: Tensor | None = None, **options: Any
    ) -> Tensor:
        """mixture [B, T], queries [K, D] -> targets [B, K, T].

        The default repeats the mixture per query; models that encode the mixture once and
        condition afterwards override this to share the encoding. `options` are the
        family's `sampling_options`, passed on to `forward`.
        """
        b, k = mixture.shape[0], queries.shape[0]
        mix = mixture.repeat_interleave(k, dim=0)
        q = queries.repeat(b, 1)
        neg = negatives.repeat(b, 1) if negatives is not None else None
        return self(mix, q, neg, **options).reshape(b, k, -1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
