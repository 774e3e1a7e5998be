"""On-the-fly LASS mixtures from a caption manifest.

Every item is a pure function of (seed, index): the same index always gives the same mixture,
in any worker and after any restart, which is what makes resumed training exact and validation
sets fixed without storing them.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from querysep.data.manifest import Entry, Manifest
from querysep.errors import AudioError, ConfigError, DataError, first_line

PEAK_LIMIT = 0.9
SILENT_RMS = 1e-4


@dataclass
class MixingConfig:
    seconds: float = 4.0
    sample_rate: int = 16_000
    channels: int = 1
    interferers: tuple[int, int] = (1, 2)
    snr_db: tuple[float, float] = (-5.0, 5.0)
    #: How levels are matched before the SNR is applied: "energy" (AudioSep) or "lufs"
    #: (ITU-R BS.1770 loudness via pyloudnorm: closer to how loud sources sound).
    match: str = "energy"
    #: Share of items whose query is an audio example instead of a caption.
    audio_query_share: float = 0.0
    #: Share of items that also carry a negative query (an interferer's caption).
    negative_share: float = 0.0
    #: Share of items whose target is absent from the mixture (ground truth: silence).
    absent_share: float = 0.0
    #: Item index from which absent targets appear (items are drawn in order, so with batch B
    #: this is step x B): a curriculum. A model that meets silent targets from its first step
    #: can settle on returning silence for every query before it learns to separate.
    absent_from: int = 0
    #: Decoded clips kept per worker; small corpora fit entirely.
    cache_clips: int = 512
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MixingConfig:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"mixing: unknown keys {sorted(unknown)}")
        cfg = cls(**raw)
        cfg.interferers = _pair(cfg.interferers, "interferers", int)  # type: ignore[assignment]
        cfg.snr_db = _pair(cfg.snr_db, "snr_db", float)  # type: ignore[assignment]
        lo, hi = cfg.interferers
        if not 1 <= lo <= hi:
            raise ConfigError(f"mixing.interferers must be 1 <= min <= max, got {cfg.interferers}")
        if cfg.snr_db[0] > cfg.snr_db[1]:
            raise ConfigError(f"mixing.snr_db must be [min, max], got {list(cfg.snr_db)}")
        if not _number(cfg.seconds) or not 0 < cfg.seconds <= 3600:
            raise ConfigError(f"mixing.seconds must be a number in (0, 3600], got {cfg.seconds!r}")
        for name, low in (("sample_rate", 1), ("cache_clips", 0)):
            value = getattr(cfg, name)
            if not _number(value) or value != int(value) or value < low:
                raise ConfigError(f"mixing.{name} must be a whole number >= {low}, got {value!r}")
        for name in ("audio_query_share", "negative_share", "absent_share"):
            if not _number(getattr(cfg, name)) or not 0 <= getattr(cfg, name) <= 1:
                raise ConfigError(f"mixing.{name} must be in [0, 1]")
        if (
            isinstance(cfg.absent_from, bool)
            or not isinstance(cfg.absent_from, int)
            or (cfg.absent_from < 0)
        ):
            raise ConfigError(
                f"mixing.absent_from must be a whole number >= 0, got {cfg.absent_from!r}"
            )
        if cfg.channels not in (1, 2):
            raise ConfigError("mixing.channels must be 1 or 2")
        if cfg.match not in ("energy", "lufs"):
            raise ConfigError("mixing.match must be 'energy' or 'lufs'")
        return cfg


def _number(value: Any) -> bool:
    """A finite int or float (not a bool, not text)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pair(value: Any, name: str, kind: type) -> tuple[Any, Any]:
    """[min, max] of finite numbers (whole ones for `kind` int), as a tuple of `kind`."""
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(map(_number, value)):
        raise ConfigError(f"mixing.{name} must be [min, max] numbers, got {value!r}")
    if kind is int and any(v != int(v) for v in value):
        raise ConfigError(f"mixing.{name} must be whole numbers, got {value!r}")
    return kind(value[0]), kind(value[1])


