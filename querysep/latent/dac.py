"""Descript Audio Codec (transformers `DacModel`) as a continuous latent space: the encoder's
output before residual vector quantisation, decoded by the codec's decoder.

Weights: `descript/dac_44khz` (also `dac_24khz`, `dac_16khz`), MIT licence. 44.1 kHz mono,
1024 latent channels at 86 Hz (hop 512). `config: {...}` (DacConfig fields) builds a random
codec instead (tiny ones for tests).
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from querysep.errors import ConfigError
from querysep.latent.base import LatentAutoencoder, check_spec, load_from_hub


class DacAutoencoder(LatentAutoencoder):
    kind = "dac"

    def __init__(self, spec: dict[str, Any], sample_rate: int):
        super().__init__()
        check_spec(self.kind, spec, {"hub_id", "revision", "config"})
        from transformers import DacConfig, DacModel

        if spec.get("hub_id"):
            self.model = load_from_hub(
                self.kind, DacModel, spec["hub_id"], revision=spec.get("revision")
            )
            self.set_persistent(False)
        else:
            try:
                self.model = DacModel(DacConfig(**spec["config"]))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"dac autoencoder config: {exc}") from None
        cfg = self.model.config
        self.sample_rate = int(cfg.sampling_rate)
        self.channels = 1
        self.latent_dim = int(cfg.hidden_size)
        self.hop = math.prod(cfg.downsampling_ratios)
        if cfg.hop_length != self.hop:
            raise ConfigError(
                f"dac autoencoder: hop_length {cfg.hop_length} differs from the product of "
                f"downsampling_ratios ({self.hop})"
            )

    def _encode(self, audio: Tensor) -> Tensor:
        return self.model.encoder(audio)

    def _decode(self, latent: Tensor) -> Tensor:
        return self.model.decoder(latent)
