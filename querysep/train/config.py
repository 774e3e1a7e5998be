"""The training config of `querysep train CONFIG`: typed sections, checked once when read.

A config is read in three passes: the YAML file's values (relative paths joined to the file's
folder), then each `--set KEY=VALUE` (its value read as YAML, relative paths joined to the
current folder, where the user typed it), then the checks. A wrong key, number or type is a
one-line `ConfigError` before any model or data is touched: a typo costs seconds, not a run.

Which values are paths (`resolve_path` applies the rule; the base folder is the config file's
folder for values in the file, the current folder for `--set` values and for a mapping handed
to `TrainConfig.from_dict`):

- `model.config` (when a file name, not an inline mapping), `data.train`, `data.valid`,
  `data.root`, `data.embeddings` and `output_dir` always name files or folders: a relative value
  is joined to the base folder.
- `model.bundle` and `model.query_encoder` may instead name a model elsewhere (a registry name
  such as `querysep-mini`, a Hub id such as `laion/clap-htsat-unfused`). A value is a path when
  it starts with `.`, `/` or `~`, or when it exists relative to the base folder; otherwise it is
  kept as written. A registry name is never a path for `model.bundle` (the loader looks names up
  first), so write `./querysep-mini` for a folder of that name.
- `data.shards` (a string, `::`-separated patterns, or a list) is local unless a piece starts
  with a URL scheme (`https://`, `s3://`, `pipe:`, `file:`) or `$` (webdataset expands
  `$WDS_...` variables itself): local pieces are joined to the base folder as text, so brace
  patterns (`train-{000000..000127}.tar`) stay patterns.

Absolute values are kept, `~` is expanded, and a joined path is absolute (the base folder is
made absolute first): what the trainer logs names the files it read wherever it runs. The
default `output_dir` (`runs/querysep`, used when neither file nor `--set` names one) stays
relative to the current folder.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from querysep.errors import ConfigError, first_line

PRECISIONS = ("no", "bf16", "fp16")
CLIP_MODES = ("fixed", "autoclip", "none")
#: Experiment trackers Accelerate knows (`none` or null: no tracker).
TRACKERS = ("none", "all", "aim", "tensorboard", "wandb", "trackio", "comet_ml", "mlflow",
            "clearml", "dvclive", "swanlab")  # fmt: skip
#: Mappings kept as given: `MixingConfig.from_dict` and `SeparationLoss` check their keys.
FREE_FORM = ("mixing", "loss", "extend")


# -- the sections -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSection:
    """What to train: a model config from scratch (`config`), or a bundle to fine-tune."""

    config: Path | dict[str, Any] | None = None
    bundle: str | None = None
    query_encoder: str | None = None
    freeze: list[str] = field(default_factory=list)
    #: Hyper-parameters added to the model config (e.g. `negative: true`), so one model file
    #: serves several recipes. On a bundle the parts they add start from their initialisation
    #: and every weight the bundle has carries over.
    extend: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass(frozen=True)
class DataSection:
    """Where clips come from: a manifest (`train`) or a webdataset shard stream (`shards`)."""

    train: Path | None = None
    valid: Path | None = None
    root: Path | None = None
    mixing: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 0
    valid_items: int = 32
    embeddings: Path | None = None
    shards: str | list[str] | None = None
    pool_size: int = 512


@dataclass(frozen=True)
class OptimSection:
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.05
    decay_fraction: float = 0.2


@dataclass(frozen=True)
class ClipSection:
    mode: str = "fixed"
    value: float = 5.0
    percentile: float = 10.0


@dataclass(frozen=True)
class TrainSection:
    max_steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    clip: ClipSection = field(default_factory=ClipSection)
    ema: float | None = None
    mixed_precision: str = "no"
    seed: int = 0
    log_every: int = 10
    valid_every: int = 200
    save_every: int = 200
    keep_last: int = 2
    tracker: str | list[str] | None = "tensorboard"
    progress: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """A checked training config. Build it with `load` (a file) or `from_dict` (a mapping):
    both run every check, so a TrainConfig in hand is one the trainer can start from."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    loss: dict[str, Any] = field(default_factory=lambda: {"l1_snr": 1.0})
    output_dir: Path = Path("runs/querysep")

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
        """The config in `path` (None: the defaults) with `--set KEY=VALUE` overrides."""
        if path is None:
            return cls.from_dict({}, overrides)
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"training config not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
            raise ConfigError(f"cannot parse {path}: {first_line(exc)}") from None
        except RecursionError:  # `[[[[...` nested deeper than the parser's stack
            raise ConfigError(f"cannot parse {path}: nested too deeply") from None
        return cls.from_dict(raw, overrides, base=path.parent)

    @classmethod
    def from_dict(
        cls, raw: Any, overrides: list[str] | None = None, *, base: str | Path | None = None
    ) -> TrainConfig:
        """A mapping shaped like the YAML file; its relative paths join `base` (default: the
        current folder), those in `overrides` always the current folder."""
        here = Path.cwd()
        cfg = _merge(DEFAULTS, _resolve_tree(raw, _absolute(base) if base else here), "config")
        for item in overrides or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
            dotted = key.strip()
            try:
                parsed = yaml.safe_load(value)
            except (yaml.YAMLError, RecursionError) as exc:
                raise ConfigError(
                    f"--set {dotted}: cannot read {value!r}: {first_line(exc)}"
                ) from None
            _set(cfg, dotted, _resolve_key(dotted, parsed, here))
        _check(cfg)
        return cls._build(cfg)

    def to_dict(self) -> dict[str, Any]:
        """The plain mapping (paths as text) the trainer logs as hyper-parameters: the shape
        of the YAML file, and `from_dict` reads it back to a config naming the same files."""
        return _plain(self)

    @classmethod
    def _build(cls, cfg: dict[str, Any]) -> TrainConfig:
        m, d, t = cfg["model"], cfg["data"], cfg["train"]
        config = m["config"]
        return cls(
            model=ModelSection(
                config=_as_path(config) if isinstance(config, str) else (config or None),
                bundle=m["bundle"] or None,
                query_encoder=m["query_encoder"] or None,
                freeze=m["freeze"],
                extend=m["extend"],
                seed=m["seed"],
            ),
            data=DataSection(**{
                **d,
                **{k: _as_path(d[k]) for k in ("train", "valid", "root", "embeddings")},
                "shards": d["shards"] or None,
            }),
            optim=OptimSection(**cfg["optim"]),
            train=TrainSection(**{
                **t,
                "clip": ClipSection(**t["clip"]),
                "tracker": None if t["tracker"] is False else t["tracker"],  # `tracker: false`
            }),
            loss=cfg["loss"],
            output_dir=Path(cfg["output_dir"]),
        )  # fmt: skip


