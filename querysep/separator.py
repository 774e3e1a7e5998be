"""`Separator`: a separator model + its query encoder, and how a recording goes through them:
queries embedded once, overlap-added chunks (`apply.py`), target and residual written together.
Bundles on disk are `bundle.py`; names are resolved by `pretrained.py`."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from querysep import audio as qaudio
from querysep import bundle, pretrained
from querysep.apply import ChunkFn, ChunkPlan, Source, open_source, stream_separate
from querysep.config import (
    AUTO_ACCELERATOR_BATCH,
    load_config,
    normalize_config,
    validate_inference,
)
from querysep.errors import ModelLoadError, QueryError, QuerysepError, first_line
from querysep.models import SeparatorModel, build_model
from querysep.options import SAMPLER_SETTINGS, SeparationOptions
from querysep.query import ClapQueryEncoder, Query, as_queries
from querysep.query.embeddings import fold_negative
from querysep.query.parse import slug
from querysep.runtime import resolve_device, resolve_dtype


@dataclass
class SeparationResult:
    """What one query produced: `target` (what was asked for) and `residual` = mixture - target.

    Arrays are float32 [channels, frames] at the input's own sample rate and length.
    """

    target: np.ndarray
    residual: np.ndarray
    sample_rate: int
    query: Query
    #: File-name stem for `save`: the input file's stem, or "mixture" for arrays.
    stem: str = "mixture"

    def save(
        self,
        directory: str | Path,
        stem: str | None = None,
        *,
        format: str = "wav",
        subtype: str | None = None,
    ) -> tuple[Path, Path]:
        """Writes `<stem>_<query-slug>.<format>` and `..._residual.<format>` atomically."""
        stem = stem or self.stem
        target_path, residual_path = output_paths(directory, stem, self.query, format)
        for path in (target_path, residual_path):
            qaudio.refuse_overwrite(path, self.query.files)
        writers = [
            qaudio.AudioWriter(p, self.sample_rate, a.shape[0], subtype=subtype, deferred=True)
            for p, a in ((target_path, self.target), (residual_path, self.residual))
        ]
        try:
            for writer, audio in zip(writers, (self.target, self.residual), strict=True):
                with writer:
                    writer.write(audio)
        except BaseException:
            for writer in writers:
                writer.discard()
            raise
        qaudio.publish_together(writers)  # the pair appears together, or not at all
        return target_path, residual_path


def output_paths(
    directory: str | Path, stem: str, query: Query, format: str = "wav"
) -> tuple[Path, Path]:
    name = f"{stem}_{slug(query.label)}"
    directory = Path(directory)
    return directory / f"{name}.{format}", directory / f"{name}_residual.{format}"


class Separator:
    """A ready-to-use separator: `Separator.from_pretrained(path).separate(audio, "dog")`."""

    def __init__(
        self,
        model: SeparatorModel,
        config: dict[str, Any],
        query_encoder: ClapQueryEncoder | None = None,
    ) -> None:
        self.model = model.eval()
        self.config = config
        self._query_encoder = query_encoder
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self._compiled: Callable[..., Tensor] | None = None

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: str | Path | dict[str, Any], *, seed: int = 0) -> Separator:
        """A randomly initialised separator: the start of training, and offline test models."""
        cfg = load_config(config) if isinstance(config, (str, Path)) else normalize_config(config)
        qe_spec = dict(cfg["query_encoder"])
        encoder = None
        if qe_spec.get("tiny"):
            encoder = ClapQueryEncoder.tiny(seed)
            dim = encoder.dim
        elif qe_spec.get("path"):
            encoder = ClapQueryEncoder.from_pretrained(qe_spec["path"])
            dim = encoder.dim
        else:
            dim = int(qe_spec.get("dim", 512))  # hub encoder: loaded on first query
        cfg["query_encoder"] = {**qe_spec, "dim": dim}
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(seed)
            model = build_model(
                cfg["family"], {**cfg["model"], "sample_rate": cfg["sample_rate"], "query_dim": dim}
            )
        return cls(model, cfg, encoder)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = None,
        revision: str | None = None,
    ) -> Separator:
        """A registry name, a local bundle directory or a Hub repo id."""
        model, cfg, encoder = bundle.load(pretrained.locate(str(name_or_path), revision))
        return cls(model, cfg, encoder).to(device, dtype)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes the bundle (see `querysep.bundle`)."""
        encoder = None if "hub_id" in self.config["query_encoder"] else self.query_encoder
        return bundle.save(directory, self.model, self.config, encoder)

    # -- properties -----------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    @property
    def query_encoder(self) -> ClapQueryEncoder:
        if self._query_encoder is None:
            spec = self.config["query_encoder"]
            encoder = ClapQueryEncoder.from_pretrained(
                spec["hub_id"], revision=spec.get("revision")
            )
            if encoder.dim != self.model.query_dim:
                raise ModelLoadError(
                    f"query encoder {spec['hub_id']} gives {encoder.dim}-d embeddings, "
                    f"the separator expects {self.model.query_dim}"
                )
            self._query_encoder = encoder.to(self.device)
        return self._query_encoder

    def to(
        self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
    ) -> Separator:
        self.device = resolve_device(device if device is not None else self.device)
        self.dtype = resolve_dtype(dtype if dtype is not None else self.dtype, self.device)
        self.model.to(self.device)
        if self._query_encoder is not None:
            self._query_encoder.to(self.device)
        return self

    def compile(self) -> Separator:
        """Compiles the model's forward pass with `torch.compile` (fused kernels). It pays for
        itself on long runs: on a 2-core CPU band-split base runs about 1.8x faster, after a
        compilation of one to a few minutes on the first chunk (bench/README.md)."""
        try:
            self._compiled = torch.compile(self.model.separate_many)
        except Exception as exc:  # no compiler for this platform, an old torch
            raise QuerysepError(f"cannot compile the model: {first_line(exc)}") from None
        return self

    # -- queries --------------------------------------------------------------------------
    def embed_queries(self, queries: Sequence[Query]) -> tuple[Tensor, Tensor | None]:
        """Each query embedded once: positives [K, D], negatives [K, D] (zeros = none) or None."""
        pos, neg = [], []
        for q in queries:
            p, n = self.query_encoder.embed(q)
            pos.append(p)
            neg.append(n)
        positives = torch.stack(pos)
        if all(n is None for n in neg):
            return positives, None
        negatives = torch.stack(
            [n if n is not None else torch.zeros_like(positives[0]) for n in neg]
        )
        if getattr(self.model, "accepts_negative", False):
            return positives, negatives
        return fold_negative(positives, negatives), None

    def sampling_options(
        self, options: SeparationOptions | None = None, **settings: Any
    ) -> dict[str, Any]:
        """Checks sampler settings against what the model family takes; returns the model's
        keyword arguments. A seed becomes one generator for the whole run, so successive
        chunks draw successive noise and the same call gives the same output."""
        given = SeparationOptions.make(options, **settings).sampler()
        accepted = set(self.model.sampling_options)
        for key in given:
            if SAMPLER_SETTINGS[key][1] not in accepted:
                raise QueryError(
                    f"{key} applies to generative models; a {self.model.family} model "
                    "separates deterministically"
                )
        kwargs: dict[str, Any] = {k: v for k, v in given.items() if k != "seed"}
        if "seed" in given:
            kwargs["generator"] = torch.Generator(self.device).manual_seed(int(given["seed"]))
        return kwargs

    def _chunk_fn(
        self, positives: Tensor, negatives: Tensor | None, options: dict[str, Any] | None = None
    ) -> ChunkFn:
        device, dtype = self.device, self.dtype
        pos = positives.to(device)
        neg = negatives.to(device) if negatives is not None else None
        options = dict(options or {})
        k = int(options.pop("candidates", 1))

        @torch.inference_mode()
        def once(rows: Tensor) -> Tensor:
            with (
                torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32),
                warnings.catch_warnings(),
            ):
                # CPU autocast leaves norm weights in fp32; torch warns it takes the unfused path
                warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
                forward = self._compiled or self.model.separate_many
                return forward(rows.to(device), pos, neg, **options).float()

        if k == 1:
            return once

        def best_of_k(rows: Tensor) -> Tensor:
            # each call draws fresh noise (from the seeded generator when one is given)
            return self.best_candidate(torch.stack([once(rows) for _ in range(k)]), positives)

        return best_of_k

    def best_candidate(self, candidates: Tensor, positives: Tensor) -> Tensor:
        """candidates [N, B, K, T] -> [B, K, T]: per mixture and query, the candidate whose CLAP
        audio embedding has the highest cosine with the query embedding (the CLAPScore for a
        text query; for an audio example, the similarity to it). Silent candidates rank last."""
        n, b, k, t = candidates.shape
        waves = candidates.detach().float().cpu().reshape(n * b * k, t).numpy()
        scores = torch.full((n * b * k,), -2.0)
        audible = [i for i, w in enumerate(waves) if np.any(w)]
        if audible:
            emb = self.query_encoder.embed_audio([waves[i] for i in audible], self.sample_rate)
            query = positives.float().cpu().repeat(n * b, 1)[audible]
            scores[audible] = (emb * query).sum(dim=-1)
        best = scores.reshape(n, b, k).argmax(dim=0)  # [B, K]
        index = best[None, :, :, None].expand(1, b, k, t).to(candidates.device)
        return candidates.gather(0, index)[0]

    def plan(self, options: SeparationOptions | None = None) -> ChunkPlan:
        """The chunking a run uses: the model's defaults with `options` on top."""
        inference = (options or SeparationOptions()).chunking(self.config["inference"])
        validate_inference(inference, "separation settings")
        batch = inference["batch_size"]
        if batch == "auto":
            batch = 1 if self.device.type == "cpu" else AUTO_ACCELERATOR_BATCH
        return ChunkPlan.from_seconds(
            self.sample_rate, inference["chunk_seconds"], inference["overlap"], batch
        )

    def chunk_fn(
        self, queries: Sequence[Query], options: SeparationOptions | None = None
    ) -> ChunkFn:
        """rows [N, t] -> targets [N, K, t] for these queries: each embedded once."""
        sampler = self.sampling_options(options)
        return self._chunk_fn(*self.embed_queries(queries), sampler)

    # -- separation -----------------------------------------------------------------------
    def separate(
        self,
        audio: Any,
        query: Any,
        *,
        negative: Any = None,
        sample_rate: int | None = None,
        options: SeparationOptions | None = None,
        chunk_seconds: float | None = None,
        overlap: float | None = None,
        batch_size: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        shift: float | None = None,
        seed: int | None = None,
        candidates: int | None = None,
        progress: bool = False,
        stop_check: Callable[[], None] | None = None,
    ) -> SeparationResult | list[SeparationResult]:
        """Separate `audio` (a path, or an array / tensor with `sample_rate`) by `query`.

        `query` is text ("dog barking", "remove the traffic"), an `AudioQuery`, a `Query`, or
        a list of those: a list returns one result per query, all from one pass over the audio.
        Settings come as `options` (a `SeparationOptions`) or as keywords on top of it.
        `steps`, `guidance`, `shift` and `seed` set the sampler of generative (flow) models;
        `candidates=k` samples k targets per chunk and keeps the one whose CLAP audio embedding
        is closest to the query (best-of-k re-ranking by CLAPScore). `stop_check` runs before
        every forward pass and may raise to stop the run (a deadline, a cancel button).
        """
        opts = SeparationOptions.make(options, **_settings(locals()))
        self.sampling_options(opts)  # refuse sampler settings this family does not take
        queries, as_list = as_queries(query)
        queries = [q.with_negatives(negative) for q in queries]
        source = open_source(audio, sample_rate)
        targets = [np.zeros((source.channels, source.frames), np.float32) for _ in queries]
        residuals = [np.zeros_like(t) for t in targets]
        cursor = [0] * len(queries)

        def write(k: int, target: np.ndarray, residual: np.ndarray) -> None:
            n = target.shape[1]
            targets[k][:, cursor[k] : cursor[k] + n] = target
            residuals[k][:, cursor[k] : cursor[k] + n] = residual
            cursor[k] += n

        fn, plan = self.chunk_fn(queries, opts), self.plan(opts)
        self._stream(source, len(queries), write, fn, plan, progress, stop_check)
        results = [
            SeparationResult(*_orient(q, t, r), source.sample_rate, q, source.stem)
            for q, t, r in zip(queries, targets, residuals, strict=True)
        ]
        return results if as_list else results[0]

    def separate_file(
        self,
        input_path: str | Path,
        query: Any,
        output_dir: str | Path,
        *,
        negative: Any = None,
        stem: str | None = None,
        format: str = "wav",
        subtype: str | None = None,
        force: bool = True,
        options: SeparationOptions | None = None,
        chunk_seconds: float | None = None,
        overlap: float | None = None,
        batch_size: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        shift: float | None = None,
        seed: int | None = None,
        candidates: int | None = None,
        progress: bool = False,
        stop_check: Callable[[], None] | None = None,
    ) -> list[tuple[Path, Path]]:
        """File to files, streamed block by block: memory stays flat for any input length.
        `force=False` refuses to replace an output file that exists."""
        opts = SeparationOptions.make(options, **_settings(locals()))
        self.sampling_options(opts)
        queries, _ = as_queries(query)
        queries = [q.with_negatives(negative) for q in queries]
        source = open_source(input_path, None)
        stem = stem or Path(input_path).stem
        paths = [output_paths(output_dir, stem, q, format) for q in queries]
        qaudio.check_outputs(
            paths, [Path(input_path), *(f for q in queries for f in q.files)], force
        )
        fn = self.chunk_fn(queries, opts)
        self.write_files(
            source,
            queries,
            paths,
            fn,
            self.plan(opts),
            subtype=subtype,
            progress=progress,
            stop_check=stop_check,
        )
        return paths

    def write_files(
        self,
        source: Source,
        queries: Sequence[Query],
        paths: Sequence[tuple[Path, Path]],
        fn: ChunkFn,
        plan: ChunkPlan,
        *,
        subtype: str | None = None,
        progress: bool = False,
        stop_check: Callable[[], None] | None = None,
    ) -> None:
        """Streams `source` through `fn` into (target, residual) files, one pair per query:
        written under temporary names, then all renamed into place together, or none is."""
        writers = [
            tuple(
                qaudio.AudioWriter(
                    p, source.sample_rate, source.channels, subtype=subtype, deferred=True
                )
                for p in pair
            )
            for pair in paths
        ]
        flat = [w for pair in writers for w in pair]

        def write(k: int, target: np.ndarray, residual: np.ndarray) -> None:
            t, r = _orient(queries[k], target, residual)
            writers[k][0].write(t)
            writers[k][1].write(r)

        try:
            with ExitStack() as stack:
                for writer in flat:
                    stack.enter_context(writer)
                self._stream(source, len(queries), write, fn, plan, progress, stop_check)
        except BaseException:  # a writer that closed cleanly still holds a temporary file
            for writer in flat:
                writer.discard()
            raise
        qaudio.publish_together(flat)  # every file is complete: all appear, or none does

    def separate_files(self, items: Any, output_dir: str | Path, **settings: Any) -> Any:
        """Separates a collection: `items` from `querysep.batch.collect` or `read_manifest`.
        Done items (outputs present) are skipped unless `force=True`; a bad item is logged and
        the run goes on; under torchrun / accelerate launch each rank takes its share. Keywords
        and the returned `Summary` as in `querysep.batch.run`."""
        from querysep.batch import run

        return run(self, items, output_dir, **settings)

    def _stream(
        self,
        source: Source,
        num_outputs: int,
        write: Callable[[int, np.ndarray, np.ndarray], None],
        fn: ChunkFn,
        plan: ChunkPlan,
        progress: bool,
        stop_check: Callable[[], None] | None = None,
    ) -> None:
        bar = _progress_bar(source, progress)
        try:
            stream_separate(
                source.blocks(),
                sample_rate=source.sample_rate,
                model_rate=self.sample_rate,
                channels=source.channels,
                total_frames=source.frames,
                fn=fn,
                plan=plan,
                num_outputs=num_outputs,
                sink=_FnSink(write),
                progress=(lambda n: bar.update(n / source.sample_rate)) if bar else None,
                stop_check=stop_check,
            )
        finally:
            if bar:
                bar.close()


