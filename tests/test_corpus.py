"""`querysep data corpus`: real sampled instruments and drums, multilingual speech, animals and
procedural sounds, built offline on a tiny subset (a few classes, a few clips)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from querysep.data import corpus, synth
from querysep.data.manifest import read_manifest
from querysep.errors import DataError

SUBSET = ("piano", "bass", "drum_kit", "hi_hat", "woman_speaking", "child_speaking", "dog", "beep")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    corpus.build_corpus(out, clips_per_class=3, seconds=1.5, classes=SUBSET, workers=2)
    return out


def test_the_full_class_table() -> None:
    assert len(corpus.CLASSES) >= 40 and len(set(corpus.CLASSES)) == len(corpus.CLASSES)
    required = {"piano", "acoustic_guitar", "electric_guitar", "bass", "violin", "cello",
                "trumpet", "trombone", "flute", "clarinet", "saxophone", "organ"}  # fmt: skip
    assert required <= set(corpus.GROUPS["instruments"])
    assert set(corpus.GROUPS["drums"]) == {"kick_drum", "snare_drum", "hi_hat", "drum_kit"}
    assert len(corpus.LANGUAGES) >= 4
    for label in corpus.CLASSES:
        assert len(set(corpus.captions_of(label))) >= 3, label
    for lang, splits in corpus.SENTENCES.items():  # a sentence is a source: one split only
        seen = [s for split in synth.SPLITS for s in splits[split]]
        assert len(seen) == len(set(seen)), lang


def test_tiny_corpus_has_what_it_promises(built: Path) -> None:
    sources = {}
    for split in synth.SPLITS:
        manifest = read_manifest(built / f"{split}.jsonl")
        count = 3 if split == "train" else 2
        assert sorted(manifest.labels()) == sorted(SUBSET)
        assert len(manifest) == count * len(SUBSET)
        sources[split] = {e.source for e in manifest}
        for entry in manifest:
            assert entry.license and len(entry.captions) >= 3
            audio, rate = sf.read(manifest.path_of(entry))
            assert rate == 16_000 and len(audio) == 24_000
            assert np.abs(audio).max() > 0.1, entry.id  # rendered, spoken or cut: not silence
            if entry.labels[0] in ("piano", "bass", "drum_kit", "hi_hat"):
                assert "FluidR3_GM" in entry.license and "MIT" in entry.license
            if entry.labels[0] == "woman_speaking":
                assert any("woman speaking" in c and c.split()[-1] in corpus.LANGUAGES.values()
                           for c in entry.captions)  # fmt: skip
    assert not sources["train"] & sources["valid"]
    assert not sources["train"] & sources["test"]
    assert not sources["valid"] & sources["test"]
    table = json.loads((built / "classes.json").read_text())
    assert table["drum_kit"]["group"] == "drums" and table["dog"]["group"] == "animals"
    assert "MIT" in (built / "CREDITS.md").read_text()


def test_instruments_sound_like_their_register(built: Path) -> None:
    """The bass's energy sits far below the piano's: the right programs and ranges played."""

    def centroid(label: str) -> float:
        manifest = read_manifest(built / "train.jsonl")
        values = []
        for entry in manifest:
            if entry.labels[0] == label:
                audio, rate = sf.read(manifest.path_of(entry))
                power = np.abs(np.fft.rfft(audio)) ** 2
                freqs = np.fft.rfftfreq(len(audio), 1 / rate)
                values.append(float((freqs * power).sum() / power.sum()))
        return float(np.median(values))

    assert centroid("bass") < 0.6 * centroid("piano")
    assert centroid("hi_hat") > 2 * centroid("piano")


def test_same_seed_same_bytes(built: Path, tmp_path: Path) -> None:
    corpus.build_corpus(tmp_path, clips_per_class=3, seconds=1.5, classes=("piano", "beep"))

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    for name in ("piano_002.wav", "beep_000.wav"):
        assert digest(tmp_path / "audio" / "train" / name) == digest(
            built / "audio" / "train" / name
        )


def test_composed_phrases_stay_in_range_and_in_time() -> None:
    rng = np.random.default_rng(0)
    for label, spec in corpus.INSTRUMENTS.items():
        notes = corpus.compose(rng, spec, 4.0)
        assert notes, label
        assert all(spec.low <= key <= spec.high and 1 <= vel <= 127 for _, _, key, vel in notes)
        assert all(start >= 0 and start + length <= 4.0 for start, length, _, _ in notes)
    for label in corpus.DRUMS:
        assert corpus.compose_drums(rng, label, 4.0), label


def test_missing_programs_and_bad_classes_are_errors(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(DataError, match="unknown classes banjo"):
        corpus.build_corpus(tmp_path, classes=("piano", "banjo"))
    with pytest.raises(DataError, match="at least two classes"):
        corpus.build_corpus(tmp_path, classes=("piano",))
    with pytest.raises(DataError, match=r"soundfont .*fluid-soundfont-gm"):
        corpus.build_corpus(tmp_path, classes=("piano", "dog"), soundfont=tmp_path / "no.sf2")
    real_which = synth.shutil.which
    monkeypatch.setattr(
        synth.shutil, "which", lambda p: None if p == "fluidsynth" else real_which(p)
    )
    with pytest.raises(DataError, match=r"missing system packages: fluidsynth \(install"):
        corpus.build_corpus(tmp_path, classes=("piano", "dog"))
    monkeypatch.setattr(synth.shutil, "which", lambda p: None)
    with pytest.raises(DataError, match="missing system packages: espeak-ng"):
        synth.synthesize_corpus(tmp_path / "s", clips_per_class=1, seconds=0.5)
    assert not list(tmp_path.rglob("*.jsonl"))  # refused before writing anything