def _as_path(value: str | None) -> Path | None:
    return Path(value) if value else None  # "" and null both mean "not given"


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return copy.deepcopy(value)


#: The defaults as a mapping: the known keys, and the kind of number each numeric key takes.
DEFAULTS: dict[str, Any] = TrainConfig().to_dict()


# -- paths --------------------------------------------------------------------------------------
#: Fields that always name a file or folder.
FILE_FIELDS = ("model.config", "data.train", "data.valid", "data.root", "data.embeddings",
               "output_dir")  # fmt: skip
#: Fields that name a local folder or a model found by name (registry, Hub).
NAME_FIELDS = ("model.bundle", "model.query_encoder")
SHARDS_FIELD = "data.shards"
PATH_FIELDS = (*FILE_FIELDS, *NAME_FIELDS, SHARDS_FIELD)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")  # two letters or more: not a drive letter


def resolve_path(key: str, value: str, base: Path) -> str:
    """`value` of the field `key` as the trainer should read it, `base` being the folder that
    relative paths are relative to; the module docstring states the rule. Blank values are
    kept: they mean "not given", and the checks say so."""
    if not value.strip():
        return value
    if key == SHARDS_FIELD:
        return "::".join(
            piece if _SCHEME.match(piece) or piece.startswith("$") else _join(base, piece)
            for piece in value.split("::")
        )
    if key in FILE_FIELDS:
        return _join(base, value)
    if key == "model.bundle":
        from querysep import pretrained

        if pretrained.lookup(value) is not None:
            return value
    if value.startswith((".", "/", "~")) or _exists(base / value):
        return _join(base, value)
    return value  # a Hub id (or a folder that is not there: the loader says which it tried)