# -- module-level API -------------------------------------------------------------------------
_LOADED: dict[tuple[str, str, str], Separator] = {}


def load(
    model: str | Path | Separator | None = None, *, device: Any = "auto", dtype: Any = None
) -> Separator:
    """Resolves `model` (None = the registry default) to a Separator, cached per process."""
    if isinstance(model, Separator):
        return model.to(device, dtype)
    name = str(model) if model is not None else pretrained.default_model()
    key = (name, str(device), str(dtype))
    if key not in _LOADED:
        _LOADED[key] = Separator.from_pretrained(name, device=device, dtype=dtype)
    return _LOADED[key]


def separate(
    audio: Any,
    query: Any,
    *,
    model: str | Path | Separator | None = None,
    negative: Any = None,
    sample_rate: int | None = None,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = None,
    options: SeparationOptions | None = None,
    chunk_seconds: float | None = None,
    overlap: float | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    shift: float | None = None,
    seed: int | None = None,
    candidates: int | None = None,
    progress: bool = False,
) -> SeparationResult | list[SeparationResult]:
    """Extract (or remove) what `query` describes from `audio`. See `Separator.separate`."""
    return load(model, device=device, dtype=dtype).separate(
        audio,
        query,
        negative=negative,
        sample_rate=sample_rate,
        options=options,
        chunk_seconds=chunk_seconds,
        overlap=overlap,
        steps=steps,
        guidance=guidance,
        shift=shift,
        seed=seed,
        candidates=candidates,
        progress=progress,
    )


# -- helpers ----------------------------------------------------------------------------------
def _settings(scope: dict[str, Any]) -> dict[str, Any]:
    """The separation settings among a method's keyword arguments."""
    return {f.name: scope[f.name] for f in dataclasses.fields(SeparationOptions)}


def _orient(query: Query, extracted: np.ndarray, rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A "remove X" query asks for the rest: target = mixture - X, residual = X."""
    return (rest, extracted) if query.mode == "remove" else (extracted, rest)


class _FnSink:
    def __init__(self, fn: Callable[[int, np.ndarray, np.ndarray], None]):
        self.write = fn


def _progress_bar(source: Source, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    total = round(source.frames / source.sample_rate, 2)
    return tqdm(
        total=total,
        unit="s",
        desc="separating",
        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]",
    )
