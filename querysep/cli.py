"""The `querysep` command line: a thin mirror of the Python API."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from querysep import __version__
from querysep.errors import QuerysepError, first_line

BENCHMARK_CHOICES = (
    "audiocaps", "clotho", "esc50", "music", "audioset", "vggsound", "dcase2024", "manifest"
)  # fmt: skip
#: Inputs at least this long get a progress bar.
PROGRESS_SECONDS = 30.0


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line too (`--help` shows the usage), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"querysep: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="querysep",
        description="Query-conditioned sound separation: extract or remove any sound "
        "by text or example.",
    )
    parser.add_argument("--version", action="version", version=f"querysep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sep = sub.add_parser(
        "separate",
        help="separate recordings (files, folders, globs, a manifest) by one or more queries",
        description="Writes <stem>_<query>.wav (what the query asks for) and "
        "<stem>_<query>_residual.wav (the rest) per input and query, mirroring the inputs' "
        "folders under OUT. 'remove the X' / 'everything except the X' ask for the rest. "
        "Outputs that exist are kept and their item skipped (--force redoes it); a run over "
        "several inputs logs every item to OUT/querysep-log.jsonl and goes on past bad ones. "
        "Under torchrun / accelerate launch every rank takes its share of the items.",
    )
    sep.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="audio files, folders (searched recursively) or glob patterns; `INPUT QUERY` "
        "with one file keeps working: a last argument that is no path is the text query",
    )
    sep.add_argument(
        "--manifest",
        type=Path,
        metavar="FILE",
        help="JSONL or CSV of items: audio, query, negative, query_audio, audio_weight, output",
    )
    sep.add_argument("--force", action="store_true", help="redo items whose outputs exist")
    sep.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="files decoded and written in parallel around the model (default: 2, or the batch "
        "size on a GPU)",
    )
    sep.add_argument(
        "-q",
        "--query",
        dest="more",
        action="append",
        default=[],
        metavar="QUERY",
        help="another query (repeatable): all queries share one pass over the audio",
    )
    sep.add_argument(
        "--query-audio",
        type=Path,
        metavar="PATH",
        help="an example recording of the target sound; mixed with QUERY when both are given",
    )
    sep.add_argument(
        "--audio-weight",
        type=float,
        default=0.5,
        metavar="W",
        help="weight of --query-audio against QUERY when both are given (default 0.5)",
    )
    sep.add_argument(
        "--negative", action="append", metavar="Q", help="a sound that must not be extracted"
    )
    sep.add_argument(
        "-m",
        "--model",
        help="bundle directory, Hub id or registry name (default: the registry default)",
    )
    sep.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("separated"),
        help="output directory (default ./separated)",
    )
    sep.add_argument("--format", choices=["wav", "flac"], default="wav")
    sep.add_argument("--subtype", help="sample format: FLOAT (wav default), PCM_16, PCM_24, PCM_32")
    sep.add_argument(
        "--chunk-seconds", type=float, metavar="S", help="chunk length (default: the model's)"
    )
    sep.add_argument("--overlap", type=float, metavar="F", help="chunk overlap fraction in [0, 1)")
    sep.add_argument("--batch-size", type=int, metavar="N", help="chunks per forward pass")
    sep.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    sep.add_argument(
        "--dtype", choices=["fp32", "bf16", "fp16"], help="compute precision (default fp32)"
    )
    sep.add_argument(
        "--steps", type=int, metavar="N", help="sampling steps (flow models; default: the model's)"
    )
    sep.add_argument(
        "--guidance", type=float, metavar="W", help="classifier-free guidance scale (flow models)"
    )
    sep.add_argument(
        "--shift", type=float, metavar="S", help="sigma schedule shift (flow models; 1: even)"
    )
    sep.add_argument("--seed", type=int, help="sampling seed (flow models): same seed, same output")
    sep.add_argument(
        "--candidates",
        type=int,
        metavar="K",
        help="flow models: sample K targets per chunk, keep the best by CLAPScore",
    )
    sep.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model: minutes once, then faster (for long runs and collections)",
    )
    sep.add_argument("--quiet", action="store_true", help="no progress bar, only errors")

    init = sub.add_parser("init-model", help="write a randomly initialised bundle from a config")
    init.add_argument(
        "config", type=Path, help="a model config, e.g. configs/models/bandsplit-tiny.yaml"
    )
    init.add_argument("outdir", type=Path)
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--force", action="store_true", help="replace an existing bundle in OUTDIR")

    models = sub.add_parser("models", help="list the named pretrained models")
    models.add_argument(
        "-v", "--verbose", action="store_true", help="also list sources and the sounds known"
    )
    models.add_argument(
        "--fetch", metavar="NAME", help="download and convert a named model into the cache now"
    )

    pack = sub.add_parser(
        "pack", help="a trained bundle -> a packaged model folder (fp16 weights, SHA256SUMS)"
    )
    pack.add_argument("bundle", type=Path)
    pack.add_argument("outdir", type=Path)
    pack.add_argument("--sounds", type=Path, help="the corpus's classes.json: what it knows")
    pack.add_argument("--force", action="store_true", help="replace a non-empty OUTDIR")

    convert = sub.add_parser("convert", help="import another project's checkpoint as a bundle")
    convert_sub = convert.add_subparsers(dest="format", metavar="FORMAT", required=True)
    audiosep = convert_sub.add_parser(
        "audiosep",
        help="AudioSep Lightning checkpoint (separator + LAION-CLAP) -> querysep bundle",
        description="Reads the checkpoint with torch.load(weights_only=True), maps every "
        "separator and CLAP tensor (or reports why it is dropped) and writes a safetensors bundle.",
    )
    audiosep.add_argument("checkpoint", type=Path, help="e.g. audiosep_base_4M_steps.ckpt")
    audiosep.add_argument("outdir", type=Path)
    audiosep.add_argument(
        "--tokenizer",
        type=Path,
        metavar="DIR",
        help="directory with roberta-base's vocab.json and merges.txt "
        "(default: download them from the Hub)",
    )
    audiosep.add_argument("--force", action="store_true", help="replace an existing bundle")

    train = sub.add_parser(
        "train",
        help="train or fine-tune a separator (Accelerate; resumes from its last checkpoint)",
        description="Single process: `querysep train CONFIG`. Several GPUs or nodes: "
        "`accelerate launch -m querysep train CONFIG` (or torchrun).",
    )
    train.add_argument("config", type=Path, help="e.g. configs/train/synth-smoke.yaml")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.max_steps=100 (repeatable)",
    )

    clap = sub.add_parser(
        "train-clap",
        help="fit a CLAP query encoder to a manifest's clips and captions (contrastive)",
        description="Writes a ClapModel + ClapProcessor folder that model configs "
        "(query_encoder: {path: OUT}) and training configs (model.query_encoder: OUT) take. "
        "Offline it starts from a random tiny CLAP; give --init to adapt a real one.",
    )
    clap.add_argument("manifest", type=Path, help="training manifest (clips with captions)")
    clap.add_argument("out", type=Path, help="output folder")
    clap.add_argument(
        "--init",
        default="tiny",
        help="tiny (default: the tests' random tiny CLAP), captions (random, with a vocabulary "
        "of the manifest's caption words and a wider text tower; tried for querysep-mini, not "
        "yet its recipe: bench/README.md), a CLAP folder or a Hub id to start from",
    )
    clap.add_argument("--valid", type=Path, help="manifest scored before and after (zero-shot)")
    clap.add_argument("--root", type=Path, help="root for the manifests' relative audio paths")
    clap.add_argument("--steps", type=int, default=300)
    clap.add_argument("--batch-size", type=int, default=16, help="clips per step, one per class")
    clap.add_argument(
        "--lr",
        type=float,
        help="peak learning rate (default 2e-3 from the tiny CLAP, 1e-5 from a pretrained one: "
        "more would erase what it knows)",
    )
    clap.add_argument("--seconds", type=float, default=3.0, help="crop length")
    clap.add_argument("--seed", type=int, default=0)
    clap.add_argument(
        "--batched-features",
        action="store_true",
        help="compute the log-mel features in torch, batched (unfused CLAPs; a quarter less "
        "time per step; `make mini` fits querysep-mini's encoder with it)",
    )
    clap.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 autocast (about 2x faster on CPUs with bf16 units such as AMX; "
        "`make mini` uses it)",
    )
    clap.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    clap.add_argument("--quiet", action="store_true")

    from querysep.data.cli import add_data_parser

    add_data_parser(sub)

    ev = sub.add_parser(
        "evaluate",
        help="score a model on a LASS benchmark (AudioSep lists, DCASE 2024 T9, any manifest)",
        description="Writes items.csv (resumable), summary.json, summary.md (published numbers "
        "beside ours) and sdri.png into OUT. SDR is the plain SNR, as AudioSep and DCASE report.",
    )
    ev.add_argument("benchmark", choices=[*BENCHMARK_CHOICES])
    ev.add_argument("eval_list", type=Path, help="the benchmark's CSV, or a manifest")
    ev.add_argument("--audio-dir", type=Path, help="where the list's audio lives")
    ev.add_argument("-m", "--model", help="bundle, Hub id or registry name (default: the default)")
    ev.add_argument("-o", "--out", type=Path, required=True, help="results directory")
    ev.add_argument("--rate", type=int, help="evaluation rate (default 32000; 16000 for dcase2024)")
    ev.add_argument("--limit", type=int, help="only the first N items")
    ev.add_argument("--items", type=int, default=200, help="manifest: mixtures to draw")
    ev.add_argument("--seconds", type=float, default=5.0, help="manifest: mixture length")
    ev.add_argument("--seed", type=int, default=0, help="manifest: mixing seed")
    ev.add_argument("--bss", action="store_true", help="also bss_eval SDR (fast_bss_eval)")
    ev.add_argument("--clap-score", action="store_true", help="also CLAPScore")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--quiet", action="store_true")

    demo = sub.add_parser("demo", help="launch the Gradio web demo locally")
    demo.add_argument(
        "-m", "--model", action="append", help="bundle, Hub id or registry name (repeatable)"
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--share", action="store_true", help="also open a public gradio.live link")

    space = sub.add_parser("space", help="build or deploy the demo as a Hugging Face Space")
    space_sub = space.add_subparsers(dest="space_command", metavar="ACTION", required=True)
    build = space_sub.add_parser(
        "build", help="write a self-contained Space folder (app, pinned requirements, wheel)"
    )
    build.add_argument("outdir", type=Path)
    build.add_argument(
        "-m", "--model", action="append", help="model to offer (repeatable; bundles are copied)"
    )
    build.add_argument("--force", action="store_true", help="replace a non-empty OUTDIR")
    deploy = space_sub.add_parser("deploy", help="upload a Space folder (builds one if needed)")
    deploy.add_argument("repo_id", help="the Space, e.g. USER/querysep")
    deploy.add_argument("--dir", type=Path, help="a folder from `space build` (default: build now)")
    deploy.add_argument("-m", "--model", action="append", help="model to offer when building")
    deploy.add_argument("--private", action="store_true")
    parser.separate_parser = sep  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["separate"]:
        # Intermixed parsing lets QUERY come after options (`in.wav --query-audio x.wav dog`);
        # argparse only offers it on a parser without sub-commands.
        args = parser.separate_parser.parse_intermixed_args(  # type: ignore[attr-defined]
            argv[1:], argparse.Namespace(command="separate")
        )
    else:
        args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _stop_on_sigterm()
    shown, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        commands = {
            "separate": _separate,
            "init-model": _init_model,
            "models": _models,
            "pack": _pack,
            "demo": _demo,
            "space": _space,
            "convert": _convert,
            "train": _train,
            "train-clap": _train_clap,
            "evaluate": _evaluate,
            "data": _data,
        }
        return commands[args.command](args)
    except QuerysepError as exc:
        print(f"querysep: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. an unwritable output directory
        print(
            f"querysep: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("querysep: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("querysep: terminated", file=sys.stderr)
        return 143
    finally:
        warnings.formatwarning = shown  # main() called in-process leaves warnings as they were


def _one_line_warning(
    message: Warning | str, category: type[Warning], *args: Any, **kw: Any
) -> str:
    """Warnings a user should see (a query longer than CLAP reads) as one line, no source."""
    return f"querysep: warning: {message}\n"


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every `finally` and cleanup handler runs
    (temporary files are removed) the way they do for Ctrl-C."""


