"""`querysep data synth`: a small labelled LASS corpus made offline, deterministic by seed.

Three kinds of sound, so a model trained on it meets tonal, noisy, transient and natural
sources: procedural classes (beeps, sirens, engine hum, rain, bells, knocks, chirps, a ticking
clock, whistles), the bundled CC0 animal recordings (augmented with gain, pitch, EQ and time
offsets; each recording's sounding frames are cut 60/20/20 in time order, so test crops never
overlap training crops), and espeak-ng speech when the binary is installed (different
sentences per split). Every clip records its `source`, and no source appears in two splits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from querysep import audio as qaudio
from querysep.data.manifest import Entry, write_manifest
from querysep.errors import DataError, first_line

SPLITS = ("train", "valid", "test")
#: Share of each animal recording's sounding frames that each split's crops come from.
SHARES = {"train": 0.6, "valid": 0.2, "test": 0.2}
#: The bundled CC0 recordings (credits in tests/data/CREDITS.md), in a source checkout.
ANIMALS = Path(__file__).resolve().parents[2] / "tests" / "data"
#: Frames this far below a recording's loudest frame count as silence when cutting regions.
ACTIVE_DB = -20.0

Generator = Callable[[np.random.Generator, int, int], np.ndarray]


# ---------------------------------------------------------------------------- procedural


def _t(n: int, sr: int) -> np.ndarray:
    return np.arange(n) / sr


def _onsets(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> Iterator[int]:
    """Event times with random gaps in [lo, hi) s up to the end of the clip, the first one in
    its first half (so even a short clip has an event)."""
    at = rng.uniform(0, min(lo, 0.5 * n / sr)) * sr
    while at < n:
        yield int(at)
        at += rng.uniform(lo, hi) * sr


def _place(out: np.ndarray, event: np.ndarray, onset: int) -> None:
    end = min(len(out), onset + len(event))
    out[onset:end] += event[: end - onset]


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
    noise = np.convolve(rng.standard_normal(n), np.ones(4) / 4, mode="same")
    drops = (rng.random(n) < rng.uniform(2e-4, 1e-3)) * rng.uniform(0.5, 3, n)
    splash = np.exp(-np.arange(int(0.012 * sr)) / (0.002 * sr))
    swell = 0.7 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * _t(n, sr))
    return (0.5 * noise + np.convolve(drops, splash, mode="same")) * swell


def _bell(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    f0, out = rng.uniform(300, 900), np.zeros(n)
    for onset in _onsets(rng, n, sr, 0.8, 1.6):
        t = _t(n - onset, sr)
        partials = sum(
            np.sin(2 * np.pi * f0 * r * t) * np.exp(-t * d) / (1 + k)
            for k, (r, d) in enumerate(((1, 2), (2.76, 3), (5.4, 5), (8.93, 8)))
        )
        out[onset:] += partials
    return out


def _knock(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    out, f = np.zeros(n), rng.uniform(150, 400)
    t = _t(int(0.06 * sr), sr)
    hit = np.sin(2 * np.pi * f * t) * np.exp(-t * 80)
    for onset in _onsets(rng, n, sr, 0.15, 0.6):
        _place(out, hit * rng.uniform(0.6, 1.0), onset)
    return out


def _chirp(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    out, dur = np.zeros(n), int(rng.uniform(0.05, 0.15) * sr)
    t = _t(dur, sr)
    f0, f1 = rng.uniform(2500, 4000), rng.uniform(4000, 6000)
    note = np.sin(2 * np.pi * np.cumsum(f0 + (f1 - f0) * t / t[-1]) / sr) * np.hanning(dur)
    for onset in _onsets(rng, n, sr, 0.08, 0.5):
        _place(out, note, onset)
    return out


def _clock(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    out, period = np.zeros(n), int(rng.uniform(0.45, 0.55) * sr)
    length = int(0.004 * sr)
    click = rng.standard_normal(length) * np.exp(-np.arange(length) / (0.001 * sr))
    for k, onset in enumerate(range(int(rng.uniform(0, 0.3) * sr), n, period)):
        _place(out, click * (1.0 if k % 2 else 0.6), onset)  # tick, tock
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
    "duck": ("a duck quacking", "ducks quack", "quacking ducks"),
    "frog": ("a frog croaking", "frogs croak", "croaking of a frog"),
    "horse": ("a horse neighing", "a horse whinnies", "the neigh of a horse"),
    "owl": ("an owl hooting", "the hoot of an owl", "owl calls"),
    "pig": ("a pig grunting", "pigs oink", "grunting of a pig"),
    "rooster": ("a rooster crowing", "a cock crows", "the crow of a rooster"),
    "sheep": ("a sheep bleating", "sheep baa", "the bleat of a sheep"),
}

# ---------------------------------------------------------------------------- speech

#: espeak-ng voices; "+fN" variants are female, captions say so.
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en+m3", "en-us+f3", "en-gb+f2", "en+f4")
SPEECH_CAPTIONS = {
    "male": ("a man speaking", "a man talks", "speech from a male voice"),
    "female": ("a woman speaking", "a woman talks", "speech from a female voice"),
}
SENTENCES = {
    "train": (
        "Please hand me the blue folder on the desk.",
        "The ferry leaves the harbour at half past six.",
        "My neighbour grows tomatoes on her balcony.",
        "We should repaint the fence before the summer.",
        "The printer on the second floor is out of paper.",
        "Turn right after the bakery and cross the bridge.",
        "He practised the violin every evening for a year.",
        "The museum opens late on Thursdays.",
        "Two coffees and a slice of lemon cake, please.",
        "The storm knocked over the old oak tree.",
        "She keeps her bicycle in the hallway.",
        "Our flight was cancelled because of the fog.",
    ),
    "valid": (
        "The library closes early on public holidays.",
        "Could you check the oven in ten minutes?",
        "A flock of geese flew low over the lake.",
        "The new schedule starts next Monday.",
    ),
    "test": (
        "The mechanic fixed the brakes in an hour.",
        "I left my umbrella on the train again.",
        "The choir rehearses in the church hall.",
        "Fresh snow covered the mountain road overnight.",
    ),
}


def _espeak(text: str, voice: str, speed: int, pitch: int, sr: int, tmp: Path) -> np.ndarray:
    wav = tmp / "speech.wav"
    command = ["espeak-ng", "-w", str(wav), "-v", voice, "-s", str(speed), "-p", str(pitch), text]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DataError(f"espeak-ng failed ({first_line(exc)}): pass speech=False") from None
    audio, _ = qaudio.load(wav, sr)
    return audio.mean(axis=0)


def _speech_clips(
    rng: np.random.Generator, split: str, count: int, n: int, sr: int
) -> Iterator[tuple[np.ndarray, tuple[str, ...], str]]:
    """(clip, captions, source) per clip; a sentence is one source, whoever reads it."""
    sentences = SENTENCES[split]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            k = i % len(sentences)
            voice = VOICES[int(rng.integers(len(VOICES)))]
            speed, pitch = int(rng.integers(130, 190)), int(rng.integers(30, 70))
            speech = _espeak(sentences[k], voice, speed, pitch, sr, Path(tmp))[:n]
            clip = np.zeros(n)
            _place(clip, speech, int(rng.integers(0, n - len(speech) + 1)))
            gender = "female" if "+f" in voice else "male"
            yield clip, SPEECH_CAPTIONS[gender], f"speech:{split}:{k}"


# ---------------------------------------------------------------------------- animals


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """libmpg123 prints harmless ID3 warnings about the bundled mp3s straight to fd 2."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def load_animals(folder: Path, sr: int) -> dict[str, np.ndarray]:
    """The ten CC0 recordings, mono at `sr`."""
    missing = [a for a in ANIMAL_CAPTIONS if not (folder / f"{a}.mp3").is_file()]
    if missing:
        raise DataError(
            f"the CC0 animal recordings are not in {folder} (missing {', '.join(missing)}): "
            "pass the repository's tests/data folder as animals="
        )
    with _quiet_stderr():
        return {a: qaudio.load(folder / f"{a}.mp3", sr)[0].mean(axis=0) for a in ANIMAL_CAPTIONS}


