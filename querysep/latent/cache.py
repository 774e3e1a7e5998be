"""Pre-computed latents: encode a corpus once with the frozen autoencoder, train many times.

A cache is a directory of safetensors shards (one tensor [channels, latent_dim, frames] per
clip, keyed by clip id) plus `index.json`, which maps ids to shards and records the model's
latent signature: latents from another autoencoder, scale or rate are refused, never mixed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from querysep import audio as qaudio
from querysep.errors import DataError
from querysep.files import atomic_write

INDEX = "index.json"


class LatentEncoder(Protocol):
    """What the cache needs from a model (FlowSeparator provides it)."""

    sample_rate: int

    def encode_latents(self, audio: Tensor) -> Tensor: ...

    def latent_signature(self) -> dict[str, Any]: ...


def write_latent_cache(
    model: LatentEncoder,
    items: Iterable[tuple[str, Any]],
    directory: str | Path,
    *,
    shard_size: int = 256,
) -> Path:
    """Encodes `(id, audio)` pairs into `directory`; audio is a path (read and resampled to the
    model's rate) or an array [t] / [channels, t] already at that rate. Channels are encoded
    separately: the separator is mono. Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index: dict[str, str] = {}
    shard: dict[str, Tensor] = {}

    def flush() -> None:
        if shard:
            name = f"latents-{len(set(index.values())):05d}.safetensors"
            _save(shard, directory / name)
            index.update(dict.fromkeys(shard, name))
            shard.clear()

    for key, audio in items:
        if key in index or key in shard:
            raise DataError(f"latent cache: duplicate id {key!r}")
        rows = torch.as_tensor(_as_audio(audio, model.sample_rate)).float()
        with torch.no_grad():
            shard[key] = model.encode_latents(rows).float().cpu().contiguous()
        if len(shard) >= shard_size:
            flush()
    flush()
    body = {"signature": model.latent_signature(), "items": index}
    atomic_write(directory / INDEX, lambda p: p.write_text(json.dumps(body, indent=1) + "\n"))
    return directory


class LatentCache(Mapping[str, Tensor]):
    """Read side: `cache[id]` -> latents [channels, latent_dim, frames], shards loaded lazily.

    With `model`, the cache must have been written by a model with the same latent signature.
    """

    def __init__(self, directory: str | Path, model: LatentEncoder | None = None):
        self.directory = Path(directory)
        path = self.directory / INDEX
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"not a latent cache: cannot read {path} ({exc})") from None
        self.signature: dict[str, Any] = body["signature"]
        self._items: dict[str, str] = body["items"]
        self._shards: dict[str, dict[str, Tensor]] = {}
        if model is not None and _normalized(model.latent_signature()) != self.signature:
            raise DataError(
                f"latent cache {self.directory} was written for {self.signature}, "
                f"this model needs {model.latent_signature()}: re-encode the corpus"
            )

    def __getitem__(self, key: str) -> Tensor:
        name = self._items[key]
        if name not in self._shards:
            from safetensors.torch import load_file

            self._shards[name] = load_file(str(self.directory / name))
        return self._shards[name][key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def _as_audio(audio: Any, sample_rate: int) -> np.ndarray:
    if isinstance(audio, (str, Path)):
        audio, _ = qaudio.load(audio, sample_rate)
    array = np.asarray(audio.detach().cpu() if isinstance(audio, Tensor) else audio, np.float32)
    return array[None] if array.ndim == 1 else array


def _save(tensors: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))


def _normalized(signature: dict[str, Any]) -> dict[str, Any]:
    """The signature as it reads back from JSON (tuples become lists and so on)."""
    return json.loads(json.dumps(signature))