def _stop_on_sigterm() -> None:
    import signal
    import threading

    def stop(signum: int, frame: object) -> None:
        raise _Terminated

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def _separate(args: argparse.Namespace) -> int:

    from querysep import audio, batch
    from querysep.options import SeparationOptions
    from querysep.query import Query
    from querysep.runtime import resolve_device, resolve_dtype
    from querysep.separator import load

    inputs, text = _split_inputs(args.inputs, args)
    if args.query_audio is not None:
        audio.info(args.query_audio)  # fail early on a bad example file
    if not 0 <= args.audio_weight <= 1:
        raise QuerysepError("--audio-weight must be between 0 and 1")
    # QUERY mixes with --query-audio; each -q is a query of its own
    queries = batch.build_queries([text] if text else [], args.query_audio, args.audio_weight)
    queries += [Query.from_text(q) for q in args.more]
    if args.negative:
        queries = [q.with_negatives(args.negative) for q in queries]
    options = SeparationOptions(  # checked here, before the model loads
        chunk_seconds=args.chunk_seconds,
        overlap=args.overlap,
        batch_size=args.batch_size,
        steps=args.steps,
        guidance=args.guidance,
        shift=args.shift,
        seed=args.seed,
        candidates=args.candidates,
    )
    if args.manifest is not None:
        items = batch.read_manifest(args.manifest, queries)
        items += batch.collect(inputs, queries) if inputs else []
    elif not inputs:
        raise QuerysepError("give an INPUT (file, folder or glob) or --manifest FILE")
    else:
        if not queries:
            raise QuerysepError("give a text QUERY, -q QUERY or --query-audio PATH")
        items = batch.collect(inputs, queries)
    # one file named as such (not a folder, not a glob): the command as it always was
    single = args.manifest is None and len(items) == 1 and items[0].audio == Path(inputs[0])
    info = audio.info(items[0].audio) if single else None  # fails before the model loads
    ranks = batch.Ranks.from_env()
    device = ranks.device(args.device)
    resolve_dtype(args.dtype, resolve_device(device))  # fail before loading anything
    separator = load(args.model, device=device, dtype=args.dtype)
    if args.compile:
        separator.compile()
    long_input = info is not None and info.duration >= PROGRESS_SECONDS

    def report(record: dict[str, Any]) -> None:
        if record["status"] == "failed" and not single:
            from tqdm.auto import tqdm  # above the progress bar, not through it

            tqdm.write(f"querysep: failed: {record['input']}: {record['error']}", file=sys.stderr)

    summary = batch.run(
        separator,
        items,
        args.out,
        options=options,
        format=args.format,
        subtype=args.subtype,
        force=args.force,
        workers=args.workers,
        log=not single,
        progress=not args.quiet and (long_input or not single),
        on_item=report,
    )
    if single:
        return _report_single(summary, items[0], args)
    if ranks.rank == 0:
        log = batch.LOG_NAME if ranks.world == 1 else "querysep-log.rank*.jsonl"
        where = f" (log: {args.out / log})"
        print(f"querysep: {summary.line()}{where}", file=sys.stderr if args.quiet else sys.stdout)
    return 0 if summary.ok else 1