def _join(base: Path, value: str) -> str:
    return str(base / os.path.expanduser(value))  # an absolute value replaces `base`


def _absolute(folder: str | Path) -> Path:
    """Symlinked folders resolved, as the OS does when it follows `..` from them."""
    return Path(folder).expanduser().resolve()


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long, a NUL byte: not a file here
        return False


def _resolve_tree(tree: Any, base: Path) -> Any:
    """`tree` (a config mapping, possibly malformed) with its path fields resolved; values of
    the wrong type are left for the checks to report."""
    if not isinstance(tree, dict):
        return tree
    out = dict(tree)
    for dotted in PATH_FIELDS:
        *parents, last = dotted.split(".")
        node = out
        for part in parents:
            if not isinstance(node.get(part), dict):
                break
            node[part] = node = dict(node[part])
        else:
            value = node.get(last)
            if isinstance(value, str):
                node[last] = resolve_path(dotted, value, base)
            elif dotted == SHARDS_FIELD and isinstance(value, list):
                node[last] = [
                    resolve_path(dotted, v, base) if isinstance(v, str) else v for v in value
                ]
    return out


def _resolve_key(dotted: str, value: Any, base: Path) -> Any:
    """A `--set` value resolved as if it stood at `dotted` in a config file in `base`."""
    parts = dotted.split(".")
    tree: Any = value
    for part in reversed(parts):
        tree = {part: tree}
    tree = _resolve_tree(tree, base)
    for part in parts:
        tree = tree[part]
    return tree


