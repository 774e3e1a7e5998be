"""Registry of named models: what `model=None` and `--model NAME` resolve to.

Two kinds of entry. A packaged model (`querysep-mini`) ships inside the wheel: no download,
its files checked against the bundle's `SHA256SUMS` on load. A downloaded model
(`audiosep-base`) knows where its weights come from and how to turn them into a bundle in the
local cache (`$QUERYSEP_CACHE`, else `$XDG_CACHE_HOME/querysep`, else `~/.cache/querysep`): the
first use downloads through huggingface_hub (with its progress bar), converts once and keeps
the bundle; later uses, and offline runs, read the cached bundle.

`model=None` means the best model this machine can have: audiosep-base when it is cached or the
Hub answers, else querysep-mini, with one line on stderr saying so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from querysep.errors import ModelLoadError, first_line

if TYPE_CHECKING:
    import torch


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
    #: Ships inside the package: nothing to download, usable offline on a fresh machine.
    packaged: bool = False


_REGISTRY: dict[str, PretrainedEntry] = {}
#: The model used when none is named and it is cached or downloadable.
DEFAULT_MODEL: str | None = "audiosep-base"
#: What `model=None` falls back to offline: it ships inside the package.
OFFLINE_MODEL = "querysep-mini"
#: Models that ship as package data, one bundle folder each.
PACKAGED_DIR = Path(__file__).resolve().parent / "weights"
SUMS_NAME = "SHA256SUMS"
SOUNDS_NAME = "sounds.json"
#: Seconds to wait for the Hub before taking it as unreachable (huggingface_hub's own retries
#: take about 28 s to give up).
HUB_PROBE_TIMEOUT = 3.0


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
    """The registry default when this machine can have it (cached, or the Hub answers within
    `HUB_PROBE_TIMEOUT`), else the packaged offline model, said in one line on stderr."""
    if DEFAULT_MODEL is None:
        raise ModelLoadError(
            "no default pretrained model is available: pass a bundle with model=... "
            "(CLI: --model PATH); make one with `querysep init-model CONFIG OUTDIR`"
        )
    if is_cached(DEFAULT_MODEL) or OFFLINE_MODEL not in _REGISTRY:
        return DEFAULT_MODEL
    reachable, why = hub_reachable()
    if reachable:
        return DEFAULT_MODEL
    if not _FALLBACK_SAID:  # once per process, not once per call
        _FALLBACK_SAID.append(why)
        print(
            f"querysep: using the bundled {OFFLINE_MODEL} ({why}; {DEFAULT_MODEL} is not "
            f"cached). For the larger model run `querysep models --fetch {DEFAULT_MODEL}` "
            "once online.",
            file=sys.stderr,
        )
    return OFFLINE_MODEL


_FALLBACK_SAID: list[str] = []
_PROBED: dict[str, tuple[float, bool, str]] = {}
#: A probe's answer is reused this long: a process separating many files probes once.
HUB_PROBE_TTL = 300.0


def is_cached(name: str) -> bool:
    entry = _REGISTRY.get(name)
    return entry is not None and (entry.packaged or (bundle_dir(name) / "config.json").is_file())


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> tuple[bool, str]:
    """(whether the Hub answers a HEAD request, why not): offline settings answer at once, a
    dead or filtered network within `timeout`, instead of huggingface_hub's ~28 s of retries.
    A bare TCP connection proves little (transparent proxies accept any)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False, "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    seen = _PROBED.get(host)
    if seen is not None and time.monotonic() - seen[0] < HUB_PROBE_TTL:
        return seen[1], seen[2]
    answer = (False, f"the Hugging Face Hub ({host}) did not answer within {timeout:g} s")

    def probe() -> None:  # in a thread: a hanging DNS lookup ignores socket timeouts
        nonlocal answer
        import urllib.error
        import urllib.request

        request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                ok, why = 200 <= response.status < 400, f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:  # a proxy's refusal is not the Hub
            ok, why = False, f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            ok, why = False, first_line(getattr(exc, "reason", None) or exc)
        answer = (
            (True, "") if ok else (False, f"the Hugging Face Hub ({host}) is unreachable: {why}")
        )

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    _PROBED[host] = (time.monotonic(), *answer)
    return answer


def lookup(name: str) -> PretrainedEntry | None:
    return _REGISTRY.get(name)


def materialize(name: str) -> Path:
    entry = _REGISTRY[name]
    return entry.materialize(bundle_dir(name))


def sounds(name: str) -> dict[str, dict]:
    """The sounds a packaged model was trained on: label -> {group, captions}; {} if unknown."""
    entry = _REGISTRY.get(name)
    if entry is None or not entry.packaged:
        return {}
    try:
        return json.loads((PACKAGED_DIR / name / SOUNDS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# -- packaged models ---------------------------------------------------------------------------
def verify_packaged(directory: Path) -> Path:
    """`directory` when every file in it is listed in its SHA256SUMS with the right hash."""
    from querysep.files import sha256_file

    sums = directory / SUMS_NAME
    try:
        lines = sums.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"the packaged model in {directory} is incomplete ({SUMS_NAME}: "
            f"{getattr(exc, 'strerror', None) or exc}): reinstall querysep"
        ) from None
    expected = {}
    for line in lines:
        digest, _, name = line.strip().partition("  ")
        if digest:
            expected[name] = digest
    present = set(_bundle_files(directory))
    for name in sorted(present | set(expected)):
        if name not in expected:
            raise ModelLoadError(f"the packaged model in {directory} has an unlisted file {name}")
        if name not in present:
            raise ModelLoadError(
                f"the packaged model in {directory} lacks {name}: reinstall querysep"
            )
        if sha256_file(directory / name) != expected[name]:
            raise ModelLoadError(
                f"{directory / name} does not match its sha256 in {SUMS_NAME} (damaged or "
                "altered): reinstall querysep"
            )
    return directory


def _bundle_files(directory: Path) -> list[str]:
    """The files SHA256SUMS lists (relative POSIX paths, sorted): one rule for writing and
    checking it."""
    return sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.name != SUMS_NAME and "__pycache__" not in p.parts
    )