def _exists(text: str) -> bool:
    """Whether a path exists; a text too long to be a file name (a long query) does not."""
    try:
        return Path(text).exists()
    except OSError:
        return False


def _report_single(summary: Any, item: Any, args: argparse.Namespace) -> int:
    if summary.failed:
        print(f"querysep: error: {summary.failures[0]['error']}", file=sys.stderr)
        return 1
    if not args.quiet:
        for query, (target, residual) in zip(
            item.queries, item.outputs(args.out, args.format), strict=True
        ):
            print(f"{query.label}: {target}  (rest: {residual})")
        if summary.skipped:
            print("skipped: the outputs exist (--force to redo)")
    return 0


def _split_inputs(values: list[str], args: argparse.Namespace) -> tuple[list[str], str | None]:
    """`INPUT... [QUERY]`: the last argument is the text query when it cannot be an input
    (no such path, no audio suffix, no glob characters), as in `querysep separate a.wav dog`."""
    import glob

    from querysep.batch import AUDIO_SUFFIXES

    if any(not v.strip() for v in values):
        raise QuerysepError("an INPUT or QUERY is empty: give a file, folder, glob or text")
    if len(values) < 2 and not (values and args.manifest is not None):
        return list(values), None
    last = values[-1]
    is_input = _exists(last) or Path(last).suffix.lower() in AUDIO_SUFFIXES or glob.has_magic(last)
    return (list(values), None) if is_input else (list(values[:-1]), last)