# -- merging and overrides ----------------------------------------------------------------------
def _merge(defaults: dict, raw: Any, where: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping")
    out = copy.deepcopy(defaults)
    for key, value in raw.items():
        if key not in defaults:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {sorted(defaults)})")
        if isinstance(defaults[key], dict) and key not in FREE_FORM:
            out[key] = _merge(defaults[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def _set(cfg: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = cfg
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"--set: {dotted} is not a config key")
        node = node[part]
    if last not in node and not (parents and parents[-1] == "mixing"):
        raise ConfigError(f"--set: {dotted} is not a config key")
    default: Any = DEFAULTS
    for part in (*parents, last):
        default = default.get(part) if isinstance(default, dict) else None
    if isinstance(default, dict) and not isinstance(value, dict):
        raise ConfigError(f"--set: {dotted} is a section; set one of its keys ({dotted}.KEY=...)")
    if isinstance(default, dict) and last not in FREE_FORM:
        # `--set train={max_steps: 5}` sets those keys; the section's others stay as they were
        value = _merge(node[last], value, f"--set {dotted}")
    node[last] = value


# -- checks -------------------------------------------------------------------------------------
def _check(cfg: dict) -> None:
    if bool(cfg["model"]["config"]) == bool(cfg["model"]["bundle"]):
        raise ConfigError(
            "model needs exactly one of config: (from scratch) or bundle: (fine-tune)"
        )
    if cfg["model"]["bundle"] and cfg["model"]["query_encoder"]:
        raise ConfigError(
            "model.query_encoder applies to config: only; a bundle keeps the encoder it was "
            "trained with"
        )
    extend = cfg["model"]["extend"]
    if not isinstance(extend, dict) or not all(isinstance(k, str) for k in extend):
        raise ConfigError(
            f"model.extend must be a mapping of model hyper-parameters, got {extend!r}"
        )
    if bool(cfg["data"]["train"]) == bool(cfg["data"]["shards"]):
        raise ConfigError("data needs exactly one of train: MANIFEST or shards: URLS")
    if cfg["train"]["clip"]["mode"] not in CLIP_MODES:
        raise ConfigError("train.clip.mode must be fixed, autoclip or none")
    _check_numbers(cfg)
    _check_others(cfg)
    _check_paths(cfg)
    precision = cfg["train"]["mixed_precision"]
    if precision is False:  # YAML 1.1 reads an unquoted `no` as false
        cfg["train"]["mixed_precision"] = precision = "no"
    if precision not in PRECISIONS:
        raise ConfigError(
            f"train.mixed_precision is one of {', '.join(PRECISIONS)}, got {precision!r}"
        )


#: Numbers that must be > 0 (the rest of the numeric keys must be >= 0).
_POSITIVE = {"optim.lr", "train.max_steps", "train.batch_size", "train.grad_accum",
             "train.log_every", "train.valid_every", "train.save_every", "data.valid_items",
             "data.pool_size"}  # fmt: skip


def _check_numbers(cfg: dict, defaults: dict = DEFAULTS, where: str = "") -> None:
    """Every key whose default is a number holds a number of that kind, in range: a bad
    `--set train.max_steps=abc` is one line here, not a traceback at step 0."""
    for key, default in defaults.items():
        name, value = f"{where}{key}", cfg.get(key)
        if isinstance(default, dict) and isinstance(value, dict) and key not in FREE_FORM:
            _check_numbers(value, default, f"{name}.")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            whole = isinstance(default, int)
            if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as text
                with contextlib.suppress(ValueError):
                    value = cfg[key] = float(value) if not whole else int(value)
            kind = (int,) if whole else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
                noun = "a whole number" if whole else "a finite number"
                raise ConfigError(f"{name} must be {noun}, got {value!r}")
            if value < 0 or (name in _POSITIVE and value <= 0):
                bound = "> 0" if name in _POSITIVE else ">= 0"
                raise ConfigError(f"{name} must be {bound}, got {value!r}")


def _check_others(cfg: dict) -> None:
    """The keys `_check_numbers` cannot cover (no numeric default): each becomes one line here
    rather than a TypeError inside the optimizer or Accelerate."""
    betas = cfg["optim"]["betas"]
    if (
        not isinstance(betas, list)
        or len(betas) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas)
        or not all(0 <= b < 1 for b in betas)
    ):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {betas!r}")
    freeze = cfg["model"]["freeze"]
    if not isinstance(freeze, list) or not all(isinstance(p, str) and p for p in freeze):
        raise ConfigError(f"model.freeze must be a list of parameter-name prefixes, got {freeze!r}")
    for key in ("min_lr_ratio", "decay_fraction"):
        if not 0 <= cfg["optim"][key] <= 1:
            raise ConfigError(f"optim.{key} must be in [0, 1], got {cfg['optim'][key]!r}")
    ema = cfg["train"]["ema"]
    if ema is not None and (
        isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 <= ema < 1
    ):
        raise ConfigError(f"train.ema must be null (or 0: off) or a decay in (0, 1), got {ema!r}")
    out = cfg["output_dir"]
    if not isinstance(out, str) or not out.strip():
        raise ConfigError(f"output_dir must be a folder name, got {out!r}")
    tracker = cfg["train"]["tracker"]
    named = tracker if isinstance(tracker, list) else [tracker]
    known = all(isinstance(t, str) and t in TRACKERS for t in named)
    if tracker not in (None, False) and not known:
        raise ConfigError(f"train.tracker is one of {', '.join(TRACKERS)}, got {tracker!r}")
    if not isinstance(cfg["data"]["mixing"], dict):
        raise ConfigError(f"data.mixing must be a mapping, got {cfg['data']['mixing']!r}")
    if not isinstance(cfg["loss"], dict):
        raise ConfigError(f"loss must be a mapping, got {cfg['loss']!r}")


def _check_paths(cfg: dict) -> None:
    """Path fields hold text (a number or a list there would fail deep inside a loader)."""
    for dotted in PATH_FIELDS:
        section, _, key = dotted.rpartition(".")
        value = cfg[section][key] if section else cfg[key]
        if value is None or isinstance(value, str):
            continue
        if dotted == "model.config" and isinstance(value, dict):
            continue  # an inline model config
        if dotted == SHARDS_FIELD and isinstance(value, list):
            if all(isinstance(v, str) and v.strip() for v in value):
                continue
            raise ConfigError(f"data.shards must be shard URLs or patterns, got {value!r}")
        raise ConfigError(f"{dotted} must be a path, got {value!r}")
