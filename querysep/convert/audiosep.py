"""AudioSep's ResUNet30 state dict -> querysep's `resunet` family.

AudioSep keeps its UNet under `base.` and all FiLM projections in one `film` module whose
sub-module names spell the path of the norm they feed (`decoder_block3->conv_block2->beta1`).
querysep keeps each FiLM beside its norm. Three groups of keys are dropped on purpose, each
listed in the conversion report: the STFT/iSTFT DFT matrices (recomputed by `querysep.dsp`),
and each decoder block's `bn2` and `beta2`, which AudioSep builds but never uses in forward.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from querysep.errors import ModelLoadError, first_line

_BASE_RULES = [
    (r"base\.(bn0|pre_conv|after_conv)\.(.+)", r"\1.\2"),
    (r"base\.encoder_block(\d)\.conv_block1\.(.+)", "encoders.{0}.{1}"),
    (r"base\.conv_block7a\.conv_block1\.(.+)", r"center.\1"),
    (r"base\.decoder_block(\d)\.(conv1|bn1|conv_block2)\.(.+)", "decoders.{0}.{1}.{2}"),
]
_FILM_RULES = [
    (
        r"film\.encoder_block(\d)->conv_block1->beta(\d)\.(weight|bias)",
        "encoders.{0}.film{1}.proj.{2}",
    ),
    (r"film\.conv_block7a->conv_block1->beta(\d)\.(weight|bias)", r"center.film\1.proj.\2"),
    (r"film\.decoder_block(\d)->beta1\.(weight|bias)", "decoders.{0}.film1.proj.{1}"),
    (
        r"film\.decoder_block(\d)->conv_block2->beta(\d)\.(weight|bias)",
        "decoders.{0}.conv_block2.film{1}.proj.{2}",
    ),
]
_DROPPED = [
    (r"base\.(stft|istft)\..+", "STFT matrices, recomputed"),
    (r"base\.decoder_block\d\.bn2\..+", "decoder bn2, unused by AudioSep's forward"),
    (r"film\.decoder_block\d->beta2\..+", "decoder beta2, unused by AudioSep's forward"),
]


@dataclass
class Conversion:
    state: dict[str, Tensor] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)  # key -> why


def map_key(key: str) -> str | None:
    """querysep key for an AudioSep ResUNet30 key; None when dropped on purpose."""
    for pattern, _ in _DROPPED:
        if re.fullmatch(pattern, key):
            return None
    for pattern, target in _BASE_RULES + _FILM_RULES:
        match = re.fullmatch(pattern, key)
        if match:
            if "{" not in target:
                return match.expand(target)
            groups = list(match.groups())
            # AudioSep numbers its blocks from 1; querysep's ModuleLists count from 0
            groups[0] = str(int(groups[0]) - 1) if groups[0].isdigit() else groups[0]
            return target.format(*groups)
    raise ModelLoadError(f"unexpected key in the AudioSep separator weights: {key}")


def convert_resunet(state: Mapping[str, Tensor]) -> Conversion:
    """Maps every key or says why it was dropped; an unknown key is an error."""
    out = Conversion()
    for key, value in state.items():
        target = map_key(key)
        if target is None:
            out.dropped[key] = next(why for p, why in _DROPPED if re.fullmatch(p, key))
        elif target in out.state:
            raise ModelLoadError(f"two AudioSep keys map to {target}")
        else:
            out.state[target] = value
    return out


#: Metadata classes Lightning checkpoints pickle beside the weights. They are replaced by inert
#: stand-ins, never imported; any other non-tensor global is refused.
_METADATA_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.")
_SEPARATOR_PREFIX = "ss_model."
_QUERY_ENCODER_PREFIX = "query_encoder."


class _Inert:
    """Stands in for a metadata class: whatever the pickle builds becomes a plain OrderedDict
    (the only kind of object the weights-only unpickler fills item by item); nothing runs."""

    def __new__(cls, *args: object, **kwargs: object) -> OrderedDict:  # type: ignore[misc]
        return OrderedDict()


@dataclass
class LightningCheckpoint:
    separator: dict[str, Tensor]
    query_encoder: dict[str, Tensor]
    skipped: dict[str, str]  # what was not used, and why


def read_lightning_checkpoint(path: str | Path) -> LightningCheckpoint:
    """The weights of an AudioSep Lightning checkpoint, read with `torch.load(weights_only=True)`.

    Optimizer state and training metadata are dropped; Lightning's own metadata classes are
    swapped for inert stand-ins so nothing from the file is imported or executed.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"no checkpoint file at {path}")
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a PyTorch checkpoint: {first_line(exc)}") from None
    refused = [g for g in unsafe if not g.startswith(_METADATA_PREFIXES)]
    if refused:
        raise ModelLoadError(
            f"refusing {path}: it pickles code objects that a weights file has no need for "
            f"({', '.join(sorted(refused)[:5])})"
        )
    stand_ins = [(type(g.rsplit(".", 1)[-1], (_Inert,), {}), g) for g in unsafe]
    try:
        with torch.serialization.safe_globals(stand_ins):
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise ModelLoadError(f"cannot read checkpoint {path}: {first_line(exc)}") from None
    state = raw.get("state_dict") if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} has no Lightning 'state_dict': is it an AudioSep checkpoint?")
    out = LightningCheckpoint({}, {}, {})
    for key in raw:
        if key != "state_dict":
            out.skipped[key] = "training state"
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise ModelLoadError(f"{path}: state_dict entry {key} is not a tensor")
        if key.startswith(_SEPARATOR_PREFIX):
            out.separator[key[len(_SEPARATOR_PREFIX) :]] = value
        elif key.startswith(_QUERY_ENCODER_PREFIX):
            out.query_encoder[key[len(_QUERY_ENCODER_PREFIX) :]] = value
        else:
            raise ModelLoadError(f"unexpected key in the AudioSep checkpoint: {key}")
    if not out.separator:
        raise ModelLoadError(f"{path} holds no separator weights (no '{_SEPARATOR_PREFIX}*' keys)")
    return out


