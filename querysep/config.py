"""Model configs: YAML files under configs/models/ and the config.json inside a bundle."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from querysep.errors import ConfigError, first_line

#: batch_size "auto": one chunk at a time on CPU (batching buys no speed there and multiplies
#: the working memory), AUTO_ACCELERATOR_BATCH chunks on GPU / MPS.
DEFAULT_INFERENCE = {"chunk_seconds": 6.0, "overlap": 0.25, "batch_size": "auto"}
AUTO_ACCELERATOR_BATCH = 8


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON model config and fill defaults; raises ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot parse config {path}: {first_line(exc)}") from None
    except RecursionError:  # `[[[[...` nested deeper than the parser's stack
        raise ConfigError(f"cannot parse config {path}: nested too deeply") from None
    return normalize_config(raw, where=str(path))


def normalize_config(raw: Any, where: str = "config") -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    cfg = copy.deepcopy(raw)
    for key in ("family", "sample_rate", "model", "query_encoder"):
        if key not in cfg:
            raise ConfigError(f"{where}: missing required key {key!r}")
    if not isinstance(cfg["family"], str):
        raise ConfigError(f"{where}: 'family' must be a string")
    try:
        cfg["sample_rate"] = int(cfg["sample_rate"])
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: sample_rate must be an integer") from None
    if not 8_000 <= cfg["sample_rate"] <= 192_000:
        raise ConfigError(f"{where}: sample_rate {cfg['sample_rate']} is outside 8-192 kHz")
    if not isinstance(cfg["model"], dict):
        raise ConfigError(f"{where}: 'model' must be a mapping")
    qe = cfg["query_encoder"]
    if not isinstance(qe, dict) or not (qe.get("tiny") or qe.get("hub_id") or qe.get("path")):
        raise ConfigError(f"{where}: query_encoder needs one of tiny: true, hub_id: ..., path: ...")
    given = cfg.get("inference") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{where}: 'inference' must be a mapping")
    inference = {**DEFAULT_INFERENCE, **given}
    validate_inference(inference, where)
    cfg["inference"] = inference
    return cfg


def validate_inference(inference: dict[str, Any], where: str = "inference") -> None:
    chunk, overlap, batch = (
        inference["chunk_seconds"],
        inference["overlap"],
        inference["batch_size"],
    )
    if not _real(chunk) or not 0.1 <= chunk <= 600:
        raise ConfigError(f"{where}: chunk_seconds must be between 0.1 and 600, got {chunk!r}")
    if not _real(overlap) or not 0 <= overlap < 1:
        raise ConfigError(f"{where}: overlap is a fraction in [0, 1), got {overlap!r}")
    if batch != "auto" and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
        raise ConfigError(
            f"{where}: batch_size must be 'auto' or a positive integer, got {batch!r}"
        )


def _real(value: Any) -> bool:
    """A number of seconds or a fraction: an int or float, not a bool (True is not 1 s)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
