"""Registry of named models: what `model=None` and `--model NAME` resolve to.

An entry knows where its weights come from and how to turn them into a bundle in the local
cache (`$QUERYSEP_CACHE`, else `$XDG_CACHE_HOME/querysep`, else `~/.cache/querysep`). The first
use downloads through huggingface_hub (with its progress bar), converts once and keeps the
bundle; later uses, and offline runs, read the cached bundle.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from querysep.errors import ModelLoadError, first_line


@dataclass(frozen=True)
class HubFile:
    """One file on the Hugging Face Hub (a model, dataset or Space repo)."""

    repo_id: str
    filename: str
    repo_type: str = "model"
    revision: str = "main"
    #: Expected sha256, when known; otherwise the Hub's own LFS record is checked.
    sha256: str | None = None

    @property
    def url(self) -> str:
        prefix = {"model": "", "space": "spaces/", "dataset": "datasets/"}[self.repo_type]
        return (
            f"https://huggingface.co/{prefix}{self.repo_id}/resolve/{self.revision}/{self.filename}"
        )


@dataclass(frozen=True)
class PretrainedEntry:
    name: str
    description: str
    license: str
    #: Builds (downloading and converting if needed) the bundle directory and returns it.
    materialize: Callable[[Path], Path]
    sources: tuple[HubFile, ...] = field(default=())


_REGISTRY: dict[str, PretrainedEntry] = {}
#: The model used when none is named: AudioSep's published weights until querysep's own
#: models are trained and published.
DEFAULT_MODEL: str | None = "audiosep-base"


def register(entry: PretrainedEntry) -> None:
    _REGISTRY[entry.name] = entry


def names() -> list[str]:
    return sorted(_REGISTRY)


def cache_dir() -> Path:
    root = os.environ.get("QUERYSEP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "querysep"
    )
    return Path(root)


def bundle_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def default_model() -> str:
    if DEFAULT_MODEL is None:
        raise ModelLoadError(
            "no default pretrained model is available: pass a bundle with model=... "
            "(CLI: --model PATH); make one with `querysep init-model CONFIG OUTDIR`"
        )
    return DEFAULT_MODEL


def lookup(name: str) -> PretrainedEntry | None:
    return _REGISTRY.get(name)


def materialize(name: str) -> Path:
    entry = _REGISTRY[name]
    return entry.materialize(bundle_dir(name))


# -- downloading -------------------------------------------------------------------------------
def download(file: HubFile) -> Path:
    """The file from the Hub (or huggingface_hub's cache), its sha256 checked."""
    from huggingface_hub import hf_hub_download

    try:
        path = Path(
            hf_hub_download(
                repo_id=file.repo_id,
                filename=file.filename,
                repo_type=file.repo_type,
                revision=file.revision,
            )
        )
    except Exception as exc:  # offline, unreachable, gated: all mean "fetch it yourself"
        raise _NotDownloadable(file, exc) from None
    expected = file.sha256 or _hub_sha256(file)
    if expected is not None:
        from querysep.files import sha256_file

        actual = sha256_file(path)
        if actual != expected:
            raise ModelLoadError(
                f"{file.url} downloaded with sha256 {actual}, expected {expected}: "
                f"delete {path} and try again"
            )
    return path


def _hub_sha256(file: HubFile) -> str | None:
    """The LFS sha256 the Hub records for the file (None for small non-LFS files)."""
    try:
        from huggingface_hub import HfApi

        info = HfApi().get_paths_info(
            file.repo_id, [file.filename], repo_type=file.repo_type, revision=file.revision
        )
        lfs = getattr(info[0], "lfs", None) if info else None
        return getattr(lfs, "sha256", None)
    except Exception:  # metadata is a second opinion; the download itself already succeeded
        return None


class _NotDownloadable(ModelLoadError):
    def __init__(self, file: HubFile, exc: Exception):
        super().__init__(f"cannot download {file.url} ({first_line(exc)})")
        self.file = file


# -- AudioSep ----------------------------------------------------------------------------------
AUDIOSEP_CHECKPOINT = HubFile(
    "Audio-AGI/AudioSep", "checkpoint/audiosep_base_4M_steps.ckpt", repo_type="space"
)
ROBERTA_FILES = (
    HubFile("FacebookAI/roberta-base", "vocab.json"),
    HubFile("FacebookAI/roberta-base", "merges.txt"),
)


def _materialize_audiosep(directory: Path) -> Path:
    from querysep.convert.audiosep import convert_checkpoint

    if (directory / "config.json").is_file():
        return directory
    try:
        checkpoint = download(AUDIOSEP_CHECKPOINT)
        tokenizer_files = [download(f) for f in ROBERTA_FILES]
    except _NotDownloadable as exc:
        raise ModelLoadError(
            f"audiosep-base is not in the cache ({directory}) and {exc.file.url} cannot be "
            "downloaded: on a machine with internet, fetch "
            f"{AUDIOSEP_CHECKPOINT.url} and roberta-base's vocab.json and merges.txt "
            "(https://huggingface.co/FacebookAI/roberta-base), then run "
            f"`querysep convert audiosep CKPT {directory} --tokenizer DIR_WITH_THOSE_FILES`; "
            "or name another bundle with model=... (CLI: --model)"
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        for f in tokenizer_files:
            shutil.copy(f, Path(tmp) / f.name)
        report = convert_checkpoint(checkpoint, directory, tmp)
    print(f"querysep: converted AudioSep into {directory}\n{report.summary()}")
    return directory


register(
    PretrainedEntry(
        name="audiosep-base",
        description="AudioSep (Liu et al. 2023): ResUNet30 separator + LAION-CLAP HTSAT-base "
        "query encoder, 32 kHz, text and audio queries",
        license="MIT (AudioSep code and weights); CLAP weights CC0 (LAION); "
        "roberta-base tokenizer MIT",
        materialize=_materialize_audiosep,
        sources=(AUDIOSEP_CHECKPOINT, *ROBERTA_FILES),
    )
)
