"""Contrastive CLAP fitting on a caption manifest (`querysep train-clap`).

A separator can only be asked for what its query encoder tells apart. LAION's CLAP already
knows general audio; a tiny random CLAP (offline smoke runs) knows nothing and maps every
caption to nearly the same vector, so no separator trained on it can follow a query. This fits
a CLAP on the manifest's own (clip, caption) pairs with CLAP's symmetric contrastive loss:
paraphrases of a class and audio examples of it end up near each other. It is also how a real
CLAP is adapted to a new domain before training a separator on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from querysep.data.manifest import Entry, Manifest
from querysep.data.mixing import MixingConfig, crop, fit_clip
from querysep.errors import DataError, QuerysepError
from querysep.query.clap import CLAP_SAMPLE_RATE, ClapQueryEncoder, _pooled, _unit
from querysep.train.optim import lr_factor

#: Peak learning rate when adapting a pretrained CLAP: more would erase what it knows.
PRETRAINED_LR = 1e-5
#: `init` values that start from random weights rather than a CLAP folder or Hub id: the tiny
#: CLAP as tests build it, or one whose vocabulary is the training captions' words.
RANDOM_INITS = ("tiny", "captions")


@dataclass
class ClapFitConfig:
    steps: int = 300
    #: Clips per step, each of a different class: CLAP's loss treats every other item of the
    #: batch as a negative, so two clips of one class would be pushed apart.
    batch_size: int = 16
    lr: float = 2e-3  # from the tiny random CLAP; a pretrained one takes PRETRAINED_LR
    weight_decay: float = 0.01
    warmup_steps: int = 20
    #: Crop length; CLAP repeat-pads short crops to its 10 s window.
    seconds: float = 3.0
    seed: int = 0
    #: The extractor's features computed in torch, batched (`batch_audio_inputs`): equal to
    #: about 1e-3 dB and faster, yet a fit diverges from one made without them, so it is an
    #: explicit choice (`make mini` makes it) that keeps earlier fits repeatable.
    batched_features: bool = False
    #: Forward and backward under bfloat16 autocast (weights and optimiser stay fp32): about
    #: 2x faster where the CPU has bf16 matrix units (AMX), slower where it emulates them.
    bf16: bool = False


def class_of(entry: Entry) -> str:
    """What counts as one class: the first label, else the caption set."""
    return entry.labels[0] if entry.labels else "\x00".join(entry.captions)


class ClipBank:
    """Decoded mono 48 kHz clips of a manifest, loaded once (corpora this is used on are small
    or sub-sampled)."""

    def __init__(self, manifest: Manifest) -> None:
        from querysep import audio as qaudio

        self.manifest = manifest
        mixing = MixingConfig(sample_rate=CLAP_SAMPLE_RATE, channels=1)
        self.clips: list[np.ndarray] = []
        self.entries: list[Entry] = []
        for entry in manifest:
            data, rate = qaudio.load(manifest.path_of(entry))
            clip = fit_clip(data, rate, mixing)
            if np.any(clip):
                self.clips.append(clip)
                self.entries.append(entry)
        self.by_class: dict[str, list[int]] = {}
        for i, entry in enumerate(self.entries):
            self.by_class.setdefault(class_of(entry), []).append(i)
        if len(self.by_class) < 2:
            raise DataError("fitting CLAP needs clips of at least two classes")


def fit_clap(
    encoder: ClapQueryEncoder,
    train: Manifest,
    cfg: ClapFitConfig,
    *,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Trains `encoder.model` in place; returns the loss per step."""
    bank = ClipBank(train)
    model = encoder.model.train().requires_grad_(True)
    device = encoder.device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(  # linear warm-up, cosine decay to a tenth
            step,
            schedule="cosine",
            warmup_steps=cfg.warmup_steps,
            total_steps=cfg.steps,
            min_ratio=0.1,
        ),
    )
    classes = sorted(bank.by_class)
    per_batch = min(cfg.batch_size, len(classes))
    frames = round(cfg.seconds * CLAP_SAMPLE_RATE)
    losses: list[float] = []
    # dropout draws from torch's global generator: seed it so a run is repeatable
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        try:
            for step in range(cfg.steps):
                rng = np.random.default_rng([cfg.seed, step])
                chosen = rng.choice(len(classes), size=per_batch, replace=False)
                idx = [int(rng.choice(bank.by_class[classes[c]])) for c in chosen]
                crops = [crop(bank.clips[i], frames, rng)[0] for i in idx]
                captions = [str(rng.choice(bank.entries[i].captions)) for i in idx]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    loss = contrastive_loss(encoder, crops, captions, batched=cfg.batched_features)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                with torch.no_grad():  # LAION clamps the temperature the same way
                    model.logit_scale_a.clamp_(0, math.log(100))
                    model.logit_scale_t.clamp_(0, math.log(100))
                losses.append(loss.item())
                if on_step:
                    on_step(step + 1, losses[-1])
        finally:
            model.eval().requires_grad_(False)
            encoder.clear_cache()  # embeddings of the old weights
    return losses


