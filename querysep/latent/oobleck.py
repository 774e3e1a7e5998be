"""Stable Audio Open's VAE ("Oobleck", diffusers `AutoencoderOobleck`): 44.1 kHz stereo,
64 latent channels at 21.5 Hz (hop 2048).

Weights: `stabilityai/stable-audio-open-1.0`, subfolder `vae`, under the Stability AI
Community License (gated on the Hub: accept it and log in before the first load). Loaded by
hub id, they are referenced by bundles, not copied into them. `config: {...}` builds a random
VAE instead (tiny ones for tests).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from torch import Tensor

from querysep.errors import ConfigError
from querysep.latent.base import LatentAutoencoder, check_spec, load_from_hub


class OobleckAutoencoder(LatentAutoencoder):
    kind = "oobleck"

    def __init__(self, spec: dict[str, Any], sample_rate: int):
        super().__init__()
        check_spec(self.kind, spec, {"hub_id", "subfolder", "revision", "config"})
        from diffusers import AutoencoderOobleck

        with warnings.catch_warnings():  # diffusers still builds it with the old weight_norm
            warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
            if spec.get("hub_id"):
                self.model = load_from_hub(
                    self.kind,
                    AutoencoderOobleck,
                    spec["hub_id"],
                    subfolder=spec.get("subfolder"),
                    revision=spec.get("revision"),
                )
                self.set_persistent(False)
            else:
                try:
                    self.model = AutoencoderOobleck(**spec["config"])
                except TypeError as exc:
                    raise ConfigError(f"oobleck autoencoder config: {exc}") from None
        cfg = self.model.config
        self.sample_rate = int(cfg.sampling_rate)
        self.channels = int(cfg.audio_channels)
        self.latent_dim = int(cfg.decoder_input_channels)
        self.hop = math.prod(cfg.downsampling_ratios)
        if cfg.encoder_hidden_size != 2 * self.latent_dim:
            raise ConfigError(
                "oobleck autoencoder: encoder_hidden_size must be 2 x decoder_input_channels "
                "(the encoder emits mean and scale)"
            )

    def _encode(self, audio: Tensor) -> Tensor:
        # The posterior mean: deterministic latents, so cached and live encodings agree.
        return self.model.encode(audio).latent_dist.mean

    def _decode(self, latent: Tensor) -> Tensor:
        return self.model.decode(latent).sample
