"""CLAP query encoder: text and audio examples -> L2-normalised embeddings for a separator."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from querysep import audio as qaudio
from querysep.dsp import STFT
from querysep.errors import ModelLoadError, QueryError, first_line
from querysep.query.parse import AudioQuery, Query, QueryPart

CLAP_SAMPLE_RATE = 48_000
CLAP_WINDOW_SECONDS = 10.0
#: LAION CLAP's text tower saw at most 77 tokens in training.
MAX_TEXT_TOKENS = 77
#: The default encoder for real models: LAION's general-audio CLAP (HTSAT-base, unfused).
DEFAULT_CLAP = "laion/clap-htsat-unfused"


@contextlib.contextmanager
def _fixed_numpy_seed(seed: int) -> Iterator[None]:
    # ClapFeatureExtractor picks random crops from numpy's global RNG (fusion mode);
    # a query must embed identically every time.
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


#: Bounds on the text-embedding cache: entries of longer texts are not kept, and the whole
#: cache (texts at 4 bytes a character, embeddings) stays under CACHE_BYTES.
MAX_CACHED_CHARS = 1024
CACHE_BYTES = 16 << 20


def _entry_bytes(text: str, emb: Tensor) -> int:
    return len(text) * 4 + emb.numel() * emb.element_size()


class ClapQueryEncoder:
    """Wraps `transformers.ClapModel` and its processor; caches text embeddings by string."""

    def __init__(
        self, model: Any, processor: Any, *, source: str | None = None, cache_size: int = 4096
    ):
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.source = source
        self.cache_size = cache_size
        self._text_cache: OrderedDict[str, Tensor] = OrderedDict()
        self._cached_bytes = 0
        text_cfg = model.config.text_config
        self.max_text_tokens = min(MAX_TEXT_TOKENS, int(text_cfg.max_position_embeddings) - 2)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path = DEFAULT_CLAP, *, revision: str | None = None
    ) -> ClapQueryEncoder:
        """A local directory or a hub id such as laion/clap-htsat-unfused."""
        from transformers import ClapModel, ClapProcessor
        from transformers.utils import logging as hf_logging

        source = str(name_or_path)
        # A local folder (a bundle's query_encoder/) is read like the bundle: safetensors only
        # (pickles can run code), and every weight present: transformers would fill a missing
        # tensor with random values and only log a report.
        local = Path(source).is_dir()
        if local:
            _require_clap_config(Path(source))
        bars = hf_logging.is_progress_bar_enabled()
        verbosity = hf_logging.get_verbosity()
        hf_logging.disable_progress_bar()  # a weight-loading bar per query encoder is noise
        if local:
            hf_logging.set_verbosity_error()  # the load report: its gist becomes the error
        try:
            model, info = ClapModel.from_pretrained(
                source,
                revision=revision,
                output_loading_info=True,
                **({"use_safetensors": True} if local else {}),
            )
            processor = ClapProcessor.from_pretrained(source, revision=revision)
        except Exception as exc:  # hub, network, or file-format errors all mean "cannot load"
            raise ModelLoadError(
                _describe_load_failure("CLAP query encoder", source, exc)
            ) from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        incomplete = [*info.get("missing_keys", ()), *info.get("mismatched_keys", ())]
        if local and incomplete:
            names = ", ".join(str(k) for k in sorted(incomplete, key=str)[:3])
            more = f" (+{len(incomplete) - 3} more)" if len(incomplete) > 3 else ""
            raise ModelLoadError(
                f"the CLAP query encoder in {source} lacks weights or has them in the wrong "
                f"shape: {names}{more}"
            )
        return cls(model, processor, source=source)

    @classmethod
    def tiny(
        cls, seed: int = 0, fused: bool = False, captions: Sequence[str] = ()
    ) -> ClapQueryEncoder:
        """A random tiny CLAP built from config: offline tests, smoke runs, new bundles; with
        `captions`, a vocabulary of their words to fit from (`build_tiny_clap`)."""
        from querysep.query.tiny import build_tiny_clap

        model, processor = build_tiny_clap(seed, fused=fused, captions=captions)
        return cls(model, processor, source=None)

    def save_pretrained(self, directory: str | Path) -> None:
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "writing shards" bar inside every bundle save
        try:
            self.model.save_pretrained(directory)
            self.processor.save_pretrained(directory)
        finally:
            if bars:
                hf_logging.enable_progress_bar()

    # -- properties -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def fused(self) -> bool:
        return bool(getattr(self.model.config.audio_config, "enable_fusion", False))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> ClapQueryEncoder:
        self.model.to(device)
        return self

    # -- embeddings -----------------------------------------------------------------------
    @torch.inference_mode()
    def embed_text(self, texts: Sequence[str]) -> Tensor:
        """[B] strings -> [B, D] float32 on CPU, unit norm."""
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise QueryError("text queries must be non-empty strings")
        found = {t: self._text_cache[t] for t in texts if t in self._text_cache}
        for t in found:
            self._text_cache.move_to_end(t)
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            for text, emb in zip(missing, self._encode_text(missing), strict=True):
                found[text] = emb
                self._remember(text, emb)
        return torch.stack([found[t] for t in texts])

    def _encode_text(self, texts: list[str]) -> Tensor:
        tokenizer = self.processor.tokenizer
        for text in texts:
            n = len(tokenizer(text, verbose=False)["input_ids"])  # counted, not truncated
            if n > self.max_text_tokens:
                warnings.warn(
                    f"query text is {n} tokens; CLAP reads only the first {self.max_text_tokens}: "
                    f"{text[:60]!r}...",
                    stacklevel=4,
                )
        out = self.model.get_text_features(**self.text_inputs(texts))
        return _unit(_pooled(out)).float().cpu()

    def text_inputs(self, texts: list[str]) -> dict[str, Tensor]:
        """Tokenised captions for `model.get_text_features`, on the model's device."""
        enc = self.processor.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_text_tokens,
            return_tensors="pt",
        )
        return {k: enc[k].to(self.device) for k in ("input_ids", "attention_mask")}

    def audio_inputs(self, pieces: list[np.ndarray]) -> dict[str, Tensor]:
        """Mono 48 kHz clips -> features for `model.get_audio_features`, on the model's device.
        Repeat-padded to CLAP's window; the extractor's random crop of longer clips is seeded."""
        with _fixed_numpy_seed(0):
            feats = self.processor.feature_extractor(
                pieces,
                sampling_rate=CLAP_SAMPLE_RATE,
                truncation="fusion" if self.fused else "rand_trunc",
                padding="repeatpad",
                return_tensors="pt",
            )
        inputs = {"input_features": feats["input_features"].to(self.device)}
        if "is_longer" in feats:
            inputs["is_longer"] = feats["is_longer"].to(self.device)
        return inputs

    def batch_audio_inputs(self, crops: Tensor) -> dict[str, Tensor]:
        """[B, T] mono 48 kHz crops, none longer than CLAP's window -> the features
        `audio_inputs` makes (to about 1e-3 dB), computed in one batched torch pass.

        Training calls this every step: the feature extractor's per-clip numpy spectrogram
        took more than half of a CLAP fitting step on CPU.
        """
        extractor = self.processor.feature_extractor
        window = int(extractor.nb_max_samples)
        length = crops.shape[-1]
        if self.fused:  # the extractor's fusion views follow numpy's random state
            raise QueryError("batched features are for unfused CLAP checkpoints")
        if crops.ndim != 2 or not 0 < length <= window:
            raise QueryError(f"crops must be [batch, samples] with 1 to {window} samples")
        waves = crops.float().repeat(1, window // length)  # CLAP's "repeatpad"
        waves = torch.nn.functional.pad(waves, (0, window - waves.shape[-1]))
        stft = STFT(int(extractor.fft_window_size), int(extractor.hop_length)).to(waves.device)
        power = stft(waves).abs().square()  # [B, F, frames]
        bank = torch.as_tensor(  # [F, mels]: the filters the extractor uses unfused
            extractor.mel_filters_slaney, dtype=torch.float32, device=waves.device
        )
        mel = torch.einsum("bft,fm->btm", power, bank).clamp_min(1e-10)
        feats = (10.0 * torch.log10(mel)).unsqueeze(1)  # [B, 1, frames, mels]
        longer = torch.zeros(len(crops), 1, dtype=torch.bool, device=waves.device)
        return {"input_features": feats, "is_longer": longer}

    def clear_cache(self) -> None:
        """Forgets cached text embeddings (after the weights change)."""
        self._text_cache.clear()
        self._cached_bytes = 0

    def _remember(self, text: str, emb: Tensor) -> None:
        """Caches by count and by bytes (keys included): a server fed long, distinct texts
        keeps a bounded cache. Texts longer than CLAP can read are not cached at all."""
        if len(text) > MAX_CACHED_CHARS:
            return
        self._text_cache[text] = emb
        while len(self._text_cache) > self.cache_size or self._cache_bytes() > CACHE_BYTES:
            self._text_cache.popitem(last=False)

    def _cache_bytes(self) -> int:
        return sum(len(t) * 4 + e.numel() * e.element_size() for t, e in self._text_cache.items())

    @torch.inference_mode()
    def embed_audio(self, waveforms: Sequence[Any] | np.ndarray, sample_rate: int) -> Tensor:
        """Audio examples ([T] or [C, T] each, any rate) -> [B, D] float32 on CPU, unit norm.

        Examples are downmixed and resampled to 48 kHz. Unfused checkpoints see 10 s at a
        time, so longer examples are embedded window by window and averaged: the whole example
        counts, deterministically (rather than the feature extractor's random crop).
        """
        if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
            waveforms = [waveforms]
        embs = [self._embed_one(w, sample_rate) for w in waveforms]
        if not embs:
            raise QueryError("no audio examples given")
        return torch.stack(embs)

    @torch.inference_mode()
    def embed_crops(self, crops: Tensor, sample_rate: int) -> Tensor:
        """[B, T] mono crops of one length, at most CLAP's window -> [B, D], unit norm, in one
        batched pass (`batch_audio_inputs`).

        The separator's trainer embeds its audio-example queries this way: one at a time
        through the feature extractor they took about 80 ms each, a ninth of an fp32 step of
        querysep-mini's training on average.
        Equal to `embed_audio` to the features' 1e-3 dB; unfused checkpoints only.
        """
        if crops.ndim != 2:
            raise QueryError("crops must be [batch, samples]")
        waves = _audible(qaudio.resample(crops.float().numpy(), sample_rate, CLAP_SAMPLE_RATE))
        inputs = self.batch_audio_inputs(torch.from_numpy(waves).to(self.device))
        return _unit(_pooled(self.model.get_audio_features(**inputs)).float().cpu())

    def _embed_one(self, waveform: Any, sample_rate: int) -> Tensor:
        wave = qaudio.to_array(waveform, sample_rate)
        mono = wave.mean(axis=0, keepdims=True)
        mono = _audible(qaudio.resample(mono, sample_rate, CLAP_SAMPLE_RATE))[0]
        window = int(CLAP_WINDOW_SECONDS * CLAP_SAMPLE_RATE)
        if self.fused or len(mono) <= window:
            pieces = [mono]
        else:
            pieces = [mono[i : i + window] for i in range(0, len(mono), window)]
            if len(pieces) > 1 and len(pieces[-1]) < window // 4:
                pieces.pop()  # a short tail would be repeat-padded into a different sound
        inputs = self.audio_inputs(pieces)
        embs = _unit(_pooled(self.model.get_audio_features(**inputs)).float().cpu())
        return _unit(embs.mean(dim=0))

    def embed_part(self, part: QueryPart) -> Tensor:
        if isinstance(part, str):
            return self.embed_text([part])[0]
        if isinstance(part, AudioQuery):
            if isinstance(part.audio, (str, Path)):
                wave, rate = qaudio.load(part.audio)
            else:
                if part.sample_rate is None:
                    raise QueryError("an audio-array query needs its sample_rate")
                wave, rate = part.audio, part.sample_rate
            return self.embed_audio([wave], rate)[0]
        raise QueryError(f"cannot embed a query part of type {type(part).__name__}")

    def embed(self, query: Query) -> tuple[Tensor, Tensor | None]:
        """A query -> (positive [D], negative [D] or None), each unit norm."""
        pos = sum(
            w * self.embed_part(p) for p, w in zip(query.positives, query.weights, strict=True)
        )
        neg = None
        if query.negatives:
            neg = _unit(torch.stack([self.embed_part(p) for p in query.negatives]).mean(dim=0))
        return _unit(pos), neg  # type: ignore[arg-type]


def _audible(waves: np.ndarray) -> np.ndarray:
    """[B, T] audio examples, refused if any is all zeros (nothing for CLAP to describe)."""
    if not np.all(np.any(waves, axis=-1)):
        raise QueryError("the audio query is silent: it cannot describe a sound")
    return waves


def _pooled(out: Any) -> Tensor:
    return out.pooler_output if hasattr(out, "pooler_output") else out


def _unit(x: Tensor) -> Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _require_clap_config(folder: Path) -> None:
    """A local folder must hold a CLAP config: given any other folder (a bundle's root, say),
    transformers would build a full-size default CLAP before finding the weights do not fit."""
    try:
        kind = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError, RecursionError):
        kind = None
    if kind != "clap":
        raise ModelLoadError(
            f"{folder} is not a CLAP model folder (no config.json with model_type clap)"
        )


def _describe_load_failure(what: str, source: str, exc: Exception) -> str:
    first = first_line(exc)
    if Path(source).exists():
        return f"cannot load the {what} from {source}: {first}"
    return (
        f"cannot load the {what} {source!r} from the Hugging Face Hub (offline, or not in the "
        f"local cache?): {first}. Download it once with network access, or point to a local copy."
    )