class MixingDataset(Dataset):
    """`length` mixtures drawn from `manifest`: target crop + 1..N colliding-free interferers.

    Item: mixture and target [C, T] float32, caption, query_audio ([T] or empty), negative
    caption ("" for none) and absent (bool).
    """

    def __init__(self, manifest: Manifest, config: MixingConfig, length: int, seed: int = 0):
        if len(manifest) < 2:
            raise DataError("mixing needs a manifest with at least two clips")
        self.manifest = manifest
        self.config = config
        self.length = int(length)
        self.seed = int(seed)
        self.frames = round(config.seconds * config.sample_rate)
        self._clips: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bad: set[str] = set()
        self._by_label: dict[str, list[int]] = {}
        for i, entry in enumerate(manifest.entries):
            for label in entry.labels:
                self._by_label.setdefault(label, []).append(i)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Draws the item; a clip that fails to decode (truncated, NaN samples) is reported
        once, excluded, and the item is drawn again, so one bad file never stops a run."""
        for attempt in range(20):
            rng = np.random.default_rng([self.seed, int(index), attempt])
            try:
                return self._draw(rng, int(index))
            except _Unusable as exc:
                if exc.first_time:
                    warnings.warn(f"skipping an unusable clip: {exc}", stacklevel=2)
        raise DataError("20 draws in a row hit unusable clips: run `querysep data check`")

    def _draw(self, rng: np.random.Generator, index: int = 0) -> dict[str, Any]:
        cfg = self.config
        entries = self.manifest.entries
        t_idx = int(rng.integers(len(entries)))
        target_entry = entries[t_idx]
        target = self._crop(target_entry, rng)
        count = int(rng.integers(cfg.interferers[0], cfg.interferers[1] + 1))
        others = [self._pick_interferer(target_entry, rng) for _ in range(count)]
        crops = [(e, self._crop(e, rng)) for e in others]
        example = lambda: self._example_of(t_idx, rng)  # noqa: E731
        return assemble(
            cfg, rng, target_entry, target, crops, example, absent_ok=index >= cfg.absent_from
        )

    # -- helpers ----------------------------------------------------------------------------
    def _pick_interferer(self, target: Entry, rng: np.random.Generator) -> Entry:
        entries = self.manifest.entries
        for _ in range(50):
            other = entries[int(rng.integers(len(entries)))]
            if not _collides(target, other):
                return other
        raise DataError(
            f"no clip in the manifest can be mixed with {target.id or target.audio}: every "
            "candidate shares its labels, captions or source"
        )

    def _example_of(self, t_idx: int, rng: np.random.Generator) -> np.ndarray:
        """Another clip with the target's label (a different recording), else the target clip
        itself: the audio-example query a user would give."""
        entry = self.manifest.entries[t_idx]
        pool = [
            i
            for label in entry.labels
            for i in self._by_label.get(label, [])
            if i != t_idx and (not entry.source or self.manifest.entries[i].source != entry.source)
        ]
        chosen = self.manifest.entries[int(rng.choice(pool))] if pool else entry
        example = self._crop(chosen, rng).mean(axis=0).astype(np.float32)
        # a crop that caught only silence describes nothing: the caption is used instead
        return example if np.sqrt(np.mean(example**2)) > SILENT_RMS else np.zeros(0, np.float32)

    def _crop(self, entry: Entry, rng: np.random.Generator) -> np.ndarray:
        return crop(self._clip(entry), self.frames, rng)

    def _clip(self, entry: Entry) -> np.ndarray:
        key = entry.audio
        if key in self._clips:
            self._clips.move_to_end(key)
            return self._clips[key]
        from querysep import audio as qaudio

        path = self.manifest.path_of(entry)
        if str(path) in self._bad:
            raise _Unusable(f"{path}", first_time=False)
        try:
            data, rate = qaudio.load(path)
        except AudioError as exc:
            self._bad.add(str(path))
            raise _Unusable(first_line(exc), first_time=True) from None
        data = fit_clip(data, rate, self.config)
        self._clips[key] = data
        if len(self._clips) > self.config.cache_clips:
            self._clips.popitem(last=False)
        return data


def assemble(
    cfg: MixingConfig,
    rng: np.random.Generator,
    target_entry: Entry,
    target: np.ndarray,
    interferers: list[tuple[Entry, np.ndarray]],
    example: Callable[[], np.ndarray],
    absent_ok: bool = True,
) -> dict[str, Any]:
    """One training item from a target crop and interferer crops (shared by the manifest and
    the shard-streaming datasets, so both make the same kind of mixture)."""
    # each interferer level-matched first, so none of several drowns the others
    level = _unit_loudness if cfg.match == "lufs" else _unit_energy
    noise = sum((level(c, cfg.sample_rate) for _, c in interferers), np.zeros_like(target))
    snr = rng.uniform(*cfg.snr_db)
    if cfg.match == "lufs":
        noise = _scale_to_loudness_gap(target, noise, snr, cfg.sample_rate)
    else:
        noise = _scale_to_snr(target, noise, snr)
    absent = rng.random() < cfg.absent_share and absent_ok  # same draws either way
    if absent:
        target = np.zeros_like(target)
    mixture = target + noise
    peak = float(np.abs(mixture).max())
    if peak > PEAK_LIMIT:
        mixture, target = mixture * (PEAK_LIMIT / peak), target * (PEAK_LIMIT / peak)
    caption = str(rng.choice(target_entry.captions))
    query_audio = np.zeros(0, np.float32)
    if rng.random() < cfg.audio_query_share:
        query_audio = example()
    negative = ""
    if rng.random() < cfg.negative_share:
        negative = str(rng.choice(interferers[0][0].captions))
    return {
        "mixture": torch.from_numpy(mixture.astype(np.float32)),
        "target": torch.from_numpy(target.astype(np.float32)),
        "caption": caption,
        "label": target_entry.labels[0] if target_entry.labels else "",
        "query_audio": torch.from_numpy(query_audio),
        "negative": negative,
        "absent": bool(absent),
    }


def fit_clip(data: np.ndarray, rate: int, cfg: MixingConfig) -> np.ndarray:
    """Decoded audio [C, T] -> float32 at the mixing rate with the configured channel count."""
    from querysep import audio as qaudio

    data = qaudio.resample(data, rate, cfg.sample_rate)
    if cfg.channels == 1:
        data = data.mean(axis=0, keepdims=True)
    elif data.shape[0] == 1:
        data = np.repeat(data, 2, axis=0)
    return np.ascontiguousarray(data[: cfg.channels], dtype=np.float32)


#: A crop must hold at least this share of the clip's loudest window's energy: clips with
#: pauses (knocks, barks, speech) would otherwise give silent targets, which teach a model to
#: output silence and make SDRi meaningless (SDR of the mixture goes to minus infinity).
ACTIVE_SHARE = 0.2


def crop(clip: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A random `frames`-long window where the clip is active; shorter clips are zero-padded at
    a random offset."""
    n = clip.shape[-1]
    if n >= frames:
        step = max(1, frames // 100)
        power = np.concatenate([[0.0], np.cumsum(np.sum(clip.astype(np.float64) ** 2, axis=0))])
        starts = np.arange(0, n - frames + 1, step)
        energy = power[starts + frames] - power[starts]
        active = starts[energy >= ACTIVE_SHARE * energy.max()]
        start = int(active[int(rng.integers(len(active)))])
        return clip[:, start : start + frames].copy()
    out = np.zeros((clip.shape[0], frames), np.float32)
    offset = int(rng.integers(frames - n + 1))
    out[:, offset : offset + n] = clip
    return out


class _Unusable(Exception):
    def __init__(self, message: str, first_time: bool) -> None:
        super().__init__(message)
        self.first_time = first_time


def _collides(a: Entry, b: Entry) -> bool:
    """Two clips may not be mixed when the query for one could describe the other."""
    if a.audio == b.audio or (a.source and a.source == b.source):
        return True
    if a.labels and b.labels:
        return bool(set(a.labels) & set(b.labels))
    return bool({c.lower() for c in a.captions} & {c.lower() for c in b.captions})


def _unit_energy(x: np.ndarray, sample_rate: int = 0) -> np.ndarray:
    energy = float(np.sum(x**2))
    return x / np.sqrt(energy) if energy > 1e-12 else x


def _loudness(x: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness (LUFS) of [C, T]; -inf for silence or clips under one gate block."""
    import pyloudnorm

    if x.shape[-1] < 0.4 * sample_rate:
        return float("-inf")
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(x.T.astype(np.float64)))


def _unit_loudness(x: np.ndarray, sample_rate: int) -> np.ndarray:
    lufs = _loudness(x, sample_rate)
    if not np.isfinite(lufs):
        return _unit_energy(x)
    return x * 10 ** ((-23.0 - lufs) / 20)  # EBU R128 reference level


def _scale_to_loudness_gap(
    target: np.ndarray, noise: np.ndarray, gap_db: float, sample_rate: int
) -> np.ndarray:
    """Scales the interferers to sit `gap_db` LU below the target (energy SNR if either is
    too quiet or short to measure)."""
    t, n = _loudness(target, sample_rate), _loudness(noise, sample_rate)
    if not (np.isfinite(t) and np.isfinite(n)):
        return _scale_to_snr(target, noise, gap_db)
    return noise * 10 ** ((t - gap_db - n) / 20)


def _scale_to_snr(target: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Scales the interferer sum so that 10 log10(E_target / E_noise) = snr_db."""
    e_t, e_n = float(np.sum(target**2)), float(np.sum(noise**2))
    if e_n < 1e-12 or e_t < 1e-12:
        return noise
    return noise * np.sqrt(e_t / (e_n * 10 ** (snr_db / 10)))


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacks audio; query examples stay a list (most items have none)."""
    return {
        "mixture": torch.stack([it["mixture"] for it in items]),
        "target": torch.stack([it["target"] for it in items]),
        "caption": [it["caption"] for it in items],
        "label": [it["label"] for it in items],
        "query_audio": [it["query_audio"] for it in items],
        "negative": [it["negative"] for it in items],
        "absent": torch.tensor([it["absent"] for it in items]),
    }