#: AudioSep's published architecture, as a querysep config (what `convert` writes).
AUDIOSEP_CONFIG: dict = {
    "family": "resunet",
    "sample_rate": 32_000,
    "model": {"n_fft": 2048, "hop_length": 320, "widths": [32, 64, 128, 256, 384, 384]},
    "inference": {"chunk_seconds": 5.0, "overlap": 0.25, "batch_size": "auto"},
}
#: AudioSep's CLAP_Encoder keeps the LAION model under this attribute.
_CLAP_PREFIX = "model."
TOKENIZER_FILES = ("vocab.json", "merges.txt")


@dataclass
class ConversionReport:
    """What a conversion used and dropped, for the CLI to print and for tests to check."""

    separator_mapped: int
    separator_dropped: dict[str, str]
    clap_mapped: int
    clap_dropped: dict[str, str]
    skipped: dict[str, str]
    sha256: str

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for why in [*self.separator_dropped.values(), *self.clap_dropped.values()]:
            reasons[why] = reasons.get(why, 0) + 1
        lines = [
            f"separator: {self.separator_mapped} tensors mapped, "
            f"{len(self.separator_dropped)} dropped",
            f"query encoder (CLAP): {self.clap_mapped} tensors mapped, "
            f"{len(self.clap_dropped)} dropped",
            *(f"  dropped {n:3d} x {why}" for why, n in sorted(reasons.items())),
            f"not weights (skipped): {', '.join(sorted(self.skipped)) or 'none'}",
            f"checkpoint sha256: {self.sha256}",
        ]
        return "\n".join(lines)


def convert_checkpoint(
    checkpoint: str | Path, outdir: str | Path, tokenizer_dir: str | Path
) -> ConversionReport:
    """AudioSep Lightning checkpoint -> a querysep bundle (safetensors + ClapModel + processor).

    `tokenizer_dir` holds roberta-base's `vocab.json` and `merges.txt` (AudioSep tokenises
    with roberta-base; the checkpoint has no tokenizer). The bundle appears in `outdir` only
    when complete: it is built in a sibling temporary directory and renamed.
    """

    from querysep import bundle
    from querysep.convert import clap
    from querysep.files import atomic_dir, holds, sha256_file
    from querysep.models import build_model
    from querysep.query import ClapQueryEncoder

    outdir = Path(outdir)
    for given in (Path(checkpoint), Path(tokenizer_dir)):
        if holds(outdir, given):
            raise ModelLoadError(f"OUTDIR {outdir} holds an input ({given}): choose another")
    tokenizer = _roberta_tokenizer(Path(tokenizer_dir))
    digest = sha256_file(checkpoint)
    ckpt = read_lightning_checkpoint(checkpoint)
    sep = convert_resunet(ckpt.separator)
    foreign = [k for k in ckpt.query_encoder if not k.startswith(_CLAP_PREFIX)]
    if foreign:
        raise ModelLoadError(f"unexpected key in the AudioSep query encoder: {foreign[0]}")
    if not ckpt.query_encoder:
        raise ModelLoadError(f"{checkpoint} holds no query-encoder (CLAP) weights")
    clap_state = {k[len(_CLAP_PREFIX) :]: v for k, v in ckpt.query_encoder.items()}
    clap_model, clap_dropped = clap.build_clap_model(clap_state)
    dim = int(clap_model.config.projection_dim)

    cfg = {
        **AUDIOSEP_CONFIG,
        "query_encoder": {"path": "query_encoder", "dim": dim},
        "source": {"converted_from": Path(checkpoint).name, "sha256": digest},
    }
    model = build_model(
        "resunet", {**cfg["model"], "sample_rate": cfg["sample_rate"], "query_dim": dim}
    )
    try:
        model.load_state_dict(sep.state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"AudioSep separator weights do not fit: {first_line(exc)}") from None
    from transformers import ClapProcessor

    processor = ClapProcessor(
        feature_extractor=clap.feature_extractor(clap_model.config), tokenizer=tokenizer
    )
    encoder = ClapQueryEncoder(clap_model, processor, source=str(checkpoint))
    atomic_dir(outdir, lambda tmp: bundle.save(tmp, model, cfg, encoder))
    return ConversionReport(
        separator_mapped=len(sep.state),
        separator_dropped=sep.dropped,
        clap_mapped=len(clap_state) - len(clap_dropped),
        clap_dropped=clap_dropped,
        skipped=ckpt.skipped,
        sha256=digest,
    )


def _roberta_tokenizer(directory: Path) -> Any:
    from transformers import RobertaTokenizer

    missing = [f for f in TOKENIZER_FILES if not (directory / f).is_file()]
    if missing:
        raise ModelLoadError(
            f"tokenizer directory {directory} lacks {', '.join(missing)} "
            "(roberta-base's files: https://huggingface.co/FacebookAI/roberta-base)"
        )
    return RobertaTokenizer(
        vocab=str(directory / "vocab.json"),
        merges=str(directory / "merges.txt"),
        model_max_length=77,
    )
