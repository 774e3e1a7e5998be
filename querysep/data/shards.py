"""Streaming mixtures from WebDataset tar shards, for corpora too large to index locally.

A shard holds, per clip, the audio (`.flac`, `.wav`, `.ogg` or `.mp3`) and a `.json` with the
manifest fields (captions, labels, source). Shards are read in order of a seeded shuffle,
split between ranks and loader workers, decoded into a pool, and mixtures are drawn from the
pool with the same rules as the manifest path (`mixing.assemble`). URLs may be local paths,
`http(s)://` or `pipe:` commands, with brace patterns (`train-{000000..000127}.tar`).
Resuming a streamed run restarts the stream from a new seed: the weights continue exactly,
the data order does not (manifest-based runs resume exactly).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from querysep.data.manifest import Entry, Manifest
from querysep.data.mixing import MixingConfig, _collides, assemble, crop, fit_clip
from querysep.errors import DataError

AUDIO_KEYS = ("flac", "wav", "ogg", "mp3")


class ShardMixingStream(IterableDataset):
    def __init__(
        self,
        urls: str | list[str],
        config: MixingConfig,
        *,
        seed: int = 0,
        pool_size: int = 512,
        min_pool: int = 16,
        repeat: bool = True,
    ) -> None:
        self.urls = urls
        self.config = config
        self.seed = seed
        self.pool_size = pool_size
        self.min_pool = min_pool
        self.frames = round(config.seconds * config.sample_rate)
        self.epoch = 0
        self.repeat = repeat  # training streams cycle over the shards until the run stops

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:

        worker = torch.utils.data.get_worker_info()
        rank = int(os.environ.get("RANK", 0))
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker.id if worker else 0])
        pool: list[tuple[Entry, np.ndarray]] = []
        for sample in self._samples():
            decoded = self._decode(sample)
            if decoded is None:
                continue
            if len(pool) < self.pool_size:
                pool.append(decoded)
            else:  # reservoir-style replacement keeps the pool a mix of recent shards
                pool[int(rng.integers(len(pool)))] = decoded
            if len(pool) >= self.min_pool:
                item = self._item(pool, rng)
                if item is not None:
                    yield item

    def _samples(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        count = len(wds.shardlists.expand_urls(self.urls))
        passes = 0
        while True:
            yield from wds.WebDataset(
                self.urls,
                shardshuffle=count,
                seed=self.seed + self.epoch + 7919 * passes,
                nodesplitter=wds.split_by_node,
                workersplitter=wds.split_by_worker,
                empty_check=False,
            )
            passes += 1
            if not self.repeat:
                return

    def _decode(self, sample: dict[str, Any]) -> tuple[Entry, np.ndarray] | None:
        import soundfile as sf

        key = sample.get("__key__", "?")
        audio_key = next((k for k in AUDIO_KEYS if k in sample), None)
        try:
            meta = json.loads(sample["json"]) if "json" in sample else {}
            captions = meta.get("captions") or [sample["txt"].decode().strip()]
            if audio_key is None:
                raise ValueError("no audio member")
            data, rate = sf.read(io.BytesIO(sample[audio_key]), dtype="float32", always_2d=True)
            if not np.isfinite(data).all() or not len(data):
                raise ValueError("empty or non-finite audio")
        except (KeyError, ValueError, RuntimeError, sf.LibsndfileError) as exc:
            warnings.warn(f"skipping shard sample {key}: {exc}", stacklevel=2)
            return None
        entry = Entry(
            audio=str(key),
            captions=tuple(captions),
            labels=tuple(meta.get("labels", ())),
            id=str(key),
            source=str(meta.get("source", "")),
        )
        return entry, fit_clip(data.T, rate, self.config)

    def _item(
        self, pool: list[tuple[Entry, np.ndarray]], rng: np.random.Generator
    ) -> dict[str, Any] | None:
        cfg = self.config
        t_entry, t_clip = pool[int(rng.integers(len(pool)))]
        count = int(rng.integers(cfg.interferers[0], cfg.interferers[1] + 1))
        candidates = [p for p in pool if not _collides(t_entry, p[0])]
        if not candidates:
            return None
        picks = [candidates[int(rng.integers(len(candidates)))] for _ in range(count)]
        crops = [(e, crop(c, self.frames, rng)) for e, c in picks]
        target = crop(t_clip, self.frames, rng)

        def example() -> np.ndarray:
            same = [c for e, c in pool if set(e.labels) & set(t_entry.labels) and e is not t_entry]
            clip = same[int(rng.integers(len(same)))] if same else t_clip
            return crop(clip, self.frames, rng).mean(axis=0).astype(np.float32)

        return assemble(cfg, rng, t_entry, target, crops, example)


def write_shards(manifest: Manifest, outdir: str | Path, shard_size: int = 1000) -> list[Path]:
    """Packs a manifest's clips (original bytes, no re-encoding) into tar shards."""
    import webdataset as wds

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    pattern = str(outdir / "shard-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as sink:
        for n, entry in enumerate(manifest.entries):
            path = manifest.path_of(entry)
            suffix = path.suffix.lower().lstrip(".")
            if suffix not in AUDIO_KEYS:
                raise DataError(f"{path}: shards take {', '.join(AUDIO_KEYS)} files")
            meta = {"captions": list(entry.captions), "labels": list(entry.labels),
                    "source": entry.source, "id": entry.id}  # fmt: skip
            sink.write({"__key__": f"{n:09d}", suffix: path.read_bytes(), "json": json.dumps(meta)})
    return sorted(outdir.glob("shard-*.tar"))