def _init_model(args: argparse.Namespace) -> int:
    from querysep.bundle import CONFIG_NAME
    from querysep.separator import Separator

    if (args.outdir / CONFIG_NAME).exists() and not args.force:
        raise QuerysepError(f"{args.outdir} already holds a bundle: pass --force to replace it")
    separator = Separator.from_config(args.config, seed=args.seed)
    separator.save_pretrained(args.outdir)
    n = separator.model.num_parameters()
    print(
        f"wrote {args.outdir} ({separator.config['family']}, {n / 1e6:.2f} M parameters, "
        f"{separator.sample_rate} Hz)"
    )
    return 0


def _models(args: argparse.Namespace) -> int:
    from querysep import pretrained

    if args.fetch:
        if pretrained.lookup(args.fetch) is None:
            raise QuerysepError(
                f"unknown model {args.fetch!r} (known: {', '.join(pretrained.names())})"
            )
        print(f"{args.fetch}: {pretrained.materialize(args.fetch)}")
        return 0
    names = pretrained.names()
    if not names:
        print("no named models registered yet; use a bundle directory with --model")
    for name in names:
        entry = pretrained.lookup(name)
        assert entry is not None
        mark = {
            pretrained.DEFAULT_MODEL: " (default)",
            pretrained.OFFLINE_MODEL: " (default offline)",
        }.get(name, "")
        where = " [packaged]" if entry.packaged else ""
        where = where or (" [cached]" if pretrained.is_cached(name) else "")
        print(f"{name}{mark}{where}: {entry.description}\n    licence: {entry.license}")
        if args.verbose:
            for source in entry.sources:
                print(f"    source: {source.url}")
            if not entry.packaged:
                print(f"    cache: {pretrained.bundle_dir(name)}")
            known = pretrained.sounds(name)
            if known:
                print(f"    sounds ({len(known)}): {', '.join(known)}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    import tempfile

    from querysep import pretrained
    from querysep.convert.audiosep import convert_checkpoint
    from querysep.files import refuse_nonempty

    refuse_nonempty(args.outdir, args.force)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = args.tokenizer or pretrained.fetch_tokenizer(tmp)
        report = convert_checkpoint(args.checkpoint, args.outdir, tokenizer)
    print(report.summary())
    print(
        f"wrote {args.outdir}: use it with `querysep separate IN.wav QUERY --model {args.outdir}`"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    try:
        from querysep.demo import launch
    except ImportError as exc:  # only gradio is optional here
        raise QuerysepError(
            f"the demo needs gradio: pip install 'querysep[demo]' ({exc})"
        ) from None
    launch(models=args.model, host=args.host, port=args.port, share=args.share)
    return 0


def _space(args: argparse.Namespace) -> int:
    import tempfile

    from querysep import space

    if args.space_command == "build":
        folder = space.build(args.outdir, args.model, force=args.force)
        print(f"Space folder: {folder} (deploy: querysep space deploy USER/NAME --dir {folder})")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or space.build(Path(tmp) / "space", args.model)
        print(space.deploy(args.repo_id, folder, private=args.private))
    return 0


def _train(args: argparse.Namespace) -> int:
    from querysep.train.trainer import train

    result = train(args.config, args.overrides)
    if result.get("final"):
        best = result.get("best_step")
        best_note = f"; best valid SDRi {result['best_sdri']:.2f} dB at step {best}" if best else ""
        print(f"trained {result['step']} steps: {result['final']}{best_note}")
    return 0


def _train_clap(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from querysep.train.clap import PRETRAINED_LR, RANDOM_INITS, ClapFitConfig, train_clap

    lr = ClapFitConfig.lr if args.init in RANDOM_INITS else PRETRAINED_LR
    cfg = ClapFitConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else lr,
        seconds=args.seconds,
        seed=args.seed,
        batched_features=args.batched_features,
        bf16=args.bf16,
    )

    def report(when: str, s: dict[str, float]) -> None:
        print(
            f"{when}: zero-shot accuracy {s['accuracy']:.1%} (chance {s['chance']:.1%}), "
            f"caption margin {s['caption_margin']:.3f}"
        )

    bar = None if args.quiet else tqdm(total=cfg.steps, desc="fitting CLAP", unit="step")

    def on_step(step: int, loss: float) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    try:
        losses = train_clap(
            args.manifest,
            args.out,
            cfg,
            init=args.init,
            valid=args.valid,
            root=args.root,
            force=args.force,
            report=report,
            on_step=on_step,
        )
    finally:
        if bar is not None:
            bar.close()
    head, tail = sum(losses[:20]) / min(20, len(losses)), sum(losses[-20:]) / min(20, len(losses))
    print(f"loss {head:.3f} -> {tail:.3f} over {cfg.steps} steps; wrote {args.out}")
    return 0


def _pack(args: argparse.Namespace) -> int:
    import json

    from querysep import pretrained
    from querysep.files import holds, refuse_nonempty

    if holds(args.outdir, args.bundle):
        raise QuerysepError(f"{args.outdir} holds the bundle {args.bundle}: pick another folder")
    refuse_nonempty(args.outdir, args.force)
    sounds = None
    if args.sounds:
        try:
            sounds = json.loads(args.sounds.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise QuerysepError(f"cannot read {args.sounds}: {first_line(exc)}") from None
    out = pretrained.pack(args.bundle, args.outdir, sounds=sounds)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"packed {args.bundle} into {out} ({size / 1e6:.1f} MB)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from querysep import evaluate as ev
    from querysep.separator import load

    rate = args.rate or (16_000 if args.benchmark == "dcase2024" else 32_000)
    if args.benchmark != "manifest" and args.audio_dir is None:
        raise QuerysepError(f"{args.benchmark} needs --audio-dir (where its audio files are)")
    if args.benchmark == "manifest":
        items = ev.manifest_items(args.eval_list, rate, args.items, args.seed, args.seconds)
    elif args.benchmark == "dcase2024":
        items = ev.dcase_items(args.eval_list, args.audio_dir, rate)
    else:
        items = ev.audiosep_items(args.benchmark, args.eval_list, args.audio_dir, rate)
    items = items[: args.limit] if args.limit else items
    separator = load(args.model, device=args.device)
    summary = ev.evaluate(
        separator,
        items,
        args.out,
        args.benchmark,
        rate,
        bss=args.bss,
        clap_score=args.clap_score,
        progress=not args.quiet,
    )
    print((args.out / "summary.md").read_text() if summary else "")
    return 0


def _data(args: argparse.Namespace) -> int:
    from querysep.data.cli import run_data

    return run_data(args)


if __name__ == "__main__":  # last, so every command's function exists when main() runs
    sys.exit(main())
