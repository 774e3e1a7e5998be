"""`querysep data ...`: build, convert, check and embed caption manifests."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from querysep.errors import DataError

CONVERTERS = ("audiocaps", "clotho", "wavcaps", "fsd50k", "dcase2024", "audioset")


def add_data_parser(sub: Any) -> None:
    data = sub.add_parser("data", help="build, convert, check and embed caption manifests")
    cmd = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    synth = cmd.add_parser("synth", help="write the offline synthetic LASS corpus + manifests")
    synth.add_argument("outdir", type=Path)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--sample-rate", type=int, default=16_000)
    synth.add_argument("--clips-per-class", type=int, default=12)
    synth.add_argument("--seconds", type=float, default=4.0)
    synth.add_argument("--no-speech", action="store_true", help="leave out espeak-ng speech")
    synth.add_argument("--animals", type=Path, help="folder with the CC0 animal mp3s")

    scan = cmd.add_parser("scan", help="manifest from a folder of audio files")
    scan.add_argument("root", type=Path)
    scan.add_argument("out", type=Path, help="manifest to write (.jsonl or .csv)")
    scan.add_argument("--captions-from", choices=["filename", "parent"], default="filename")
    scan.add_argument("--min-seconds", type=float, default=1.0)

    check = cmd.add_parser("check", help="read every clip's header; report and drop bad clips")
    check.add_argument("manifest", type=Path)
    check.add_argument("--root", type=Path, help="audio root (default: the manifest's folder)")
    check.add_argument("--min-seconds", type=float, default=1.0)
    check.add_argument("--out", type=Path, help="write the clean manifest here")

    for name in CONVERTERS:
        conv = cmd.add_parser(name, help=f"manifest from {name} metadata")
        conv.add_argument("metadata", type=Path, help="the dataset's metadata file")
        conv.add_argument("out", type=Path, help="manifest to write (.jsonl or .csv)")
        conv.add_argument("--root", type=Path, help="audio root: check files and durations")
        conv.add_argument("--min-seconds", type=float, default=1.0)
        if name == "audiocaps":
            conv.add_argument("--pattern", default="{youtube_id}_{start_time}.wav")
        if name == "audioset":
            conv.add_argument("--labels", type=Path, required=True, help="class_labels_indices.csv")
            conv.add_argument("--pattern", default="Y{ytid}.wav")

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
    from querysep.data import manifest as mf
    from querysep.data import sources

    action = args.data_command
    if action == "synth":
        from querysep.data.synth import synthesize_corpus

        paths = synthesize_corpus(
            args.outdir,
            seed=args.seed,
            clips_per_class=args.clips_per_class,
            seconds=args.seconds,
            sample_rate=args.sample_rate,
            speech=not args.no_speech,
            animals=args.animals,
        )
        for split, path in paths.items():
            print(f"{split}: {path} ({len(mf.read_manifest(path))} clips)")
        return 0
    if action == "embed":
        return _embed(args)
    if action == "shards":
        from querysep.data.shards import write_shards

        written = write_shards(mf.read_manifest(args.manifest, root=args.root), args.outdir,
                               args.shard_size)  # fmt: skip
        print(f"wrote {len(written)} shards to {args.outdir}")
        return 0
    if action == "check":
        manifest = mf.read_manifest(args.manifest, root=args.root)
        clean, report = mf.check_entries(manifest, args.min_seconds)
        print(report.summary())
        if args.out:
            mf.write_manifest(clean.entries, args.out)
        return 0
    if action == "scan":
        entries = sources.scan_folder(args.root, args.captions_from)
        root = args.root
    else:
        entries, root = _convert(action, args, sources), args.root
    if not entries:
        raise DataError("no clips found")
    if root is not None:
        manifest, report = mf.check_entries(mf.Manifest(entries, Path(root)), args.min_seconds)
        entries = manifest.entries
        print(report.summary())
    mf.write_manifest(entries, args.out)
    print(f"wrote {args.out} ({len(entries)} clips)")
    return 0


def _convert(action: str, args: argparse.Namespace, sources: Any) -> list:
    if action == "audiocaps":
        return sources.audiocaps(args.metadata, args.pattern)
    if action == "audioset":
        return sources.audioset(args.metadata, args.labels, args.pattern)
    return getattr(sources, action)(args.metadata)


def _embed(args: argparse.Namespace) -> int:
    import json

    import torch
    from safetensors.torch import save_file

    from querysep.data.manifest import read_manifest
    from querysep.files import atomic_write
    from querysep.separator import Separator

    captions = sorted({c for e in read_manifest(args.manifest) for c in e.captions})
    encoder = Separator.from_pretrained(args.model, device="cpu").query_encoder
    # one caption at a time: the same numbers the trainer computes (no padding effects)
    emb = torch.stack([encoder.embed_text([c])[0] for c in captions])
    atomic_write(
        args.out,
        lambda p: save_file(
            {"embeddings": emb.contiguous()}, str(p), metadata={"captions": json.dumps(captions)}
        ),
    )
    print(f"wrote {args.out}: {len(captions)} captions x {emb.shape[1]}")
    return 0


def load_embeddings(path: str | Path) -> dict[str, Any]:
    """caption -> embedding, from a file written by `querysep data embed`."""
    import json

    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"caption embeddings not found: {path}")
    with safe_open(str(path), "pt") as f:
        captions = json.loads(f.metadata()["captions"])
        emb = f.get_tensor("embeddings")
    return dict(zip(captions, emb, strict=True))