def write_sums(directory: Path) -> Path:
    """Lists every file of a bundle with its sha256: what `verify_packaged` checks."""
    from querysep.files import atomic_write, sha256_file

    text = "".join(f"{sha256_file(directory / f)}  {f}\n" for f in _bundle_files(directory))
    atomic_write(directory / SUMS_NAME, lambda p: p.write_text(text, encoding="utf-8"))
    return directory / SUMS_NAME


def _register_packaged(name: str, description: str, license: str) -> None:
    register(
        PretrainedEntry(
            name=name,
            description=description,
            license=license,
            materialize=lambda _cache: verify_packaged(PACKAGED_DIR / name),
            packaged=True,
        )
    )


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


def fetch_tokenizer(folder: str | Path) -> Path:
    """roberta-base's vocab.json and merges.txt (AudioSep's tokenizer; its checkpoint has none)
    downloaded once into the cache and copied into `folder`, as the converter takes them."""
    folder = Path(folder)
    for f in ROBERTA_FILES:
        shutil.copy(download(f), folder / Path(f.filename).name)
    return folder


def _materialize_audiosep(directory: Path) -> Path:
    from querysep.convert.audiosep import convert_checkpoint

    if (directory / "config.json").is_file():
        return directory
    with tempfile.TemporaryDirectory() as tmp:
        try:
            checkpoint = download(AUDIOSEP_CHECKPOINT)
            tokenizer = fetch_tokenizer(tmp)
        except _NotDownloadable as exc:
            raise ModelLoadError(
                f"audiosep-base is not in the cache ({directory}) and {exc.file.url} cannot be "
                "downloaded: on a machine with internet, fetch "
                f"{AUDIOSEP_CHECKPOINT.url} and roberta-base's vocab.json and merges.txt "
                "(https://huggingface.co/FacebookAI/roberta-base), then run "
                f"`querysep convert audiosep CKPT {directory} --tokenizer DIR_WITH_THOSE_FILES`; "
                "or name another bundle with model=... (CLI: --model)"
            ) from None
        report = convert_checkpoint(checkpoint, directory, tokenizer)
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

# -- querysep-mini -----------------------------------------------------------------------------
_register_packaged(
    OFFLINE_MODEL,
    "querysep's own small ResUNet separator + fitted tiny CLAP, 16 kHz, trained on a 2-core "
    "CPU on 42 classes of real and made sounds (instruments, drums, speech, animals, "
    "procedural); ships inside the package, works offline",
    "MIT (querysep weights); trained on MIT (FluidR3_GM) and CC0 sounds",
)


def _fp16_if_it_fits(tensor: torch.Tensor) -> torch.Tensor:
    """fp16 for storage, unless fp16 cannot hold it: a batch norm's running variance can pass
    65,504 (querysep-mini's did, 70,187 after the eighth session's stage 2) and stays fp32."""
    if not tensor.is_floating_point():
        return tensor
    half = tensor.half()
    return half if half.isfinite().all() else tensor


def pack(bundle: str | Path, out: str | Path, *, sounds: dict | None = None) -> Path:
    """A trained bundle -> a packaged model folder: separator weights stored as fp16 where fp16
    holds them (loading casts them back to the model's dtype), the query encoder as is,
    `sounds.json` (what it was trained on) and `SHA256SUMS`. Written beside `out` and moved
    into place whole."""
    from safetensors.torch import load_file, save_file

    from querysep.files import atomic_dir

    bundle, out = Path(bundle), Path(out)
    if not (bundle / "config.json").is_file():
        raise ModelLoadError(f"{bundle} is not a querysep bundle: config.json is missing")

    def write(tmp: str) -> None:
        shutil.copytree(bundle, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
        weights = Path(tmp) / "model.safetensors"
        state = load_file(str(bundle / "model.safetensors"))
        bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise ModelLoadError(f"{bundle}: weights are not finite ({', '.join(bad[:3])})")
        save_file({k: _fp16_if_it_fits(v) for k, v in state.items()}, str(weights),
                  metadata={"format": "pt", "stored": "fp16"})  # fmt: skip
        if sounds:
            text = json.dumps(sounds, indent=2, ensure_ascii=False) + "\n"
            (Path(tmp) / SOUNDS_NAME).write_text(text, encoding="utf-8")
        write_sums(Path(tmp))

    atomic_dir(out, write)
    return out


def locate(name: str, revision: str | None = None) -> Path:
    """A registry name, a bundle folder or a Hub repo id -> the bundle's local folder."""
    from querysep.bundle import CONFIG_NAME, QUERY_ENCODER_DIR, WEIGHTS_NAME

    entry = lookup(name)
    if entry is not None:
        return materialize(name)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(
            f"{name} is a file; a model is a bundle directory with {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        known = ", ".join(names()) or "none yet"
        raise ModelLoadError(
            f"model {name!r} is not a directory, a Hub id or a known name (known: {known})"
        )
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            name,
            revision=revision,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, f"{QUERY_ENCODER_DIR}/*"],
        )
    except Exception as exc:
        first = first_line(exc)
        raise ModelLoadError(
            f"model {name!r} is not a local directory, and fetching it from the Hugging Face "
            f"Hub failed (offline and not cached?): {first}"
        ) from None
    return Path(local)
