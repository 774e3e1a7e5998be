"""`querysep data ...`: build, convert, check and embed caption manifests."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from querysep.errors import DataError

#: Converter sub-commands -> one-line help.
CONVERTERS = {
    "audiocaps": "AudioCaps train/val/test.csv (captions of one clip grouped)",
    "clotho": "Clotho v2 clotho_captions_<split>.csv (caption_1..caption_5)",
    "wavcaps": "WavCaps json (FreeSound, BBC Sound Effects, SoundBible, AudioSet_SL)",
    "fsd50k": "FSD50K ground truth dev.csv / eval.csv (captions from the class names)",
    "dcase2024": "DCASE 2024 T9 captions (fsd50k_dev_auto_caption.json, or a CSV)",
    "audioset": "AudioSet segments csv + class_labels_indices.csv (captions from class names)",
}


def _checking_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-seconds", type=float, default=1.0, help="drop shorter clips (1.0)")
    p.add_argument("--workers", type=int, default=8, help="threads reading headers (8)")


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--relative-to",
        type=Path,
        metavar="DIR",
        help="write audio paths relative to DIR (default: OUT's folder, so the manifest "
        "finds its clips as it is; give the data.root of a training config instead)",
    )


def _corpus_options(p: argparse.ArgumentParser) -> None:
    """What `data synth` and `data corpus` share (the same keywords of their builders)."""
    p.add_argument("outdir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-rate", type=int, default=16_000, help="16000 (default) to 96000")
    p.add_argument("--clips-per-class", type=int, default=36, help="train clips per class")
    p.add_argument("--seconds", type=float, default=4.0, help="clip length (4.0)")
    p.add_argument("--animals", type=Path, help="folder with the CC0 animal mp3s")


def _corpus_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "seed": args.seed,
        "clips_per_class": args.clips_per_class,
        "seconds": args.seconds,
        "sample_rate": args.sample_rate,
        "animals": args.animals,
    }


def add_data_parser(sub: Any) -> None:
    data = sub.add_parser("data", help="build, convert, check and embed caption manifests")
    cmd = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    synth = cmd.add_parser("synth", help="write the offline synthetic LASS corpus + manifests")
    _corpus_options(synth)
    synth.add_argument("--no-speech", action="store_true", help="leave out espeak-ng speech")

    corpus = cmd.add_parser(
        "corpus",
        help="write querysep-mini's corpus of real sounds (sampled instruments and drums, "
        "speech in four languages, animals, procedural) + manifests",
    )
    _corpus_options(corpus)
    corpus.add_argument("--classes", help="comma-separated subset of the classes (default: all)")
    corpus.add_argument("--soundfont", type=Path, help="General MIDI .sf2 (default: FluidR3_GM)")

    scan = cmd.add_parser("scan", help="manifest from a folder of audio files")
    scan.add_argument("root", type=Path)
    scan.add_argument("out", type=Path, help="manifest to write (.jsonl or .csv)")
    scan.add_argument(
        "--captions-from",
        choices=["filename", "parent", "sidecar"],
        default="filename",
        help="caption source when a file has no NAME.txt sidecar (sidecar: skip such files)",
    )
    _checking_options(scan)
    _output_options(scan)

    check = cmd.add_parser("check", help="read every clip's header; report and drop bad clips")
    check.add_argument("manifest", type=Path)
    check.add_argument("--root", type=Path, help="audio root (default: the manifest's folder)")
    check.add_argument("--out", type=Path, help="write the clean manifest here")
    _checking_options(check)
    check.add_argument(
        "--relative-to",
        type=Path,
        metavar="DIR",
        help="write paths relative to DIR (default: --root if given, else OUT's folder)",
    )

    for name, what in CONVERTERS.items():
        conv = cmd.add_parser(name, help=f"manifest from {what}")
        conv.add_argument("metadata", type=Path, help="the dataset's metadata file")
        conv.add_argument("out", type=Path, help="manifest to write (.jsonl or .csv)")
        conv.add_argument(
            "--root", type=Path, help="the dataset's audio folder: clips are found, checked, "
            "and missing or bad ones reported and left out"
        )  # fmt: skip
        _checking_options(conv)
        _output_options(conv)
    converters = cmd.choices
    converters["audiocaps"].add_argument(
        "--pattern",
        default="{youtube_id}_{start_time}.wav",
        help="file names from {youtube_id}, {start_time}, {end}, e.g. 'Y{youtube_id}.wav'",
    )
    converters["wavcaps"].add_argument("--suffix", default=".flac", help="audio file extension")
    converters["fsd50k"].add_argument(
        "--vocabulary", type=Path, help="FSD50K vocabulary.csv: labels from the mids, checked"
    )
    converters["fsd50k"].add_argument("--split", help="dev.csv rows of this split (train, val)")
    converters["audioset"].add_argument(
        "--labels", type=Path, required=True, help="class_labels_indices.csv"
    )
    converters["audioset"].add_argument(
        "--pattern", default="Y{ytid}.wav", help="file names from {ytid}, {start}, {end}"
    )

    shards = cmd.add_parser("shards", help="pack a manifest's clips into WebDataset tar shards")
    shards.add_argument("manifest", type=Path)
    shards.add_argument("outdir", type=Path)
    shards.add_argument("--root", type=Path, help="audio root (default: the manifest's folder)")
    shards.add_argument("--shard-size", type=int, default=1000, help="clips per shard")

    embed = cmd.add_parser("embed", help="pre-compute caption embeddings for training")
    embed.add_argument("manifest", type=Path)
    embed.add_argument("out", type=Path, help=".safetensors file to write")
    embed.add_argument("-m", "--model", required=True, help="the bundle being trained")


def run_data(args: argparse.Namespace) -> int:
    """Runs one `querysep data` action; bad input raises a QuerysepError (one line)."""
    actions: dict[str, Callable[[argparse.Namespace], int]] = {
        "synth": _synth,
        "corpus": _corpus,
        "scan": _scan,
        "check": _check,
        "shards": _shards,
        "embed": _embed,
    }
    action = actions.get(args.data_command, _convert)
    return action(args)


def _synth(args: argparse.Namespace) -> int:
    from querysep.data.synth import synthesize_corpus

    started = time.perf_counter()
    paths = synthesize_corpus(args.outdir, speech=not args.no_speech, **_corpus_kwargs(args))
    return _report(paths, args.outdir, started)


def _corpus(args: argparse.Namespace) -> int:
    from querysep.data.corpus import build_corpus

    started = time.perf_counter()
    classes = (
        tuple(c.strip() for c in args.classes.split(",") if c.strip()) if args.classes else None
    )
    paths = build_corpus(
        args.outdir, classes=classes, soundfont=args.soundfont, **_corpus_kwargs(args)
    )
    return _report(paths, args.outdir, started)


def _report(paths: dict[str, Path], outdir: Path, started: float) -> int:
    from querysep.data.manifest import read_manifest

    for split, path in paths.items():
        manifest = read_manifest(path)
        print(f"{split}: {path} ({len(manifest)} clips, {len(manifest.labels())} classes)")
    print(f"wrote {outdir} in {time.perf_counter() - started:.1f} s")
    return 0


def _write_checked(
    entries: list, root: Path, base: Path, args: argparse.Namespace, what: str
) -> int:
    """Checks `entries` (paths relative to `root`), prints the report, writes what is usable
    with paths relative to `base`."""
    from querysep.data import manifest as mf

    clean, report = mf.check_entries(
        mf.Manifest(entries, root), args.min_seconds, workers=args.workers,
        progress=sys.stderr.isatty() and len(entries) > 1000,
    )  # fmt: skip
    print(report.summary())
    if not clean.entries:
        raise DataError(f"no usable clips in {what}: nothing written")
    mf.write_manifest(mf.rebase(clean.entries, root, base), args.out)
    print(f"wrote {args.out} ({len(clean)} clips, paths relative to {base})")
    return 0


def _scan(args: argparse.Namespace) -> int:
    from querysep.data.manifest import Report, scan_folder

    report = Report()
    entries = scan_folder(args.root, captions_from=args.captions_from, report=report)
    for reason, names in report.skipped.items():
        print(f"{len(names)} files skipped, {reason}: {', '.join(names[:3])}"
              + (", ..." if len(names) > 3 else ""))  # fmt: skip
    if not entries:
        raise DataError(f"no audio files with captions under {args.root}")
    return _write_checked(entries, args.root, args.relative_to or args.out.parent, args, "scan")


def _check(args: argparse.Namespace) -> int:
    from querysep.data import manifest as mf

    manifest = mf.read_manifest(args.manifest, root=args.root)
    if args.out is None:
        _, report = mf.check_entries(manifest, args.min_seconds, workers=args.workers,
                                     progress=sys.stderr.isatty())  # fmt: skip
        print(report.summary())
        return 0
    base = args.relative_to or args.root or args.out.parent
    return _write_checked(manifest.entries, manifest.root, base, args, str(args.manifest))


def _read_metadata(args: argparse.Namespace) -> list:
    from querysep.data import sources

    action = args.data_command
    if action == "audiocaps":
        return sources.audiocaps(args.metadata, pattern=args.pattern)
    if action == "wavcaps":
        return sources.wavcaps(args.metadata, suffix=args.suffix)
    if action == "fsd50k":
        return sources.fsd50k(args.metadata, vocabulary=args.vocabulary, split=args.split)
    if action == "audioset":
        return sources.audioset(args.metadata, args.labels, pattern=args.pattern)
    if action in CONVERTERS:
        return getattr(sources, action)(args.metadata)
    raise DataError(f"unknown data action {action!r}")


def _convert(args: argparse.Namespace) -> int:
    from querysep.data.manifest import write_manifest
    from querysep.data.sources import locate

    entries = _read_metadata(args)
    if not entries:
        raise DataError(f"{args.metadata} lists no clips")
    print(f"{args.metadata}: {len(entries)} clips")
    if args.root is None:
        write_manifest(entries, args.out)
        print(f"wrote {args.out} ({len(entries)} clips, not checked: no --root; paths are "
              "relative to the dataset's audio folder)")  # fmt: skip
        return 0
    if not args.root.is_dir():
        raise DataError(f"--root {args.root} is not a directory")
    entries = locate(entries, args.root)
    base = args.relative_to or args.out.parent
    return _write_checked(entries, args.root, base, args, str(args.metadata))


def _shards(args: argparse.Namespace) -> int:
    from querysep.data.manifest import read_manifest
    from querysep.data.shards import write_shards

    manifest = read_manifest(args.manifest, root=args.root)
    written = write_shards(manifest, args.outdir, args.shard_size)
    print(f"wrote {len(written)} shards to {args.outdir}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    import torch

    from querysep.data.manifest import read_manifest
    from querysep.query.embeddings import embed_caption, save_embeddings
    from querysep.separator import Separator

    captions = sorted({c for e in read_manifest(args.manifest) for c in e.captions})
    encoder = Separator.from_pretrained(args.model, device="cpu").query_encoder
    emb = torch.stack([embed_caption(encoder, c) for c in captions])
    save_embeddings(args.out, captions, emb)
    print(f"wrote {args.out}: {len(captions)} captions x {emb.shape[1]}")
    return 0
