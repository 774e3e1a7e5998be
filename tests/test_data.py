"""Manifests, metadata converters, folder scans, header checks, the synthetic corpus and the
`querysep data` commands (driven through their own parser, as the main CLI wires them)."""

from __future__ import annotations

import argparse
import hashlib
import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from querysep.data import manifest as mf
from querysep.data import sources, synth
from querysep.data.cli import add_data_parser, run_data
from querysep.errors import DataError, QuerysepError

from .conftest import DATA, bad_audio_files, tone

META = DATA / "metadata"


def run(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser(prog="querysep")
    add_data_parser(parser.add_subparsers(dest="command"))
    return run_data(parser.parse_args([str(a) for a in argv]))


def wav(path: Path, seconds: float, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(440, seconds, sr).T, sr)
    return path


def one_line_error(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


# ---------------------------------------------------------------------------- manifests


def test_entry_defaults_and_manifest_api(tmp_path: Path) -> None:
    entry = mf.Entry("clips/dog_001.wav", ["a dog", "dog barks"], ["dog"])  # type: ignore[arg-type]
    assert entry.id == "clips/dog_001" and entry.captions == ("a dog", "dog barks")
    assert mf.Entry("x.flac", "one caption").captions == ("one caption",)  # type: ignore[arg-type]
    manifest = mf.Manifest([entry, mf.Entry("/abs/cat.wav", ("cat",), ("cat",))], tmp_path)
    assert len(manifest) == 2 and [e.id for e in manifest] == ["clips/dog_001", "/abs/cat"]
    assert manifest.labels() == {"dog", "cat"}
    assert manifest.path_of(entry) == tmp_path / "clips" / "dog_001.wav"
    assert manifest.path_of(manifest.entries[1]) == Path("/abs/cat.wav")


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_manifest_round_trips(tmp_path: Path, suffix: str) -> None:
    entries = [
        mf.Entry("a/dog.wav", ("a dog", "dog barks"), ("dog", "animal"), 4.0, 16000, "d1", "rec1"),
        mf.Entry("café/crème.flac", ("an espresso machine hisses, then stops",)),
        mf.Entry("/data/abs.wav", ("absolute",), duration=2.5),
    ]
    path = mf.write_manifest(entries, tmp_path / f"m.{suffix}")
    back = mf.read_manifest(path)
    assert back.entries == entries and back.root == tmp_path
    assert back.entries[1].id == "café/crème" and back.entries[1].duration is None
    assert mf.read_manifest(path, root="/elsewhere").path_of(entries[0]) == Path(
        "/elsewhere/a/dog.wav"
    )
    assert [p.name for p in tmp_path.iterdir()] == [f"m.{suffix}"]  # no temp files left


def test_manifest_reader_accepts_single_captions_and_csv_lists(tmp_path: Path) -> None:
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"audio": "x.wav", "caption": "a | b"}\n\n{"audio": "y.wav", "caption": "y"}')
    assert [e.captions for e in mf.read_manifest(jsonl)] == [("a | b",), ("y",)]
    table = tmp_path / "m.csv"
    table.write_text("audio,caption,labels,duration\nx.wav,a dog|dog barks,dog,3\n")
    (entry,) = mf.read_manifest(table).entries
    assert entry.captions == ("a dog", "dog barks") and entry.labels == ("dog",)
    assert entry.duration == 3.0


BAD_LINES = [
    ("jsonl", '{"audio": "x.wav", "captions": ["x"]}\n{"audio": "y.wav"\n', r"m\.jsonl:2: not JS"),
    ("jsonl", '{"audio": "x.wav", "captions": []}\n', r"m\.jsonl:1: needs at least one caption"),
    ("jsonl", '{"captions": ["x"]}\n', r":1: needs an 'audio' path"),
    ("jsonl", '["x.wav", "x"]\n', r":1: expected a JSON object, got list"),
    ("jsonl", '{"audio": "x.wav", "captions": [1]}\n', r":1: 'captions' must hold strings"),
    ("jsonl", '{"audio": "x.wav", "captions": "x", "duration": -1}\n', "positive number"),
    ("jsonl", '{"audio": "x.wav", "captions": "x", "duration": NaN}\n', "positive number"),
    ("jsonl", '{"audio": "x.wav", "captions": "x", "duration": "long"}\n', "must be a number"),
    ("jsonl", '{"audio": "x.wav", "captions": "x", "sample_rate": 16000.5}\n', "whole number"),
    ("jsonl", '{"audio": "x.wav", "captions": "a"}\n{"audio": "x.wav", "captions": "b"}\n',
     r":2: duplicate id 'x' \(first on line 1\)"),
    ("csv", "audio,labels\nx.wav,dog\n", r"m\.csv:1: missing column\(s\) captions\|caption"),
    ("csv", "audio,captions,duration\nx.wav,a,1\ny.wav,b,soon\n", r"m\.csv:3: 'duration'"),
]  # fmt: skip


@pytest.mark.parametrize(("suffix", "text", "message"), BAD_LINES)
def test_bad_manifest_lines_name_file_and_line(
    tmp_path: Path, suffix: str, text: str, message: str
) -> None:
    path = tmp_path / f"m.{suffix}"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as exc:
        mf.read_manifest(path)
    assert str(path) in one_line_error(exc)


def test_unreadable_manifests_are_data_errors(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"audio": "x.wav", "captions": ["x"]}\n{"audio": "\xff.wav"}\n')
    with pytest.raises(DataError, match=r"m\.jsonl:2: not UTF-8"):
        mf.read_manifest(path)
    with pytest.raises(DataError, match="manifest not found"):
        mf.read_manifest(tmp_path / "none.jsonl")


def test_write_manifest_refuses_what_it_could_not_read_back(tmp_path: Path) -> None:
    path = mf.write_manifest([mf.Entry("x.wav", ("x",))], tmp_path / "m.csv")
    before = path.read_bytes()
    with pytest.raises(DataError, match=r"write a \.jsonl manifest"):
        mf.write_manifest([mf.Entry("y.wav", ("a|b",))], path)
    with pytest.raises(DataError, match="duration must be a positive number"):
        mf.write_manifest([mf.Entry("y.wav", ("a",), duration=float("nan"))], path)
    with pytest.raises(DataError, match="duplicate clip id 'y'"):
        mf.write_manifest([mf.Entry("y.wav", ("a",)), mf.Entry("y.flac", ("b",))], path)
    assert path.read_bytes() == before  # a refused write leaves the old manifest alone


def test_rebase_keeps_paths_pointing_at_the_same_files(tmp_path: Path) -> None:
    entries = [mf.Entry("sub/a.wav", ("a",)), mf.Entry("/abs/b.wav", ("b",))]
    moved = mf.rebase(entries, tmp_path / "data", tmp_path / "manifests" / "deep")
    assert moved[0].audio == "../../data/sub/a.wav" and moved[1].audio == "/abs/b.wav"
    assert moved[0].id == entries[0].id  # ids survive a move
    assert mf.rebase(entries, tmp_path, tmp_path) == entries


# ---------------------------------------------------------------------------- checks and scans


def test_check_entries_reports_and_skips_bad_clips(tmp_path: Path) -> None:
    broken = bad_audio_files(tmp_path)
    wav(tmp_path / "good.wav", 1.5)
    wav(tmp_path / "short.wav", 0.2)
    names = ["good.wav", "short.wav", *broken]
    manifest = mf.Manifest([mf.Entry(n, ("x",)) for n in names], tmp_path)
    clean, report = mf.check_entries(manifest, min_seconds=1.0)
    assert [e.audio for e in clean] == ["good.wav"]
    assert clean.entries[0].duration == pytest.approx(1.5) and clean.entries[0].sample_rate == 16000
    assert report.skipped == {
        "missing": ["missing.wav"],
        "empty": ["empty.wav", "zero.wav"],
        "unreadable": ["random.flac", "folder.wav", "trunc.wav", "trunc.flac", "slow.wav",
                       "nan.wav"],
        "shorter than 1 s": ["short.wav"],
    }  # fmt: skip
    summary = report.summary()
    assert summary.startswith("kept 1 of 11 clips, skipped 10") and "unreadable: 6" in summary
    assert "e.g. " in summary and report.counts()["empty"] == 2
    _, threaded = mf.check_entries(manifest, min_seconds=1.0, workers=1)
    assert threaded.skipped == report.skipped


def test_check_without_headers_trusts_the_manifest(tmp_path: Path) -> None:
    bad_audio_files(tmp_path)
    entries = [
        mf.Entry("random.flac", ("x",), duration=5.0),
        mf.Entry("trunc.wav", ("x",)),
        mf.Entry("empty.wav", ("x",)),
        mf.Entry("full.wav", ("x",), duration=0.5),
    ]
    clean, report = mf.check_entries(mf.Manifest(entries, tmp_path), 1.0, read_headers=False)
    assert [e.audio for e in clean] == ["random.flac", "trunc.wav"]
    assert clean.entries[0].duration == 5.0  # kept as listed, not read
    assert set(report.skipped) == {"empty", "shorter than 1 s"}


def test_scan_folder_captions_from_names_folders_and_sidecars(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    wav(root / "dogs" / "dog_barking_01.wav", 1.2)
    wav(root / "siren-wail.wav", 1.2)
    (root / "siren-wail.txt").write_text("a siren wails\n\n  an ambulance   siren \n")
    wav(root / "DoorKnock.wav", 1.2)
    wav(root / "0001.wav", 1.2)
    wav(root / ".trash" / "old_dog.wav", 1.2)
    (root / "notes.txt").write_text("not audio")
    report = mf.Report()
    by = {e.audio: e for e in mf.scan_folder(root, report=report)}
    assert sorted(by) == ["DoorKnock.wav", "dogs/dog_barking_01.wav", "siren-wail.wav"]
    assert by["dogs/dog_barking_01.wav"].captions == ("dog barking",)
    assert by["dogs/dog_barking_01.wav"].labels == ("dog barking",)
    assert by["DoorKnock.wav"].captions == ("door knock",)
    assert by["siren-wail.wav"].captions == ("a siren wails", "an ambulance siren")
    assert by["siren-wail.wav"].source == "siren-wail"
    assert report.skipped == {"no caption": ["0001.wav"]}
    parent = {e.audio: e.captions for e in mf.scan_folder(root, captions_from="parent")}
    assert parent["dogs/dog_barking_01.wav"] == ("dogs",) and parent["0001.wav"] == ("clips",)
    sidecar = mf.scan_folder(root, captions_from="sidecar")
    assert [e.audio for e in sidecar] == ["siren-wail.wav"] and sidecar[0].labels == ()
    with pytest.raises(DataError, match="captions_from must be"):
        mf.scan_folder(root, captions_from="guess")
    with pytest.raises(DataError, match="not a directory"):
        mf.scan_folder(root / "none")


# ---------------------------------------------------------------------------- converters


def test_audiocaps_groups_captions_and_names_files_by_pattern() -> None:
    caps = sources.audiocaps(META / "audiocaps_val.csv")
    assert [e.audio for e in caps] == ["vfY_TJq7n_U_130.wav", "zsXhH6Yx0vM_30.wav"]
    assert caps[0].captions == ("Rustling occurs while ducks quack",
                                "Ducks quack softly as leaves rustle nearby")  # fmt: skip
    assert caps[0].id == "audiocaps/vfY_TJq7n_U_130" and caps[0].source == "youtube:vfY_TJq7n_U"
    named = sources.audiocaps(META / "audiocaps_val.csv", pattern="Y{youtube_id}_{start:.3f}.wav")
    assert named[1].audio == "YzsXhH6Yx0vM_30.000.wav"


def test_clotho_reads_five_captions_and_quoted_names() -> None:
    clotho = sources.clotho(META / "clotho_captions_evaluation.csv")
    assert [e.audio for e in clotho] == ["rain on the roof.wav", "bird song morning.wav",
                                         "Wind, chimes and gravel.wav"]  # fmt: skip
    assert len(clotho[0].captions) == 5 and clotho[0].captions[0].startswith("Rain falls")
    assert clotho[2].captions[0] == "Wind blows while chimes ring, and gravel crunches."
    assert clotho[2].id == "clotho/Wind, chimes and gravel"


def test_wavcaps_subsets() -> None:
    free = sources.wavcaps(META / "wavcaps_freesound.json")
    assert [e.audio for e in free] == ["180913.flac", "442213.flac"]
    assert free[0].duration == 12.5 and free[0].source == "freesound:180913"
    assert free[0].captions == ("A dog barks repeatedly in a yard.",)
    (sl,) = sources.wavcaps(META / "wavcaps_audioset_sl.json")
    assert sl.audio == "Y-0Bp9oXzF3U.flac" and sl.source == "youtube:-0Bp9oXzF3U"
    (bbc,) = sources.wavcaps(META / "wavcaps_bbc.json", suffix=".wav")
    assert bbc.audio == "07066104.wav" and bbc.id == "wavcaps/bbc/07066104"
    (sb,) = sources.wavcaps(META / "wavcaps_soundbible.json")
    assert sb.source == "soundbible:1234" and sb.duration == 2.4


def test_fsd50k_captions_name_the_specific_classes() -> None:
    fsd = sources.fsd50k(META / "fsd50k_eval.csv")
    assert fsd[1].audio == "175151.wav" and fsd[1].source == "freesound:175151"
    assert fsd[1].labels == ("Dog", "Bark", "Domestic animals and pets", "Animal")
    assert fsd[1].captions == ("the sound of dog and bark",)
    assert fsd[0].captions == ("the sound of electric guitar and guitar",)
    dev = sources.fsd50k(META / "fsd50k_dev.csv", vocabulary=META / "fsd50k_vocabulary.csv")
    assert dev[2].labels == ("Motor vehicle (road)", "Vehicle")
    assert dev[2].captions == ("the sound of motor vehicle (road) and vehicle",)  # all broad
    val = sources.fsd50k(META / "fsd50k_dev.csv", split="val")
    assert [e.id for e in val] == ["fsd50k/16399"]


def test_dcase2024_json_and_csv_share_sources_with_fsd50k() -> None:
    auto = sources.dcase2024(META / "fsd50k_dev_auto_caption.json")
    assert [e.audio for e in auto] == ["64760.wav", "16399.wav"]
    assert auto[1].captions == ("A dog barks several times in a yard.",)
    fsd_sources = {e.source for e in sources.fsd50k(META / "fsd50k_dev.csv")}
    assert {e.source for e in auto} <= fsd_sources  # never mixed with its own FSD50K entry
    table = sources.dcase2024(META / "dcase2024_dev_captions.csv")
    assert table[1].captions == ("A dog barks twice.",) and table[1].audio == "175151.wav"


def test_audioset_labels_become_captions() -> None:
    aset = sources.audioset(META / "audioset_segments.csv", META / "class_labels_indices.csv")
    assert [e.audio for e in aset] == ["Y--PJHxphWEs.wav", "Y--ZhevVpy1s.wav"]
    assert aset[0].labels == ("Speech", "Inside, small room")
    assert aset[0].captions == ("the sound of speech and inside, small room",)
    assert aset[1].captions == ("the sound of toot",) and aset[1].source == "youtube:--ZhevVpy1s"
    desed = sources.audioset(META / "audioset_segments.csv", META / "class_labels_indices.csv",
                             pattern="Y{ytid}_{start:.3f}_{end:.3f}.wav")  # fmt: skip
    assert desed[0].audio == "Y--PJHxphWEs_30.000_40.000.wav"


def test_converter_errors_are_one_line_and_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "c.csv"
    bad.write_text("youtube_id,caption\nabc,hello\n")
    seg = tmp_path / "s.csv"
    seg.write_text('# YTID, start_seconds, end_seconds, positive_labels\nx1, 0.0, 10.0, "/m/zz"\n')
    broken = tmp_path / "w.json"
    broken.write_text('{"data": [{"id": "1", "caption": "x"},\n {"id": "2"}]}')
    cases = [
        (lambda: sources.audiocaps(bad), r"c\.csv:1: missing column\(s\) start_time"),
        (lambda: sources.clotho(tmp_path / "nope.csv"), "metadata file not found"),
        (lambda: sources.audioset(seg, META / "class_labels_indices.csv"),
         r"s\.csv:2: unknown label id /m/zz"),
        (lambda: sources.audiocaps(META / "audiocaps_val.csv", pattern="{ytid}.wav"),
         r"unknown field \{ytid\} \(use \{youtube_id\}"),
        (lambda: sources.wavcaps(broken), r"w\.json: record 1: needs an 'id' and a 'caption'"),
        (lambda: sources.fsd50k(META / "fsd50k_eval.csv", vocabulary=META / "fsd50k_eval.csv"),
         "is not in"),
        (lambda: sources.fsd50k(META / "fsd50k_eval.csv", split="train"), "missing column"),
        (lambda: sources.dcase2024(META / "audiocaps_val.csv"), "needs a file name"),
    ]  # fmt: skip
    broken_json = tmp_path / "b.json"
    broken_json.write_text('{"data": [\n{"id": 1,}]}')
    cases.append((lambda: sources.wavcaps(broken_json), r"b\.json:2: not JSON"))
    for call, message in cases:
        with pytest.raises(DataError, match=message) as exc:
            call()
        one_line_error(exc)


def test_locate_finds_clips_stored_with_another_extension(tmp_path: Path) -> None:
    wav(tmp_path / "sub" / "a.flac", 1.0)
    found = sources.locate([mf.Entry("sub/a.wav", ("a",)), mf.Entry("b.wav", ("b",))], tmp_path)
    assert [e.audio for e in found] == ["sub/a.flac", "b.wav"]
    assert found[0].id == "sub/a"  # the id is not re-derived from the new name


# ---------------------------------------------------------------------------- data commands


def test_data_cli_converts_checks_and_scans(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    audio = tmp_path / "FSD50K.dev_audio"
    wav(audio / "64760.flac", 1.5)  # the metadata says .wav: found anyway
    wav(audio / "16399.wav", 0.4)  # too short; 21914 is missing
    out = tmp_path / "manifests" / "fsd.jsonl"
    assert run("data", "fsd50k", META / "fsd50k_dev.csv", out, "--root", audio) == 0
    printed = capsys.readouterr().out
    assert "kept 1 of 3 clips" in printed and "missing: 1 (21914.wav)" in printed
    assert "shorter than 1 s: 1 (16399.wav)" in printed
    manifest = mf.read_manifest(out)
    assert [e.audio for e in manifest] == ["../FSD50K.dev_audio/64760.flac"]
    assert manifest.path_of(manifest.entries[0]).is_file()
    assert manifest.entries[0].duration == pytest.approx(1.5)

    shared = tmp_path / "shared.jsonl"
    run("data", "fsd50k", META / "fsd50k_dev.csv", shared, "--root", audio,
        "--relative-to", tmp_path)  # fmt: skip
    assert mf.read_manifest(shared).entries[0].audio == "FSD50K.dev_audio/64760.flac"

    clean = tmp_path / "elsewhere" / "clean.csv"
    assert run("data", "check", out, "--out", clean, "--min-seconds", "1.2") == 0
    assert mf.read_manifest(clean).path_of(mf.read_manifest(clean).entries[0]).is_file()
    run("data", "check", shared, "--min-seconds", "2")
    assert "shorter than 2 s: 1" in capsys.readouterr().out

    unchecked = tmp_path / "unchecked.jsonl"
    run("data", "audioset", META / "audioset_segments.csv", unchecked,
        "--labels", META / "class_labels_indices.csv")  # fmt: skip
    assert len(mf.read_manifest(unchecked)) == 2 and "not checked" in capsys.readouterr().out

    named = tmp_path / "named"
    wav(named / "dog_bark.wav", 1.5)
    wav(named / "tiny_beep.wav", 0.2)
    wav(named / "0042.wav", 1.5)
    scanned = tmp_path / "manifests" / "scan.jsonl"
    assert run("data", "scan", named, scanned) == 0
    printed = capsys.readouterr().out
    assert "1 files skipped, no caption: 0042.wav" in printed and "tiny_beep.wav" in printed
    (entry,) = mf.read_manifest(scanned).entries
    assert entry.captions == ("dog bark",) and entry.audio == "../named/dog_bark.wav"


def test_data_cli_errors_are_querysep_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QuerysepError, match="no usable clips"):
        run("data", "clotho", META / "clotho_captions_evaluation.csv", tmp_path / "c.jsonl",
            "--root", empty)  # fmt: skip
    assert not (tmp_path / "c.jsonl").exists()
    with pytest.raises(QuerysepError, match="metadata file not found"):
        run("data", "wavcaps", tmp_path / "none.json", tmp_path / "w.jsonl")
    with pytest.raises(QuerysepError, match="no audio files with captions"):
        run("data", "scan", empty, tmp_path / "s.jsonl")
    with pytest.raises(QuerysepError, match="clips_per_class"):
        run("data", "synth", tmp_path / "corpus", "--clips-per-class", "0")


# ---------------------------------------------------------------------------- synthetic corpus


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_synthetic_corpus_is_deterministic_disjoint_and_varied(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert shutil.which("espeak-ng"), "CI installs espeak-ng: speech is part of the corpus"
    assert run("data", "synth", tmp_path / "a", "--seed", "5", "--clips-per-class", "2",
               "--seconds", "1") == 0  # fmt: skip
    assert "test: " in capsys.readouterr().out
    kw = {"clips_per_class": 2, "seconds": 1.0}
    synth.synthesize_corpus(tmp_path / "b", seed=5, **kw)
    synth.synthesize_corpus(tmp_path / "c", seed=6, **kw)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")

    splits = {s: mf.read_manifest(tmp_path / "a" / f"{s}.jsonl") for s in synth.SPLITS}
    labels = splits["train"].labels()
    assert len(labels) >= 12 and {"speech", *synth.PROCEDURAL, *synth.ANIMAL_CAPTIONS} == labels
    assert all(m.labels() == labels for m in splits.values())
    by_split = {s: {e.source for e in m} for s, m in splits.items()}
    for one, other in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not by_split[one] & by_split[other], (one, other)
    assert not set(synth.SENTENCES["train"]) & set(synth.SENTENCES["test"])

    captions: dict[str, set[str]] = {}
    for entry in (e for m in splits.values() for e in m):
        captions.setdefault(entry.labels[0], set()).update(entry.captions)
        audio, rate = sf.read(splits["test"].path_of(entry))
        assert rate == 16000 and len(audio) == 16000 and entry.duration == 1.0
        assert np.abs(audio).max() > 0.2  # every clip sounds, animal crops included
    assert all(len(c) >= 3 for c in captions.values())  # paraphrases per class
    assert captions["speech"] & {"a man speaking", "a woman speaking"}


def test_animal_regions_are_disjoint_and_each_holds_sound() -> None:
    for label, recording in synth.load_animals(synth.ANIMALS, 16000).items():
        regions = synth.split_regions(recording, 16000)
        bounds = [regions[s] for s in synth.SPLITS]
        assert bounds[0][0] == 0 and bounds[-1][1] == len(recording)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        loudest = np.abs(recording).max()
        for start, end in bounds:
            assert end > start and np.abs(recording[start:end]).max() > 0.1 * loudest, label
    with pytest.raises(DataError, match="too little sound"):
        synth.split_regions(np.zeros(16000), 16000)


def test_peaking_eq_is_the_biquad() -> None:
    rng = np.random.default_rng(0)
    x, sr, freq, gain, q = rng.standard_normal(3000), 16000, 1200.0, 7.0, 1.3
    a = 10 ** (gain / 40)
    w0 = 2 * np.pi * freq / sr
    alpha = np.sin(w0) / (2 * q)
    b = [1 + alpha * a, -2 * np.cos(w0), 1 - alpha * a]
    den = [1 + alpha / a, -2 * np.cos(w0), 1 - alpha / a]
    y = np.zeros_like(x)
    for i in range(len(x)):  # the difference equation, sample by sample
        y[i] = (b[0] * x[i] + b[1] * x[i - 1] * (i > 0) + b[2] * x[i - 2] * (i > 1)
                - den[1] * y[i - 1] * (i > 0) - den[2] * y[i - 2] * (i > 1)) / den[0]  # fmt: skip
    np.testing.assert_allclose(synth._peaking_eq(x, sr, freq, gain, q), y, atol=1e-6)


def test_synth_options_and_bad_arguments(tmp_path: Path) -> None:
    paths = synth.synthesize_corpus(tmp_path / "hq", clips_per_class=1, seconds=0.5,
                                    sample_rate=32000, speech=False)  # fmt: skip
    train = mf.read_manifest(paths["train"])
    assert "speech" not in train.labels() and len(train) == 19
    assert sf.info(train.path_of(train.entries[0])).samplerate == 32000
    for kwargs, message in (({"clips_per_class": 0}, "clips_per_class"),
                            ({"seconds": 0.1}, "seconds"), ({"sample_rate": 8000}, "sample_rate"),
                            ({"animals": tmp_path}, "animal recordings are not in")):  # fmt: skip
        with pytest.raises(DataError, match=message):
            synth.synthesize_corpus(tmp_path / "x", **kwargs)  # type: ignore[arg-type]
