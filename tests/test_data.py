"""Manifests, metadata converters, folder scans, header checks and the synthetic corpus."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from querysep.data import manifest as mf
from querysep.data import sources
from querysep.data.synth import PROCEDURAL, synthesize_corpus
from querysep.errors import DataError

from .conftest import DATA, bad_audio_files, tone
from .test_cli import ENV

META = DATA / "metadata"


def test_manifest_round_trips_jsonl_and_csv(tmp_path: Path) -> None:
    entries = [
        mf.Entry("a/dog.wav", ("a dog", "dog barks"), ("dog",), 4.0, 16000, "dog", "rec1"),
        mf.Entry("cat.flac", ("a cat",)),
    ]
    for suffix in ("jsonl", "csv"):
        path = mf.write_manifest(entries, tmp_path / f"m.{suffix}")
        back = mf.read_manifest(path)
        assert back.entries[0] == entries[0]
        assert back.entries[1].captions == ("a cat",) and back.entries[1].id == "cat"
        assert back.path_of(back.entries[0]) == tmp_path / "a" / "dog.wav"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio": "x.wav", "captions": ["x"]}\n{"audio": "y.wav"\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not JSON"):
        mf.read_manifest(bad)
    bad.write_text('{"audio": "x.wav", "captions": []}\n')
    with pytest.raises(DataError, match="at least one caption"):
        mf.read_manifest(bad)


def test_check_entries_reports_and_skips_bad_clips(tmp_path: Path) -> None:
    broken = bad_audio_files(tmp_path)
    sf.write(tmp_path / "good.wav", tone(440, 1.5, 16000).T, 16000)
    sf.write(tmp_path / "short.wav", tone(440, 0.2, 16000).T, 16000)
    names = ["good.wav", "short.wav", "gone.wav", *(p.name for p in broken.values())]
    manifest = mf.Manifest([mf.Entry(n, ("x",)) for n in names], tmp_path)
    clean, report = mf.check_entries(manifest, min_seconds=1.0)
    assert [e.audio for e in clean.entries] == ["good.wav"]
    assert clean.entries[0].duration == pytest.approx(1.5) and clean.entries[0].sample_rate == 16000
    assert "gone.wav" in report.skipped["missing"]
    assert "short.wav" in report.skipped["shorter than 1 s"]
    assert sum(map(len, report.skipped.values())) == len(names) - 1
    assert "kept 1 clips" in report.summary()


def test_converters_read_the_published_formats() -> None:
    caps = sources.audiocaps(META / "audiocaps_val.csv")
    assert len(caps) == 2 and caps[0].audio == "vfY_TJq7n_U_130.wav"
    assert len(caps[0].captions) == 2  # two captions of one clip grouped
    clotho = sources.clotho(META / "clotho_captions_evaluation.csv")
    assert clotho[0].audio == "rain on the roof.wav" and len(clotho[0].captions) == 5
    free = sources.wavcaps(META / "wavcaps_freesound.json")
    assert [e.audio for e in free] == ["180913.flac", "442213.flac"]
    assert free[0].duration == 12.5
    sl = sources.wavcaps(META / "wavcaps_audioset_sl.json")
    assert sl[0].audio == "Y-0Bp9oXzF3U.wav"
    fsd = sources.fsd50k(META / "fsd50k_eval.csv")
    assert fsd[1].labels[:2] == ("Dog", "Bark") and fsd[1].audio == "175151.wav"
    assert fsd[1].captions == ("the sound of dog, bark, domestic animals and pets and animal",)
    dcase = sources.dcase2024(META / "dcase2024_dev_captions.csv")
    assert dcase[1].captions == ("A dog barks twice.",) and dcase[1].audio == "175151.wav"
    aset = sources.audioset(META / "audioset_segments.csv", META / "class_labels_indices.csv")
    assert [e.audio for e in aset] == ["Y--PJHxphWEs.wav", "Y--ZhevVpy1s.wav"]
    assert aset[0].labels == ("Speech", "Inside, small room")
    assert aset[1].captions == ("the sound of toot",)


def test_converter_errors_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "c.csv"
    bad.write_text("youtube_id,caption\nabc,hello\n")
    with pytest.raises(DataError, match="missing column"):
        sources.audiocaps(bad)
    with pytest.raises(DataError, match="not found"):
        sources.clotho(tmp_path / "nope.csv")
    seg = tmp_path / "s.csv"
    seg.write_text('x1, 0.0, 10.0, "/m/unknown"\n')
    with pytest.raises(DataError, match="unknown label id"):
        sources.audioset(seg, META / "class_labels_indices.csv")


def test_scan_folder_and_data_cli(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    (root / "dogs").mkdir(parents=True)
    sf.write(root / "dogs" / "dog_barking_01.wav", tone(300, 1.2, 16000).T, 16000)
    sf.write(root / "siren-wail.wav", tone(900, 1.2, 16000).T, 16000)
    sf.write(root / "tiny.wav", tone(900, 0.1, 16000).T, 16000)
    (root / "siren-wail.txt").write_text("a siren wails\nan ambulance siren\n")
    entries = sources.scan_folder(root)
    by = {e.audio: e for e in entries}
    assert by["dogs/dog_barking_01.wav"].captions == ("dog barking",)
    assert by["siren-wail.wav"].captions == ("a siren wails", "an ambulance siren")
    assert sources.scan_folder(root, "parent")[0].captions == ("dogs",)
    out = subprocess.run(
        [sys.executable, "-m", "querysep", "data", "scan", str(root), str(tmp_path / "m.jsonl")],
        capture_output=True, text=True, env=ENV, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "skipped 1" in out.stdout and "tiny.wav" in out.stdout  # too short, reported
    assert len(mf.read_manifest(tmp_path / "m.jsonl")) == 2
    out = subprocess.run(
        [sys.executable, "-m", "querysep", "data", "clotho", str(tmp_path / "none.csv"), "x.jsonl"],
        capture_output=True, text=True, env=ENV, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_synthetic_corpus_is_deterministic_disjoint_and_varied(tmp_path: Path) -> None:
    assert shutil.which("espeak-ng"), "CI installs espeak-ng: speech is part of the corpus"
    kw = {"clips_per_class": 3, "seconds": 1.5}
    a = synthesize_corpus(tmp_path / "a", seed=5, **kw)
    synthesize_corpus(tmp_path / "b", seed=5, **kw)
    synthesize_corpus(tmp_path / "c", seed=6, **kw)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    splits = {s: mf.read_manifest(p) for s, p in a.items()}
    labels = splits["train"].labels()
    assert len(labels) >= 12 and "speech" in labels and "dog" in labels
    assert set(PROCEDURAL) <= labels
    sources_by_split = {s: {e.source for e in m} for s, m in splits.items()}
    assert not sources_by_split["train"] & sources_by_split["test"]
    assert not sources_by_split["train"] & sources_by_split["valid"]
    for entry in splits["test"]:
        assert len(entry.captions) >= 3  # paraphrases
        info = sf.info(splits["test"].path_of(entry))
        assert info.samplerate == 16000 and info.frames == 24000
    assert json.loads(a["train"].read_text().splitlines()[0])["labels"]