def contrastive_loss(
    encoder: ClapQueryEncoder,
    crops: list[np.ndarray],
    captions: list[str],
    *,
    batched: bool = False,
) -> Tensor:
    """CLAP's symmetric InfoNCE: clip i should match caption i among the batch's captions."""
    model = encoder.model
    if batched:  # the extractor's per-clip numpy spectrograms were half of a step's time
        inputs = encoder.batch_audio_inputs(torch.from_numpy(np.stack(crops)).to(encoder.device))
    else:
        inputs = encoder.audio_inputs(crops)
    audio = _unit(_pooled(model.get_audio_features(**inputs)))
    text = _unit(_pooled(model.get_text_features(**encoder.text_inputs(captions))))
    target = torch.arange(len(captions), device=encoder.device)
    logits_a = model.logit_scale_a.exp() * audio @ text.T
    logits_t = model.logit_scale_t.exp() * text @ audio.T
    ce = torch.nn.functional.cross_entropy
    return 0.5 * (ce(logits_a, target) + ce(logits_t, target))


@torch.no_grad()
def zero_shot_accuracy(
    encoder: ClapQueryEncoder, manifest: Manifest | ClipBank, seconds: float = 3.0
) -> dict[str, float]:
    """Each clip classified by its nearest class caption (every caption of every class of the
    manifest competes), from a random active crop: top-1 and top-3 accuracy; plus how far
    apart the classes' captions are: within-class minus across-class cosine (about 0 for an
    encoder that knows nothing)."""
    bank = manifest if isinstance(manifest, ClipBank) else ClipBank(manifest)
    classes = sorted(bank.by_class)
    captions: dict[str, set[str]] = {c: set() for c in classes}
    for entry in bank.entries:
        captions[class_of(entry)].update(entry.captions)
    flat = [(c, t) for c in classes for t in sorted(captions[c])]
    text = encoder.embed_text([t for _, t in flat])
    owner = np.array([classes.index(c) for c, _ in flat])
    frames = round(seconds * CLAP_SAMPLE_RATE)
    rng = np.random.default_rng(0)
    hits = hits3 = 0
    for i, clip in enumerate(bank.clips):
        emb = encoder.embed_audio([crop(clip, frames, rng)[0]], CLAP_SAMPLE_RATE)[0]
        ranked = owner[torch.argsort(text @ emb, descending=True).numpy()]
        nearest = list(dict.fromkeys(ranked.tolist()))[:3]  # classes, nearest first
        truth = classes.index(class_of(bank.entries[i]))
        hits += nearest[0] == truth
        hits3 += truth in nearest
    sim = (text @ text.T).numpy()
    same = owner[:, None] == owner[None, :]
    off = ~np.eye(len(flat), dtype=bool)
    within = float(sim[same & off].mean()) if (same & off).any() else float("nan")
    across = float(sim[~same].mean())
    return {
        "accuracy": hits / len(bank.clips),
        "top3": hits3 / len(bank.clips),
        "chance": 1 / len(classes),
        "caption_margin": within - across,
    }


def train_clap(
    manifest: str | Path,
    out: str | Path,
    config: ClapFitConfig,
    *,
    init: str = "tiny",
    valid: str | Path | None = None,
    root: str | Path | None = None,
    force: bool = False,
    report: Callable[[str, dict[str, float]], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """`querysep train-clap`: fits a CLAP (the tiny random one, the same with a vocabulary of
    the manifest's caption words, or a pretrained folder / Hub id) to a manifest's captions and
    writes it to `out` atomically. `report(when, scores)` gets the zero-shot scores on `valid`
    before and after. Returns the per-step losses."""
    from querysep.data.manifest import read_manifest
    from querysep.files import atomic_dir, holds, refuse_nonempty
    from querysep.query.clap import ClapQueryEncoder

    if min(config.steps, config.batch_size) < 1 or config.lr <= 0 or config.seconds <= 0:
        raise QuerysepError("steps, batch size, learning rate and seconds must be positive")
    out = Path(out)
    inputs = [
        Path(manifest),
        Path(valid) if valid else None,
        Path(init) if init not in RANDOM_INITS else None,
    ]
    if any(p is not None and p.exists() and holds(out, p) for p in inputs):
        raise QuerysepError(f"{out} holds an input: choose another output folder")
    refuse_nonempty(out, force)
    train = read_manifest(manifest, root=root)
    bank = ClipBank(read_manifest(valid, root=root)) if valid else None  # decoded once
    if init in RANDOM_INITS:
        captions = [c for entry in train for c in entry.captions] if init == "captions" else []
        encoder = ClapQueryEncoder.tiny(config.seed, captions=captions)
    else:
        encoder = ClapQueryEncoder.from_pretrained(init)
    if config.batched_features and encoder.fused:
        raise QuerysepError("batched features are for unfused CLAPs; this one is fused")
    if bank is not None and report is not None:
        report("before", zero_shot_accuracy(encoder, bank, config.seconds))
    losses = fit_clap(encoder, train, config, on_step=on_step)
    if not all(math.isfinite(x) for x in losses):
        raise QuerysepError("the contrastive loss became NaN: try a lower learning rate")
    if bank is not None and report is not None:
        report("after", zero_shot_accuracy(encoder, bank, config.seconds))
    atomic_dir(out.resolve(), encoder.save_pretrained)
    return losses
