"""`Separator`: a separator model + its query encoder, saved and loaded as one bundle.

Bundle layout (a directory, or a Hugging Face Hub repo with the same files):

    config.json          family, hyper-parameters, sample rate, query-encoder spec, version
    model.safetensors    separator weights
    query_encoder/       ClapModel + ClapProcessor files (absent when config names a hub id)
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from querysep import __version__, pretrained
from querysep import audio as qaudio
from querysep.apply import ChunkFn, ChunkPlan, iter_array_blocks, stream_separate
from querysep.config import (
    AUTO_ACCELERATOR_BATCH,
    load_config,
    normalize_config,
    validate_inference,
)
from querysep.errors import ConfigError, ModelLoadError, QueryError, QuerysepError, first_line
from querysep.files import atomic_dir, atomic_write
from querysep.models import SeparatorModel, build_model, family_class
from querysep.options import SAMPLER_SETTINGS, SeparationOptions
from querysep.query import ClapQueryEncoder, Query, as_queries
from querysep.query.parse import slug
from querysep.runtime import resolve_device, resolve_dtype

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
QUERY_ENCODER_DIR = "query_encoder"
TINY_CLAP_DIM = 16
#: How strongly a negative query is subtracted for models that cannot take one natively.
NEGATIVE_FOLD = 0.5
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_BLOCK_SECONDS = 10.0


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


#: Kept for callers of the old name; the settings live in `querysep.options`.
SAMPLING_SETTINGS = SAMPLER_SETTINGS


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
        directory = _locate_bundle(str(name_or_path), revision)
        cfg = _read_bundle_config(directory)
        _refuse_pickles(directory)
        model_cfg = {
            **cfg["model"],
            "sample_rate": cfg["sample_rate"],
            "query_dim": cfg["query_encoder"]["dim"],
        }
        _check_against_weights(cfg["family"], model_cfg, directory / WEIGHTS_NAME)
        model = build_model(cfg["family"], model_cfg)
        _load_weights(model, directory / WEIGHTS_NAME)
        qe_spec = cfg["query_encoder"]
        encoder = None
        if qe_spec.get("path"):
            encoder = ClapQueryEncoder.from_pretrained(_inside(directory, qe_spec["path"]))
        sep = cls(model, cfg, encoder)
        return sep.to(device, dtype)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes the bundle; files land under temporary names first, then move into place."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        cfg = dict(self.config)
        cfg["querysep_version"] = __version__
        qe_spec = {k: v for k, v in cfg["query_encoder"].items() if k not in ("tiny", "path")}
        if "hub_id" not in qe_spec:  # tiny or local encoders travel inside the bundle
            atomic_dir(directory / QUERY_ENCODER_DIR, self.query_encoder.save_pretrained)
            qe_spec = {"path": QUERY_ENCODER_DIR, "dim": self.query_encoder.dim}
        cfg["query_encoder"] = qe_spec
        state = {
            k: v.detach().float().contiguous().cpu() for k, v in self.model.state_dict().items()
        }
        atomic_write(
            directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"})
        )
        atomic_write(
            directory / CONFIG_NAME,
            lambda p: p.write_text(
                json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8"
            ),
        )
        return directory

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
        folded = torch.nn.functional.normalize(positives - NEGATIVE_FOLD * negatives, dim=-1)
        return folded, None

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
                return self.model.separate_many(rows.to(device), pos, neg, **options).float()

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
    ) -> SeparationResult | list[SeparationResult]:
        """Separate `audio` (a path, or an array / tensor with `sample_rate`) by `query`.

        `query` is text ("dog barking", "remove the traffic"), an `AudioQuery`, a `Query`, or
        a list of those: a list returns one result per query, all from one pass over the audio.
        Settings come as `options` (a `SeparationOptions`) or as keywords on top of it.
        `steps`, `guidance`, `shift` and `seed` set the sampler of generative (flow) models;
        `candidates=k` samples k targets per chunk and keeps the one whose CLAP audio embedding
        is closest to the query (best-of-k re-ranking by CLAPScore).
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

        self._stream(
            source, len(queries), write, self.chunk_fn(queries, opts), self.plan(opts), progress
        )
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
        check_outputs(paths, [Path(input_path), *(f for q in queries for f in q.files)], force)
        fn = self.chunk_fn(queries, opts)
        self.write_files(
            source, queries, paths, fn, self.plan(opts), subtype=subtype, progress=progress
        )
        return paths

    def write_files(
        self,
        source: _Source,
        queries: Sequence[Query],
        paths: Sequence[tuple[Path, Path]],
        fn: ChunkFn,
        plan: ChunkPlan,
        *,
        subtype: str | None = None,
        progress: bool = False,
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
                self._stream(source, len(queries), write, fn, plan, progress)
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
        source: _Source,
        num_outputs: int,
        write: Callable[[int, np.ndarray, np.ndarray], None],
        fn: ChunkFn,
        plan: ChunkPlan,
        progress: bool,
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


@dataclass
class _Source:
    sample_rate: int
    channels: int
    frames: int
    blocks: Callable[[], Any]
    stem: str = "mixture"


def open_source(audio: Any, sample_rate: int | None) -> _Source:
    """A path or an array -> a source that streams blocks (files are never read whole)."""
    if isinstance(audio, (str, Path)):
        if sample_rate is not None:
            raise QuerysepError("sample_rate is for array input; a file carries its own rate")
        info = qaudio.info(audio)
        block = max(1024, int(_BLOCK_SECONDS * info.sample_rate))
        read = lambda: qaudio.read_blocks(audio, block)  # noqa: E731
        return _Source(info.sample_rate, info.channels, info.frames, read, Path(audio).stem)
    if sample_rate is None:
        raise QuerysepError("array input needs sample_rate=... (the rate of the samples)")
    array = qaudio.to_array(audio, sample_rate)
    rate = int(sample_rate)
    block = max(1024, int(_BLOCK_SECONDS * rate))
    return _Source(rate, array.shape[0], array.shape[1], lambda: iter_array_blocks(array, block))


def _orient(query: Query, extracted: np.ndarray, rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A "remove X" query asks for the rest: target = mixture - X, residual = X."""
    return (rest, extracted) if query.mode == "remove" else (extracted, rest)


class _FnSink:
    def __init__(self, fn: Callable[[int, np.ndarray, np.ndarray], None]):
        self.write = fn


def _progress_bar(source: _Source, enabled: bool) -> Any:
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


def check_outputs(paths: Sequence[tuple[Path, Path]], inputs: Sequence[Path], force: bool) -> None:
    """Output names must be distinct, never an input, and (unless `force`) not present yet."""
    flat = [p for pair in paths for p in pair]
    if len(set(flat)) != len(flat):
        raise QueryError("two queries map to the same output file name: make them different")
    for p in flat:
        qaudio.refuse_overwrite(p, inputs)
        if not force and p.exists():
            raise QuerysepError(f"{p} exists: remove it, or pass --force to replace it")


def _locate_bundle(name: str, revision: str | None) -> Path:
    entry = pretrained.lookup(name)
    if entry is not None:
        return pretrained.materialize(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(
            f"{name} is a file; a model is a bundle directory with {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        known = ", ".join(pretrained.names()) or "none yet"
        raise ModelLoadError(
            f"model {name!r} is not a directory, a Hub id or a known name (known: {known})"
        )
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            name,
            revision=revision,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, f"{QUERY_ENCODER_DIR}/*"],
        )
    except Exception as exc:
        first = first_line(exc)
        raise ModelLoadError(
            f"model {name!r} is not a local directory, and fetching it from the Hugging Face "
            f"Hub failed (offline and not cached?): {first}"
        ) from None
    return Path(local)


def _inside(directory: Path, relative: Any) -> Path:
    """`directory / relative`, refused unless it stays inside the bundle: a bundle from the Hub
    must not load whatever sits at an absolute path or a `..` of the machine it lands on."""
    if not isinstance(relative, str) or Path(relative).is_absolute():
        raise ModelLoadError(
            f"{directory / CONFIG_NAME}: query_encoder.path must be a folder inside the bundle, "
            f"got {relative!r}"
        )
    path = (directory / relative).resolve()
    if not path.is_relative_to(directory.resolve()):
        raise ModelLoadError(
            f"{directory / CONFIG_NAME}: query_encoder.path {relative!r} points outside the bundle"
        )
    return path


def _read_bundle_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(f"{directory} is not a querysep bundle: {CONFIG_NAME} is missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    except RecursionError:
        raise ModelLoadError(f"cannot read {path}: it is nested too deeply") from None
    cfg = normalize_config(raw, where=str(path))
    if "dim" not in cfg["query_encoder"]:
        raise ModelLoadError(f"{path}: query_encoder.dim is missing")
    return cfg


def _refuse_pickles(directory: Path) -> None:
    if (directory / WEIGHTS_NAME).is_file():
        return
    pickles = [p.name for p in directory.iterdir() if p.suffix in _PICKLE_SUFFIXES]
    if pickles:
        raise ModelLoadError(
            f"{directory} holds pickle weights ({', '.join(pickles)}), "
            "which querysep refuses to load "
            f"(they can run code); convert them to {WEIGHTS_NAME}"
        )
    raise ModelLoadError(f"{directory}: {WEIGHTS_NAME} is missing")


def _check_against_weights(family: str, model_cfg: dict[str, Any], path: Path) -> None:
    """Builds the model on the meta device (no memory) and compares its tensors with the
    weights file's header, so a config asking for a 4 TB model is refused before anything is
    allocated: bundles come from the Hub and are not trusted."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read weights {path}: {first_line(exc)}") from None
    if not family_class(family).builds_offline(model_cfg):  # a hub VAE: fetched once, not twice
        return
    try:
        with torch.device("meta"):
            probe = build_model(family, model_cfg)
    except ConfigError:
        raise
    except Exception:  # a family that cannot be built on meta: load_state_dict still checks
        return
    expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    problems = [f"missing {k}" for k in expected if k not in stored]
    problems += [f"unexpected {k}" for k in stored if k not in expected]
    problems += [
        f"{k} is {list(stored[k])} in the file, {list(shape)} by the config"
        for k, shape in expected.items()
        if k in stored and stored[k] != shape
    ]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelLoadError(
            f"weights in {path} do not match the config: {'; '.join(problems[:3])}{more}"
        )


def _load_weights(model: SeparatorModel, path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read weights {path}: {exc}") from None
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()
        raise ModelLoadError(
            f"weights in {path} do not fit the config: {first[-1].strip() if first else exc}"
        ) from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {', '.join(result.missing_keys[:5])}")
    if result.unexpected_keys:
        problems.append(f"unexpected {', '.join(result.unexpected_keys[:5])}")
    if problems:
        raise ModelLoadError(f"weights in {path} do not match the config: {'; '.join(problems)}")
