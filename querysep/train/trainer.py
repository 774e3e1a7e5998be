"""`querysep train CONFIG`: an Accelerate training loop for any separator family.

One script from a laptop CPU to multi-node GPUs: Accelerate handles devices, DDP (FSDP and
DeepSpeed through its own config), mixed precision and gradient accumulation. A run resumes from
its newest checkpoint when started again with the same command; because mixtures are a pure
function of (seed, index) and Accelerate restores model, optimizer and RNG states, a resumed run
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from querysep import metrics
from querysep.errors import ConfigError, ModelLoadError
from querysep.train.config import ModelSection, TrainConfig

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """`TrainConfig.load` under the name scripts written before the typed config call."""
    return TrainConfig.load(path, overrides)


def _model_config(m: ModelSection) -> dict[str, Any]:
    """The model config with model.extend's hyper-parameters, its query encoder replaced by
    model.query_encoder (a CLAP folder, e.g. from `querysep train-clap`, or a hub id) when the
    training config names one."""
    from querysep.config import load_config, normalize_config

    raw = m.config
    cfg = load_config(raw) if isinstance(raw, (str, Path)) else normalize_config(raw)
    if m.extend:
        # the model's builder checks these keys as it checks the file's: a misspelt one fails
        cfg = normalize_config({**cfg, "model": {**cfg["model"], **m.extend}})
    encoder = m.query_encoder
    if encoder:
        key = "path" if Path(encoder).exists() else "hub_id"
        cfg["query_encoder"] = {key: str(encoder)}
    return cfg


def _extended(separator: Any, extra: dict[str, Any], seed: int) -> Any:
    """The bundle's model rebuilt with `extra` hyper-parameters (`model.extend`): what it adds
    starts from a seeded initialisation, every weight the bundle has carries over."""
    from querysep.models import build_model
    from querysep.separator import Separator

    cfg = dict(separator.config)
    cfg["model"] = {**cfg["model"], **extra}
    old = separator.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(
            cfg["family"],
            {**cfg["model"], "sample_rate": old.sample_rate, "query_dim": old.query_dim},
        )
    try:
        result = model.load_state_dict(old.state_dict(), strict=False)
    except RuntimeError as exc:
        raise ConfigError(f"model.extend {extra} changes the shape of bundle weights") from exc
    if result.unexpected_keys:
        raise ConfigError(
            f"model.extend {extra} leaves bundle weights without a place: "
            f"{', '.join(result.unexpected_keys[:3])}"
        )
    return Separator(model, cfg, separator.query_encoder)


def _frozen_norms(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Batch norms whose parameters are all frozen. They stay in eval mode while the rest
    trains: in train mode they would normalise by each batch's statistics and move their
    running ones, so a frozen network would still change, and differ from what inference
    runs."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [
        m
        for m in model.modules()
        if isinstance(m, _BatchNorm)
        and m.track_running_stats
        and not any(p.requires_grad for p in m.parameters())
    ]


class _WithLoss(torch.nn.Module):
    """Model + objective in one module, so DDP sees the whole forward (and syncs gradients)
    whether the family is trained by reconstruction or owns its objective (flow matching)."""

    def __init__(self, model: torch.nn.Module, loss: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(
        self, mixture: torch.Tensor, target: torch.Tensor, query: torch.Tensor, negative: Any
    ) -> dict[str, torch.Tensor]:
        if hasattr(self.model, "training_loss"):  # generative families own their objective
            return self.model.training_loss(mixture, target, query, negative)
        return self.loss(self.model(mixture, query, negative), target, mixture)


# -- the loop -----------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig | Mapping[str, Any]) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

        from querysep.separator import Separator
        from querysep.train.losses import SeparationLoss
        from querysep.train.optim import EMA, AutoClip

        if not isinstance(cfg, TrainConfig):  # a mapping shaped like the YAML file
            cfg = TrainConfig.from_dict(dict(cfg))
        self.cfg = cfg
        t = cfg.train
        self.out = Path(cfg.output_dir)
        # Accelerate keeps one state per process and refuses a second Accelerator with another
        # precision; a new run (a notebook's second `train`) configures the process afresh.
        # The distributed PartialState (process group) is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = Accelerator(
            gradient_accumulation_steps=int(t.grad_accum),
            mixed_precision=t.mixed_precision,
            log_with=t.tracker if t.tracker not in (None, "none") else None,
            project_config=ProjectConfiguration(project_dir=str(self.out)),
            # every rank reads its own data (shard streams split by rank); never broadcast
            dataloader_config=DataLoaderConfiguration(dispatch_batches=False),
        )
        set_seed(int(t.seed))
        m = cfg.model
        if m.bundle:
            self.separator = Separator.from_pretrained(m.bundle, device="cpu")
            if m.extend:
                self.separator = _extended(self.separator, m.extend, int(m.seed))
        else:
            self.separator = Separator.from_config(_model_config(m), seed=int(m.seed))
        self.model = _WithLoss(self.separator.model.train(), SeparationLoss(cfg.loss))
        for name, p in self.separator.model.named_parameters():
            if any(name.startswith(prefix) for prefix in m.freeze):
                p.requires_grad_(False)
        self._frozen_norms = _frozen_norms(self.separator.model)
        try:
            self.encoder = self.separator.query_encoder.to(self.accelerator.device)
        except ModelLoadError as exc:
            if not m.query_encoder:
                raise
            raise ConfigError(
                f"model.query_encoder {m.query_encoder!r} is neither a CLAP folder nor a "
                f"loadable Hub model (`querysep train-clap` writes one): {exc}"
            ) from None
        self._text_cache = self._precomputed_captions()
        self._valid_batches: list[dict[str, Any]] | None = None
        self._absent_batches: list[dict[str, Any]] | None = None
        o = cfg.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("model.freeze leaves nothing to train")
        self.optimizer = torch.optim.AdamW(
            params,
            lr=float(o.lr),
            betas=tuple(o.betas),
            weight_decay=float(o.weight_decay),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.ema = EMA(self.separator.model, float(t.ema)) if t.ema else None
        self.autoclip = AutoClip(float(t.clip.percentile))
        self.state = {"step": 0, "best_sdri": -math.inf, "best_step": None}
        self.loader = self._train_loader()
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if not cfg.data.shards:
            # shard streams are split between ranks by webdataset itself; Accelerate's
            # iterable sharding would split them a second time and drop most items
            self.loader = self.accelerator.prepare(self.loader)
        # scheduler, AutoClip and EMA are saved by the trainer itself (JSON + safetensors):
        # Accelerate would pickle them and read them back with weights_only=False

    # -- setup ----------------------------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        from querysep.train.optim import lr_factor

        o = self.cfg.optim
        return lr_factor(
            step,
            schedule=o.schedule,
            warmup_steps=int(o.warmup_steps),
            total_steps=int(self.cfg.train.max_steps),
            min_ratio=float(o.min_lr_ratio),
            decay_fraction=float(o.decay_fraction),
        )

    def _mixing(self, **override: Any) -> Any:
        from querysep.data.mixing import MixingConfig

        raw = {"sample_rate": self.separator.sample_rate, **self.cfg.data.mixing, **override}
        return MixingConfig.from_dict(raw)

    def _manifest(self, path: Path) -> Any:
        from querysep.data.manifest import read_manifest

        return read_manifest(path, root=self.cfg.data.root)

    def _train_loader(self) -> torch.utils.data.DataLoader:
        from querysep.data.mixing import MixingDataset, collate

        t, d = self.cfg.train, self.cfg.data
        per_step = int(t.batch_size) * int(t.grad_accum) * self.accelerator.num_processes
        if d.shards:
            from querysep.data.shards import ShardMixingStream

            dataset: Any = ShardMixingStream(
                d.shards, self._mixing(), seed=int(t.seed), pool_size=int(d.pool_size)
            )
        else:
            dataset = MixingDataset(
                self._manifest(d.train),
                self._mixing(),
                length=int(t.max_steps) * per_step,
                seed=int(t.seed),
            )
        workers = int(d.num_workers)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=int(t.batch_size),
            shuffle=False,  # items are already random draws; order must be replayable
            num_workers=workers,
            collate_fn=collate,
            drop_last=not d.shards,
            persistent_workers=workers > 0,
        )

    # -- queries --------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        from querysep.query.embeddings import fold_negative

        pos = self._text(batch["caption"])
        examples = [i for i, a in enumerate(batch["query_audio"]) if a.numel()]
        if examples:
            pos[examples] = self._embed_examples([batch["query_audio"][i] for i in examples])
        neg = None
        if any(batch["negative"]):
            zero = torch.zeros_like(pos[0])
            neg = torch.stack([self._text([n])[0] if n else zero for n in batch["negative"]])
            if not getattr(self.separator.model, "accepts_negative", False):
                pos, neg = fold_negative(pos, neg), None
        device = self.accelerator.device
        return pos.to(device), (neg.to(device) if neg is not None else None)

    def _embed_examples(self, clips: list[torch.Tensor]) -> torch.Tensor:
        """Audio-example queries: in one batched pass when the encoder and the clips allow it."""
        from querysep.query.clap import CLAP_WINDOW_SECONDS

        rate = self.separator.sample_rate
        one_length = clips[0].ndim == 1 and len({c.shape for c in clips}) == 1
        if one_length and not self.encoder.fused and len(clips[0]) <= CLAP_WINDOW_SECONDS * rate:
            return self.encoder.embed_crops(torch.stack(clips), rate)
        return self.encoder.embed_audio([c.numpy() for c in clips], rate)

    def _text(self, captions: list[str]) -> torch.Tensor:
        """Caption embeddings, each computed alone and kept: a caption's embedding must not
        depend on which batch first saw it (padding shifts the numbers slightly), or a resumed
        run would drift from an uninterrupted one."""
        from querysep.query.embeddings import embed_caption

        cache = self._text_cache
        for caption in captions:
            if caption not in cache:
                cache[caption] = embed_caption(self.encoder, caption)
        return torch.stack([cache[c] for c in captions])

    def _precomputed_captions(self) -> dict[str, torch.Tensor]:
        """Caption embeddings written by `querysep data embed`, when the config names them."""
        from querysep.query.embeddings import load_embeddings

        path = self.cfg.data.embeddings
        cache = load_embeddings(path) if path else {}
        if cache and next(iter(cache.values())).shape[-1] != self.separator.model.query_dim:
            raise ConfigError(f"{path} holds embeddings of another size than the model's")
        return cache

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        for norm in self._frozen_norms:  # validation's model.train() turned them back on
            norm.eval()
        mixture, target = batch["mixture"], batch["target"]
        b, c, n = mixture.shape
        pos, neg = self.embed(batch)
        pos = pos.repeat_interleave(c, dim=0)
        neg = neg.repeat_interleave(c, dim=0) if neg is not None else None
        device = self.accelerator.device
        mix, tgt = mixture.reshape(b * c, n).to(device), target.reshape(b * c, n).to(device)
        return self.model(mix, tgt, pos, neg)

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        root = self.out / CHECKPOINTS
        return sorted(root.glob("step_*[0-9]")) if root.is_dir() else []

    def save_checkpoint(self) -> None:
        acc = self.accelerator
        final = self.out / CHECKPOINTS / f"step_{self.state['step']:08d}"
        staging = final.with_name(final.name + ".partial")
        if acc.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(staging))
        if acc.is_main_process:
            self._save_extra(staging)
            staging.rename(final)  # a checkpoint exists only once complete
            for old in self.checkpoints()[: -int(self.cfg.train.keep_last)]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _save_extra(self, directory: Path) -> None:
        from safetensors.torch import save_file

        sched = self.scheduler
        extra = {
            **self.state,
            "scheduler": {"last_epoch": sched.last_epoch, "_step_count": sched._step_count},
            "autoclip": self.autoclip.state_dict(),
        }
        (directory / STATE_FILE).write_text(json.dumps(extra))
        if self.ema:
            save_file(self.ema.shadow, str(directory / EMA_FILE))

    def _load_extra(self, directory: Path) -> None:
        from safetensors.torch import load_file

        extra = json.loads((directory / STATE_FILE).read_text())
        self.scheduler.load_state_dict({**self.scheduler.state_dict(), **extra.pop("scheduler")})
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self.autoclip.load_state_dict(extra.pop("autoclip"))
        self.state = extra
        if self.ema:
            self.ema.load_state_dict(
                {"decay": self.ema.decay, "shadow": load_file(str(directory / EMA_FILE))}
            )

    def resume(self) -> int:
        found = self.checkpoints()
        if not found:
            return 0
        latest = found[-1]
        self.accelerator.load_state(str(latest))
        self._load_extra(latest)
        self.accelerator.print(f"resumed from {latest} (step {self.state['step']})")
        return int(self.state["step"])

    # -- validation and export ------------------------------------------------------------------
    @contextlib.contextmanager
    def averaged(self) -> Iterator[torch.nn.Module]:
        """The model in eval mode with the EMA weights swapped in, and back out afterwards.

        Swapping in place instead of copying the model: some modules cannot be deep-copied
        (weight-normalised convolutions in VAEs), and a copy would double the memory.
        """
        model = self.accelerator.unwrap_model(self.model).model
        was_training = model.training
        saved = None
        if self.ema:
            state = model.state_dict()
            saved = {k: state[k].detach().clone() for k in self.ema.shadow}
            self.ema.apply_to(model)
        model.eval()
        try:
            yield model
        finally:
            if saved is not None:
                model.load_state_dict(saved, strict=False)
            model.train(was_training)

    def _valid_set(self, salt: int, **mixing: Any) -> list[dict[str, Any]]:
        from querysep.data.mixing import MixingDataset, collate

        ds = MixingDataset(
            self._manifest(self.cfg.data.valid),
            self._mixing(**mixing),
            length=int(self.cfg.data.valid_items),
            seed=int(self.cfg.train.seed) + salt,
        )
        return list(torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate))

    def _valid_outputs(
        self, batches: list[dict[str, Any]]
    ) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
        with self.averaged() as model:
            for batch in batches:
                b, c, n = batch["mixture"].shape
                pos, neg = self.embed(batch)
                mix = batch["mixture"].reshape(b * c, n).to(self.accelerator.device)
                est = model(mix, pos.repeat_interleave(c, 0), neg)
                yield batch, est.reshape(b, c, n).float().cpu()

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean SDRi over held-out mixtures whose target is present, text queries only."""
        if not self.cfg.data.valid:
            return None
        if self._valid_batches is None:
            self._valid_batches = self._valid_set(
                1_000_003, audio_query_share=0.0, absent_share=0.0, negative_share=0.0
            )
        scores = [
            metrics.sdr_improvement(est, batch["target"], batch["mixture"]).ravel()
            for batch, est in self._valid_outputs(self._valid_batches)
        ]
        return float(np.mean(np.concatenate(scores)))

    @torch.no_grad()
    def validate_absent(self) -> dict[str, float] | None:
        """Held-out mixtures that do not hold the queried sound, when training asks for them:
        the share whose output is at least 15 dB below the mixture, and the median level. SDRi
        cannot score these (the right answer is silence), so they are reported beside it."""
        if not self.cfg.data.valid or not self._mixing().absent_share:
            return None
        if self._absent_batches is None:
            self._absent_batches = self._valid_set(
                2_000_003, audio_query_share=0.0, absent_share=1.0, negative_share=0.0,
                absent_from=0,
            )  # fmt: skip
        levels = np.concatenate([
            metrics.energy_ratio_db(est, batch["mixture"]).ravel()
            for batch, est in self._valid_outputs(self._absent_batches)
        ])  # fmt: skip
        return {
            "quiet_share": float(np.mean(levels <= -15.0)),
            "median_db": float(np.median(levels)),
        }

    def export(self, name: str) -> Path:
        from querysep.separator import Separator

        path = self.out / name
        with self.averaged() as model:
            Separator(model, self.separator.config, self.separator.query_encoder).save_pretrained(
                path
            )
        return path

    # -- run ------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        acc, t = self.accelerator, self.cfg.train
        max_steps = int(t.max_steps)
        if acc.is_main_process and t.tracker not in (None, "none"):
            acc.init_trackers("querysep", config=_flat_hparams(self.cfg.to_dict()))
        step = self.resume()
        loader = self.loader
        if step and self.cfg.data.shards:  # a stream restarts on a fresh seed instead
            self.loader.dataset.set_epoch(step)
        elif step:
            loader = acc.skip_first_batches(self.loader, step * int(t.grad_accum))
        bar = None
        if acc.is_main_process and t.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=max_steps, initial=step, desc="training", dynamic_ncols=True)
        waited, started, examples = 0.0, time.perf_counter(), 0
        tick = time.perf_counter()
        for batch in loader:
            waited += time.perf_counter() - tick
            with acc.accumulate(self.model):
                parts = self.compute_loss(batch)
                acc.backward(parts["loss"])
                if acc.sync_gradients:
                    self._clip()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            examples += batch["mixture"].shape[0] * acc.num_processes
            if not acc.sync_gradients:
                tick = time.perf_counter()
                continue
            self.scheduler.step()
            step += 1
            self.state["step"] = step
            if self.ema:
                self.ema.update(acc.unwrap_model(self.model).model)
            elapsed = time.perf_counter() - started
            if step % int(t.log_every) == 0 or step == max_steps:
                logs = {f"train/{k}": v.item() for k, v in parts.items()}
                logs |= {
                    "train/lr": self.scheduler.get_last_lr()[0],
                    "train/examples_per_s": examples / max(elapsed, 1e-9),
                    "train/data_wait_share": waited / max(elapsed, 1e-9),
                }
                acc.log(logs, step=step)
                if bar:
                    bar.set_postfix(
                        loss=f"{logs['train/loss']:.3f}", ex_s=f"{logs['train/examples_per_s']:.1f}"
                    )
            if bar:
                bar.update(1)
            if step % int(t.valid_every) == 0 or step == max_steps:
                self._validate_and_keep_best(step)
            if step % int(t.save_every) == 0 or step == max_steps:
                self.save_checkpoint()
            if step >= max_steps:
                break
            tick = time.perf_counter()
        if bar:
            bar.close()
        elapsed = time.perf_counter() - started
        throughput = {
            "seconds": elapsed,
            "examples_per_s": examples / max(elapsed, 1e-9),
            "data_wait_share": waited / max(elapsed, 1e-9),
        }
        final = None
        if acc.is_main_process:
            final = self.export("final")
        acc.wait_for_everyone()
        acc.end_training()
        return {**self.state, **throughput, "final": str(final) if final else None}

    def _clip(self) -> None:
        clip, params = self.cfg.train.clip, self.model.parameters()
        if clip.mode == "none":
            return
        if clip.mode == "fixed":
            self.accelerator.clip_grad_norm_(params, float(clip.value))
            return
        norm = self.accelerator.clip_grad_norm_(params, float("inf"))
        self.accelerator.clip_grad_norm_(
            self.model.parameters(), self.autoclip.threshold(float(norm))
        )

    def _validate_and_keep_best(self, step: int) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            sdri = self.validate()
            absent = self.validate_absent()
            if absent is not None:
                acc.log({f"valid/absent_{k}": v for k, v in absent.items()}, step=step)
                acc.print(
                    f"step {step}: absent targets {absent['quiet_share']:.0%} at <= -15 dB "
                    f"(median {absent['median_db']:.1f} dB)"
                )
            if sdri is not None:
                acc.log({"valid/sdri": sdri}, step=step)
                acc.print(f"step {step}: valid SDRi {sdri:.2f} dB")
                if sdri > self.state["best_sdri"]:
                    self.state.update(best_sdri=sdri, best_step=step)
                    self.export("best")
        acc.wait_for_everyone()


def _flat_hparams(cfg: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _flat_hparams(value, name + ".")
        elif isinstance(value, (int, float, str, bool)):
            out[name] = value
        elif value is not None:
            out[name] = str(value)
    return out


def train(config: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    return Trainer(TrainConfig.load(config, overrides)).fit()
