"""Query embeddings outside a separation: captions embedded one at a time, the files
`querysep data embed` writes, and the fold that turns a negative query into a positive one for
models that cannot take negatives natively. The trainer and inference share these, so training
and separation see the same numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from querysep.errors import DataError

#: How strongly a negative query is subtracted for models that cannot take one natively.
NEGATIVE_FOLD = 0.5


def fold_negative(positives: Tensor, negatives: Tensor) -> Tensor:
    """`normalize(positive - NEGATIVE_FOLD * negative)`: "this, but not that" in one vector."""
    return torch.nn.functional.normalize(positives - NEGATIVE_FOLD * negatives, dim=-1)


def embed_caption(encoder: Any, caption: str) -> Tensor:
    """One caption embedded alone (on the CPU): in a batch, padding shifts the numbers slightly,
    so this is how both `data embed` and the trainer compute them, and they agree exactly."""
    return encoder.embed_text([caption])[0].cpu()


def save_embeddings(path: str | Path, captions: list[str], embeddings: Tensor) -> None:
    from safetensors.torch import save_file

    from querysep.files import atomic_write

    metadata = {"captions": json.dumps(captions)}
    tensors = {"embeddings": embeddings.contiguous()}
    atomic_write(Path(path), lambda p: save_file(tensors, str(p), metadata=metadata))


def load_embeddings(path: str | Path) -> dict[str, Tensor]:
    """caption -> embedding, from a file written by `querysep data embed`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"caption embeddings not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            captions = json.loads((f.metadata() or {})["captions"])
            emb = f.get_tensor("embeddings")
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise DataError(f"cannot read caption embeddings {path}: {exc}") from None
    if not isinstance(captions, list) or len(captions) != emb.shape[0]:
        raise DataError(f"{path}: the caption list and the embeddings do not match")
    return dict(zip(captions, emb, strict=True))