def split_regions(recording: np.ndarray, sr: int) -> dict[str, tuple[int, int]]:
    """Consecutive, disjoint [start, end) sample ranges per split, cut so each split gets its
    `SHARES` of the sounding frames: a plain time cut would hand valid and test the silent
    tail of recordings whose sound is all at the start (horse: 72 % of it in the first 26 %)."""
    hop = max(1, sr // 50)
    frames = len(recording) // hop
    rms = np.sqrt(np.mean(recording[: frames * hop].reshape(frames, hop) ** 2, axis=1))
    active = np.flatnonzero(rms > rms.max() * 10 ** (ACTIVE_DB / 20)) if frames else []
    if len(active) < len(SPLITS):
        raise DataError(f"a recording of {len(recording) / sr:.2f} s has too little sound to split")
    cumulative = np.cumsum([SHARES[split] for split in SPLITS])[:-1]  # 0.6, 0.8
    firsts: list[int] = []  # index into `active` of each later split's first sounding frame
    for k, share in enumerate(cumulative):
        lowest = firsts[-1] + 1 if firsts else 1
        highest = len(active) - (len(cumulative) - k)
        firsts.append(int(np.clip(round(len(active) * share), lowest, highest)))
    starts = [0, *(int(active[i]) * hop for i in firsts), len(recording)]
    return {split: (starts[i], starts[i + 1]) for i, split in enumerate(SPLITS)}


def _peaking_eq(x: np.ndarray, sr: int, freq: float, gain_db: float, q: float) -> np.ndarray:
    """A peaking biquad (RBJ cookbook) applied through its frequency response; the padding
    holds the filter's decay, so this is the IIR filter in one FFT."""
    a = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * freq / sr
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a, -2 * np.cos(w0), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * np.cos(w0), 1 - alpha / a])
    size = 1 << int(np.ceil(np.log2(len(x) + sr // 4)))
    z = np.exp(-1j * np.pi * np.arange(size // 2 + 1) / (size // 2))
    response = (b[0] + b[1] * z + b[2] * z**2) / (den[0] + den[1] * z + den[2] * z**2)
    return np.fft.irfft(np.fft.rfft(x, size) * response, size)[: len(x)]


def _animal_clip(
    rng: np.random.Generator, recording: np.ndarray, region: tuple[int, int], n: int, sr: int
) -> np.ndarray:
    """A crop around a sounding frame of the split's region, pitch-shifted by resampling,
    EQ'd by a random peaking filter and placed 1-3 times at random offsets."""
    lo, hi = region
    part = recording[lo:hi]
    length = min(len(part), int(rng.uniform(0.5, 2.0) * sr))
    loud = np.flatnonzero(np.abs(part) >= np.abs(part).max() * 10 ** (ACTIVE_DB / 20))
    centre = int(loud[int(rng.integers(len(loud)))])
    start = int(np.clip(centre - int(rng.integers(length)), 0, len(part) - length))
    event = part[start : start + length]
    event = qaudio.resample(event[None], round(sr * rng.uniform(0.88, 1.12)), sr)[0]
    event = _peaking_eq(event, sr, rng.uniform(200, 4000), rng.uniform(-9, 9), rng.uniform(0.5, 2))
    ramp = np.linspace(0, 1, min(len(event) // 2, int(0.005 * sr)))
    event[: len(ramp)] *= ramp  # no clicks at the crop's edges
    event[len(event) - len(ramp) :] *= ramp[::-1]
    out = np.zeros(n)
    for onset in sorted(rng.integers(0, max(1, n - len(event)), int(rng.integers(1, 4)))):
        _place(out, event, int(onset))
    return out


# ---------------------------------------------------------------------------- corpus


def _check_args(clips_per_class: int, seconds: float, sample_rate: int) -> None:
    if not isinstance(clips_per_class, int) or clips_per_class < 1:
        raise DataError(f"clips_per_class must be a positive whole number, got {clips_per_class}")
    if not 0.5 <= seconds <= 60:
        raise DataError(f"seconds must be between 0.5 and 60, got {seconds}")
    if not isinstance(sample_rate, int) or not 16_000 <= sample_rate <= 96_000:
        raise DataError(f"sample_rate must be a whole number of Hz in 16000-96000, got "
                        f"{sample_rate}")  # fmt: skip


def _write(
    folder: Path,
    split: str,
    name: str,
    clip: np.ndarray,
    captions: tuple[str, ...],
    label: str,
    sr: int,
    rng: np.random.Generator,
    source: str,
) -> Entry:
    """Peak-normalises, applies a random gain (-12..-3 dBFS peak) and writes 16-bit PCM."""
    peak = float(np.abs(clip).max()) or 1.0
    clip = (clip / peak * 10 ** (rng.uniform(-12, -3) / 20)).astype(np.float32)
    qaudio.save(folder / f"{name}.wav", clip[None], sr, subtype="PCM_16")
    return Entry(
        audio=f"audio/{split}/{name}.wav",
        captions=captions,
        labels=(label,),
        duration=len(clip) / sr,
        sample_rate=sr,
        id=f"{split}/{name}",
        source=source,
    )


def synthesize_corpus(
    outdir: str | Path,
    *,
    seed: int = 0,
    clips_per_class: int = 36,
    seconds: float = 4.0,
    sample_rate: int = 16_000,
    speech: bool = True,
    animals: str | Path | None = None,
) -> dict[str, Path]:
    """Writes `outdir/audio/{split}/*.wav` and `outdir/{split}.jsonl`; returns split -> manifest.

    Train gets `clips_per_class` clips per class, valid and test a third of that (at least 2).
    Every class draws from its own seeded generator, so the same seed writes the same bytes.
    Speech is left out when `speech=False` or espeak-ng is not installed.
    """
    _check_args(clips_per_class, seconds, sample_rate)
    outdir = Path(outdir)
    n = round(seconds * sample_rate)
    recordings = load_animals(Path(animals) if animals else ANIMALS, sample_rate)
    regions = {label: split_regions(rec, sample_rate) for label, rec in recordings.items()}
    with_speech = speech and shutil.which("espeak-ng") is not None
    manifests = {}
    for s, split in enumerate(SPLITS):
        count = clips_per_class if split == "train" else max(2, clips_per_class // 3)
        folder = outdir / "audio" / split
        folder.mkdir(parents=True, exist_ok=True)
        entries: list[Entry] = []
        for c, (label, (make, captions)) in enumerate(PROCEDURAL.items()):
            rng = np.random.default_rng([seed, s, c])
            for i in range(count):
                clip, name = make(rng, n, sample_rate), f"{label}_{i:03d}"
                source = f"{label}:{split}:{i}"
                entries.append(
                    _write(folder, split, name, clip, captions, label, sample_rate, rng, source)
                )
        for c, (label, captions) in enumerate(ANIMAL_CAPTIONS.items(), start=len(PROCEDURAL)):
            rng = np.random.default_rng([seed, s, c])
            for i in range(count):
                clip = _animal_clip(rng, recordings[label], regions[label][split], n, sample_rate)
                name, source = f"{label}_{i:03d}", f"animal:{label}:{split}"
                entries.append(
                    _write(folder, split, name, clip, captions, label, sample_rate, rng, source)
                )
        if with_speech:
            rng = np.random.default_rng([seed, s, len(PROCEDURAL) + len(ANIMAL_CAPTIONS)])
            clips = _speech_clips(rng, split, count, n, sample_rate)
            for i, (clip, captions, source) in enumerate(clips):
                name = f"speech_{i:03d}"
                entries.append(
                    _write(folder, split, name, clip, captions, "speech", sample_rate, rng, source)
                )
        manifests[split] = write_manifest(entries, outdir / f"{split}.jsonl")
    return manifests
