"""The contract between latent autoencoders and the flow-matching separator.

An autoencoder maps audio [b, channels, t] at `sample_rate` to latents [b, latent_dim, frames]
(`hop` samples per frame) and back. `encode` pads to a hop multiple and `decode` trims to the
requested length, so callers never handle padding. Autoencoders are frozen: the separator
learns in their latent space, it never changes them.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from querysep.errors import ConfigError, ModelLoadError, first_line


class LatentAutoencoder(nn.Module):
    """A frozen waveform <-> latent map. Subclasses implement `_encode` / `_decode` on inputs
    whose length is a multiple of `hop`."""

    kind: ClassVar[str] = ""
    sample_rate: int
    channels: int
    latent_dim: int
    hop: int

    def __init__(self) -> None:
        super().__init__()
        self._persistent = True
        self.register_state_dict_post_hook(_drop_when_not_persistent)
        self.register_load_state_dict_pre_hook(_keep_when_absent)

    @property
    def persistent(self) -> bool:
        """False for weights fetched by hub id: they stay out of state dicts (bundles and
        checkpoints reference the hub instead of copying, and redistributing, the weights),
        and loading a state dict without them keeps the fetched ones."""
        return self._persistent

    def set_persistent(self, persistent: bool) -> None:
        self._persistent = bool(persistent)

    def freeze(self) -> LatentAutoencoder:
        self.requires_grad_(False)
        return self.eval()

    def padded_length(self, length: int) -> int:
        return -(-length // self.hop) * self.hop

    def encode(self, audio: Tensor) -> Tensor:
        """[b, channels, t] -> [b, latent_dim, frames], zero-padding t to a hop multiple."""
        pad = self.padded_length(audio.shape[-1]) - audio.shape[-1]
        return self._encode(torch.nn.functional.pad(audio, (0, pad)))

    def decode(self, latent: Tensor, length: int) -> Tensor:
        """[b, latent_dim, frames] -> [b, channels, length], trimmed (or zero-padded)."""
        audio = self._decode(latent)
        if audio.shape[-1] >= length:
            return audio[..., :length]
        return torch.nn.functional.pad(audio, (0, length - audio.shape[-1]))

    def _encode(self, audio: Tensor) -> Tensor:
        raise NotImplementedError

    def _decode(self, latent: Tensor) -> Tensor:
        raise NotImplementedError


def _drop_when_not_persistent(
    module: LatentAutoencoder, state: dict[str, Any], prefix: str, metadata: Any
) -> None:
    if not module.persistent:
        for key in [k for k in state if k.startswith(prefix)]:
            del state[key]


def _keep_when_absent(
    module: LatentAutoencoder, state: dict[str, Any], prefix: str, *args: Any
) -> None:
    if module.persistent:
        return
    module._persistent = True  # read our own tensors past the state-dict filter
    try:
        own = module.state_dict(prefix=prefix)
    finally:
        module._persistent = False
    for key, value in own.items():
        state.setdefault(key, value)


def load_from_hub(kind: str, loader: Any, hub_id: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained(hub_id, ...)` with a one-line ModelLoadError on failure."""
    try:
        with warnings.catch_warnings():  # diffusers passes an argument huggingface_hub retired
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            return loader.from_pretrained(hub_id, **{k: v for k, v in kwargs.items() if v})
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the {kind} autoencoder {hub_id!r} from the Hugging Face Hub "
            f"(offline and not cached, or a gated repo whose licence is not accepted?): "
            f"{first_line(exc)}"
        ) from None


def check_spec(kind: str, spec: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(spec) - allowed - {"type"}
    if unknown:
        raise ConfigError(f"{kind} autoencoder: unknown keys {sorted(unknown)}")
    if not (spec.get("hub_id") or spec.get("config") is not None) and "hub_id" in allowed:
        raise ConfigError(f"{kind} autoencoder needs hub_id: ... or config: {{...}}")
