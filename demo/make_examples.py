"""Rebuilds the demo's examples: bundled CC0 animal recordings mixed with espeak-ng speech.

    python demo/make_examples.py      # writes demo/examples/*.wav and examples.json

Deterministic for a given espeak-ng and libsndfile: the same files every run. Each mixture is
mono 16-bit 16 kHz, at most 8 s (256 kB); the animal sits at 0 dB against the voice, so both
are clearly audible and the query decides which one comes out.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from querysep import audio as qaudio

ROOT = Path(__file__).resolve().parents[1]
SOUNDS = ROOT / "tests" / "data"
OUT = Path(__file__).resolve().parent / "examples"
RATE = 16_000
SECONDS = 8.0
PEAK = 0.9


@dataclass(frozen=True)
class Mixture:
    name: str
    #: (recording in tests/data, start s within it, length s, position s in the mixture)
    sounds: tuple[tuple[str, float, float, float], ...]
    sentence: str


@dataclass(frozen=True)
class Example:
    audio: str
    query: str
    mode: str = "extract"
    example: str | None = None


MIXTURES = (
    Mixture("dog_and_speech", (("dog", 0.0, 4.0, 1.0),),
            "The weather will be sunny this afternoon, with a light breeze from the west."),
    Mixture("cow_and_speech", (("cow", 0.0, 6.0, 0.5),),
            "Please remember to bring your ticket and a valid passport to the gate."),
    Mixture("rooster_duck_and_speech", (("rooster", 0.0, 2.4, 0.3), ("duck", 0.0, 4.0, 3.5)),
            "Good morning everyone, breakfast is ready in the kitchen."),
    Mixture("frog_and_speech", (("frog", 0.0, 7.0, 0.5),),
            "The meeting has been moved to Thursday at ten o'clock."),
)  # fmt: skip
#: A clip of the dog that is not in its mixture (the recording's last 2 s): an example query.
CLIPS = (Mixture("dog_clip", (("dog", 4.0, 2.0, 0.0),), ""),)
EXAMPLES = (
    Example("dog_and_speech.wav", "dog barking"),
    Example("cow_and_speech.wav", "remove the cow"),
    Example("rooster_duck_and_speech.wav", "rooster crowing\nducks quacking"),
    Example("dog_and_speech.wav", "", example="dog_clip.wav"),
    Example("frog_and_speech.wav", "a man speaking", mode="remove"),
)


def speech(sentence: str) -> np.ndarray:
    """Mono float32 speech at RATE from espeak-ng (US English, 150 words per minute)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is needed: apt-get install -y espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run([espeak, "-v", "en-us", "-s", "150", "-w", str(wav), sentence], check=True)
        audio, _ = qaudio.load(wav, RATE)
    return audio.mean(axis=0)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2))) + 1e-9


def render(mix: Mixture) -> np.ndarray:
    """The sounds (and speech) placed on one track, peak-normalised."""
    n = int(SECONDS * RATE) if mix.sentence else 0
    parts: list[tuple[int, np.ndarray]] = []
    for name, start, length, at in mix.sounds:
        audio, _ = qaudio.load(SOUNDS / f"{name}.mp3", RATE)
        clip = audio.mean(axis=0)[int(start * RATE) : int((start + length) * RATE)]
        parts.append((int(at * RATE), clip / rms(clip)))
        n = max(n, int(at * RATE) + len(clip))
    track = np.zeros(n, np.float32)
    for offset, clip in parts:
        end = min(n, offset + len(clip))
        track[offset:end] += clip[: end - offset]
    if mix.sentence:
        voice = speech(mix.sentence)[:n]
        track[: len(voice)] += voice / rms(voice)
    return (track * (PEAK / np.abs(track).max()))[None]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for mix in MIXTURES + CLIPS:
        path = qaudio.save(OUT / f"{mix.name}.wav", render(mix), RATE, subtype="PCM_16")
        print(f"{path} ({path.stat().st_size / 1024:.0f} kB)")
    rows = [{k: v for k, v in vars(e).items() if v is not None} for e in EXAMPLES]
    (OUT / "examples.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(OUT / "examples.json")


if __name__ == "__main__":
    main()
