"""`querysep data synth`: a small labelled LASS corpus made offline, deterministic by seed.

Three kinds of sound, so a model trained on it meets tonal, noisy, transient and natural
sources: procedural classes (beeps, sirens, engine hum, rain, bells, knocks, chirps, a ticking
clock, whistles), the bundled CC0 animal recordings (augmented; each recording's timeline is
cut 60/20/20 so test crops never overlap training crops), and espeak-ng speech when the binary
is installed (different sentences per split). Every clip records its `source`, and no source
appears in two splits.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from querysep import audio as qaudio
from querysep.data.manifest import Entry, write_manifest
from querysep.errors import DataError

SPLITS = ("train", "valid", "test")
#: Where each split's crops come from, as fractions of an animal recording's timeline.
TIMELINE = {"train": (0.0, 0.6), "valid": (0.6, 0.8), "test": (0.8, 1.0)}
#: The bundled CC0 recordings (credits in tests/data/CREDITS.md), in a source checkout.
ANIMALS = Path(__file__).resolve().parents[2] / "tests" / "data"

Generator = Callable[[np.random.Generator, int, int], np.ndarray]


def _t(n: int, sr: int) -> np.ndarray:
    return np.arange(n) / sr


def _beep(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f, period = rng.uniform(700, 2000), rng.uniform(0.3, 0.8)
    gate = (_t(n, sr) % period) < period * rng.uniform(0.3, 0.6)
    return np.sin(2 * np.pi * f * _t(n, sr)) * gate


def _siren(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    lo, hi, rate = rng.uniform(500, 800), rng.uniform(1000, 1600), rng.uniform(0.3, 1.2)
    freq = lo + (hi - lo) * 0.5 * (1 + np.sin(2 * np.pi * rate * _t(n, sr)))
    return np.sin(2 * np.pi * np.cumsum(freq) / sr)


def _engine(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f0, t = rng.uniform(30, 70), _t(n, sr)
    hum = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) / k for k in range(1, 9))
    return hum * (1 + 0.4 * np.sin(2 * np.pi * rng.uniform(4, 12) * t))


def _rain(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    noise = rng.standard_normal(n)
    drops = (rng.random(n) < rng.uniform(2e-4, 1e-3)) * rng.uniform(0.5, 3, n)
    smooth = np.convolve(noise, np.ones(4) / 4, mode="same")
    return 0.5 * smooth + np.convolve(drops, np.exp(-np.arange(200) / 30), mode="same")


def _bell(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f0, out = rng.uniform(300, 900), np.zeros(n)
    for onset in np.arange(0, n, int(rng.uniform(0.8, 1.6) * sr)):
        t = _t(n - onset, sr)
        partials = sum(
            np.sin(2 * np.pi * f0 * r * t) * np.exp(-t * d)
            for r, d in ((1, 2), (2.76, 3), (5.4, 5), (8.93, 8))
        )
        out[onset:] += partials
    return out


def _knock(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    out, f = np.zeros(n), rng.uniform(150, 400)
    t = _t(int(0.06 * sr), sr)
    hit = np.sin(2 * np.pi * f * t) * np.exp(-t * 80)
    for onset in np.cumsum(rng.uniform(0.15, 0.6, 16) * sr).astype(int):
        if onset + len(hit) < n:
            out[onset : onset + len(hit)] += hit
    return out


def _chirp(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    out, dur = np.zeros(n), int(rng.uniform(0.05, 0.15) * sr)
    t = _t(dur, sr)
    f0, f1 = rng.uniform(2500, 4000), rng.uniform(4000, 6000)
    freq = f0 + (f1 - f0) * t / t[-1]
    note = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.hanning(dur)
    for onset in np.cumsum(rng.uniform(0.08, 0.5, 24) * sr).astype(int):
        if onset + dur < n:
            out[onset : onset + dur] += note
    return out


def _clock(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    out, period = np.zeros(n), int(rng.uniform(0.45, 0.55) * sr)
    click = rng.standard_normal(int(0.004 * sr)) * np.exp(-np.arange(int(0.004 * sr)) / 15)
    for k, onset in enumerate(range(int(rng.uniform(0, 0.3) * sr), n - len(click), period)):
        out[onset : onset + len(click)] += click * (1.0 if k % 2 else 0.6)
    return out


def _whistle(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f, t = rng.uniform(1500, 2800), _t(n, sr)
    freq = f * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(4, 7) * t))
    return np.sin(2 * np.pi * np.cumsum(freq) / sr) * (0.6 + 0.4 * np.sin(np.pi * t / t[-1]))


PROCEDURAL: dict[str, tuple[Generator, tuple[str, ...]]] = {
    "beep": (_beep, ("a beeping sound", "electronic beeps", "a repeated beep tone")),
    "siren": (_siren, ("a siren wailing", "an emergency siren", "a rising and falling siren")),
    "engine": (_engine, ("an engine humming", "engine noise", "a motor idling")),
    "rain": (_rain, ("rain falling", "the sound of rain", "raindrops pattering")),
    "bell": (_bell, ("a bell ringing", "a ringing bell", "church bell chimes")),
    "knock": (_knock, ("knocking on a door", "someone knocks", "wooden knocks")),
    "chirp": (_chirp, ("birds chirping", "a bird tweeting", "high chirps")),
    "clock": (_clock, ("a clock ticking", "ticking of a clock", "a ticking sound")),
    "whistle": (_whistle, ("a person whistling", "a whistle", "a whistled tone")),
}
ANIMAL_CAPTIONS: dict[str, tuple[str, ...]] = {
    "dog": ("a dog barking", "dog barks", "the sound of a barking dog"),
    "cat": ("a cat meowing", "a cat meows", "the meow of a cat"),
    "cow": ("a cow mooing", "cattle lowing", "the moo of a cow"),
    "duck": ("a duck quacking", "ducks quack", "quacking"),
    "frog": ("a frog croaking", "frogs croak", "croaking of a frog"),
    "horse": ("a horse neighing", "a horse whinnies", "neighing"),
    "owl": ("an owl hooting", "the hoot of an owl", "owl calls"),
    "pig": ("a pig grunting", "pigs oink", "grunting of a pig"),
    "rooster": ("a rooster crowing", "a cock crows", "the crow of a rooster"),
    "sheep": ("a sheep bleating", "sheep baa", "bleating"),
}
SPEECH_CAPTIONS = ("a man speaking", "a person talking", "speech")
SENTENCES = {
    "train": [
        "The quick brown fox jumps over the lazy dog.",
        "Please close the window before it starts to rain.",
        "We will meet at the station at nine tomorrow.",
        "Every morning she walks along the river.",
        "The results of the experiment were surprising.",
        "Turn left at the second traffic light.",
        "He bought fresh bread and a bottle of milk.",
        "Music is playing somewhere in the building.",
        "The meeting has been moved to Thursday.",
        "Our train was delayed by twenty minutes.",
    ],
    "valid": [
        "The garden looks beautiful in the spring.",
        "Can you tell me where the library is?",
        "They painted the old house bright yellow.",
    ],
    "test": [
        "A cold wind blew across the empty field.",
        "The children laughed at the funny clown.",
        "Remember to lock the door when you leave.",
    ],
}
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-us+f3", "en-gb+f2")


def synthesize_corpus(
    outdir: str | Path,
    *,
    seed: int = 0,
    clips_per_class: int = 12,
    seconds: float = 4.0,
    sample_rate: int = 16_000,
    speech: bool = True,
    animals: str | Path | None = None,
) -> dict[str, Path]:
    """Writes `outdir/audio/{split}/*.wav` and `outdir/{split}.jsonl`; returns the manifests.

    Valid and test get a third of `clips_per_class` each (at least 2).
    """
    outdir = Path(outdir)
    n = round(seconds * sample_rate)
    have_speech = speech and shutil.which("espeak-ng") is not None
    manifests = {}
    for s_index, split in enumerate(SPLITS):
        count = clips_per_class if split == "train" else max(2, clips_per_class // 3)
        folder = outdir / "audio" / split
        folder.mkdir(parents=True, exist_ok=True)
        entries: list[Entry] = []
        rng = np.random.default_rng([seed, s_index])
        for label, (make, captions) in PROCEDURAL.items():
            for i in range(count):
                clip = make(rng, n, sample_rate)
                entries.append(_write(folder, split, label, i, clip, captions, sample_rate, rng))
        for label, recording in _animal_recordings(Path(animals or ANIMALS), sample_rate).items():
            for i in range(count):
                clip = _animal_clip(rng, recording, split, n, sample_rate)
                entries.append(
                    _write(folder, split, label, i, clip, ANIMAL_CAPTIONS[label], sample_rate, rng,
                           source=f"{label}-recording-{split}")
                )  # fmt: skip
        if have_speech:
            for i, clip in enumerate(_speech_clips(rng, split, count, n, sample_rate)):
                entries.append(
                    _write(folder, split, "speech", i, clip, SPEECH_CAPTIONS, sample_rate, rng)
                )
        manifests[split] = write_manifest(entries, outdir / f"{split}.jsonl")
    return manifests


def _write(
    folder: Path,
    split: str,
    label: str,
    i: int,
    clip: np.ndarray,
    captions: tuple[str, ...],
    sr: int,
    rng: np.random.Generator,
    source: str = "",
) -> Entry:
    peak = float(np.abs(clip).max()) or 1.0
    clip = (clip / peak * 10 ** (rng.uniform(-12, -3) / 20)).astype(np.float32)
    name = f"{label}_{i:03d}.wav"
    qaudio.save(folder / name, clip[None], sr, subtype="PCM_16")
    return Entry(
        audio=f"audio/{split}/{name}",
        captions=captions,
        labels=(label,),
        duration=len(clip) / sr,
        sample_rate=sr,
        id=f"{split}/{label}_{i:03d}",
        source=source or f"{label}-{split}-{i}",
    )


def _animal_recordings(folder: Path, sr: int) -> dict[str, np.ndarray]:
    missing = [a for a in ANIMAL_CAPTIONS if not (folder / f"{a}.mp3").is_file()]
    if missing:
        raise DataError(
            f"the CC0 animal recordings are not in {folder} (missing {', '.join(missing)}): "
            "pass the repository's tests/data folder as animals="
        )
    out = {}
    for label in ANIMAL_CAPTIONS:
        audio, _ = qaudio.load(folder / f"{label}.mp3", sr)
        out[label] = audio.mean(axis=0)
    return out


def _animal_clip(
    rng: np.random.Generator, recording: np.ndarray, split: str, n: int, sr: int
) -> np.ndarray:
    """A crop from the split's part of the timeline, pitch-shifted by resampling, tilted in
    EQ and placed at a random offset (repeated to fill the clip)."""
    lo, hi = (round(f * len(recording)) for f in TIMELINE[split])
    region = recording[lo:hi]
    length = min(len(region), int(rng.uniform(0.5, 2.0) * sr))
    start = int(rng.integers(len(region) - length + 1))
    event = region[start : start + length]
    factor = rng.uniform(0.88, 1.12)
    event = qaudio.resample(event[None], round(sr * factor), sr)[0]
    width = int(rng.integers(2, 9))  # moving-average low-pass: darker, or subtracted, brighter
    smoothed = np.convolve(event, np.ones(width) / width, mode="same")
    event = smoothed if rng.random() < 0.5 else event - 0.5 * smoothed
    out = np.zeros(n)
    for onset in sorted(rng.integers(0, max(1, n - len(event)), int(rng.integers(1, 4)))):
        end = min(n, onset + len(event))
        out[onset:end] += event[: end - onset]
    return out


def _speech_clips(
    rng: np.random.Generator, split: str, count: int, n: int, sr: int
) -> list[np.ndarray]:
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            sentence = SENTENCES[split][i % len(SENTENCES[split])]
            voice = VOICES[int(rng.integers(len(VOICES)))]
            wav = Path(tmp) / f"{i}.wav"
            subprocess.run(
                ["espeak-ng", "-w", str(wav), "-v", voice, "-s", str(int(rng.integers(130, 190))),
                 "-p", str(int(rng.integers(30, 70))), sentence],
                check=True, capture_output=True,
            )  # fmt: skip
            speech, _ = qaudio.load(wav, sr)
            clip = np.zeros(n)
            speech = speech[0, :n]
            offset = int(rng.integers(0, n - len(speech) + 1))
            clip[offset : offset + len(speech)] = speech
            clips.append(clip)
    return clips
