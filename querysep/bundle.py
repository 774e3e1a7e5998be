"""Bundles on disk: a separator's config, weights and query encoder, read and written as one.

    config.json          family, hyper-parameters, sample rate, query-encoder spec, version
    model.safetensors    separator weights
    query_encoder/       ClapModel + ClapProcessor files (absent when config names a hub id)

Bundles come from the Hub and are not trusted: the config is checked against the weights file's
header before anything is allocated, pickles are refused, and the encoder path must stay inside.
Finding a bundle by name (registry, folder, Hub id) is `pretrained.locate`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from querysep import __version__
from querysep.config import normalize_config
from querysep.errors import ConfigError, ModelLoadError, first_line
from querysep.files import atomic_dir, atomic_write
from querysep.models import SeparatorModel, build_model, family_class
from querysep.query import ClapQueryEncoder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
QUERY_ENCODER_DIR = "query_encoder"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def load(directory: Path) -> tuple[SeparatorModel, dict[str, Any], ClapQueryEncoder | None]:
    """The model (weights loaded), its config and its local query encoder (None: a Hub
    encoder, loaded on first use)."""
    cfg = read_config(directory)
    refuse_pickles(directory)
    model_cfg = {
        **cfg["model"],
        "sample_rate": cfg["sample_rate"],
        "query_dim": cfg["query_encoder"]["dim"],
    }
    check_against_weights(cfg["family"], model_cfg, directory / WEIGHTS_NAME)
    model = build_model(cfg["family"], model_cfg)
    load_weights(model, directory / WEIGHTS_NAME)
    spec = cfg["query_encoder"]
    encoder = None
    if spec.get("path"):
        encoder = ClapQueryEncoder.from_pretrained(inside(directory, spec["path"]))
    return model, cfg, encoder


def save(
    directory: str | Path,
    model: SeparatorModel,
    config: dict[str, Any],
    encoder: ClapQueryEncoder | None,
) -> Path:
    """Writes a bundle; files land under temporary names first, then move into place. A tiny or
    local encoder travels inside the bundle; a Hub encoder is named by its id."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = dict(config)
    cfg["querysep_version"] = __version__
    spec = {k: v for k, v in cfg["query_encoder"].items() if k not in ("tiny", "path")}
    if "hub_id" not in spec:
        if encoder is None:
            raise ModelLoadError("a bundle without a Hub query encoder needs its encoder to save")
        atomic_dir(directory / QUERY_ENCODER_DIR, encoder.save_pretrained)
        spec = {"path": QUERY_ENCODER_DIR, "dim": encoder.dim}
    cfg["query_encoder"] = spec
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(
        directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"})
    )
    text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
    atomic_write(directory / CONFIG_NAME, lambda p: p.write_text(text, encoding="utf-8"))
    return directory


def inside(directory: Path, relative: Any) -> Path:
    """`directory / relative`, refused unless it stays inside the bundle: a bundle from the Hub
    must not load whatever sits at an absolute path or a `..` of the machine it lands on."""
    if not isinstance(relative, str) or Path(relative).is_absolute():
        raise ModelLoadError(
            f"{directory / CONFIG_NAME}: query_encoder.path must be a folder inside the bundle, "
            f"got {relative!r}"
        )
    path = (directory / relative).resolve()
    if not path.is_relative_to(directory.resolve()):
        raise ModelLoadError(
            f"{directory / CONFIG_NAME}: query_encoder.path {relative!r} points outside the bundle"
        )
    return path


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(f"{directory} is not a querysep bundle: {CONFIG_NAME} is missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    except RecursionError:
        raise ModelLoadError(f"cannot read {path}: it is nested too deeply") from None
    cfg = normalize_config(raw, where=str(path))
    if "dim" not in cfg["query_encoder"]:
        raise ModelLoadError(f"{path}: query_encoder.dim is missing")
    return cfg


def refuse_pickles(directory: Path) -> None:
    if (directory / WEIGHTS_NAME).is_file():
        return
    pickles = [p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise ModelLoadError(
            f"{directory} holds pickle weights ({', '.join(pickles)}), "
            "which querysep refuses to load "
            f"(they can run code); convert them to {WEIGHTS_NAME}"
        )
    raise ModelLoadError(f"{directory}: {WEIGHTS_NAME} is missing")


def check_against_weights(family: str, model_cfg: dict[str, Any], path: Path) -> None:
    """Builds the model on the meta device (no memory) and compares its tensors with the
    weights file's header, so a config asking for a 4 TB model is refused before anything is
    allocated: bundles come from the Hub and are not trusted."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read weights {path}: {first_line(exc)}") from None
    if not family_class(family).builds_offline(model_cfg):  # a hub VAE: fetched once, not twice
        return
    try:
        with torch.device("meta"):
            probe = build_model(family, model_cfg)
    except ConfigError:
        raise
    except Exception:  # a family that cannot be built on meta: load_state_dict still checks
        return
    expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    problems = [f"missing {k}" for k in expected if k not in stored]
    problems += [f"unexpected {k}" for k in stored if k not in expected]
    problems += [
        f"{k} is {list(stored[k])} in the file, {list(shape)} by the config"
        for k, shape in expected.items()
        if k in stored and stored[k] != shape
    ]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelLoadError(
            f"weights in {path} do not match the config: {'; '.join(problems[:3])}{more}"
        )


def load_weights(model: SeparatorModel, path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read weights {path}: {exc}") from None
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()
        raise ModelLoadError(
            f"weights in {path} do not fit the config: {first[-1].strip() if first else exc}"
        ) from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {', '.join(result.missing_keys[:5])}")
    if result.unexpected_keys:
        problems.append(f"unexpected {', '.join(result.unexpected_keys[:5])}")
    if problems:
        raise ModelLoadError(f"weights in {path} do not match the config: {'; '.join(problems)}")
