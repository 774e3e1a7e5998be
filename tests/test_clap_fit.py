"""Contrastive CLAP fitting (`querysep train-clap`) and training against a fitted encoder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from querysep.data.manifest import read_manifest
from querysep.errors import ConfigError, QueryError
from querysep.query.clap import ClapQueryEncoder
from querysep.train.clap import (
    ClapFitConfig,
    contrastive_loss,
    fit_clap,
    zero_shot_accuracy,
)

from .conftest import ROOT
from .test_train import make_corpus, train_config

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_corpus(tmp_path_factory.mktemp("clap-corpus"))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "querysep", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        cwd=ROOT,
    )


@pytest.mark.parametrize(("batched", "bf16"), [(False, False), (True, False), (True, True)])
def test_fitting_makes_the_tiny_clap_tell_classes_apart(
    corpus: dict[str, Path], batched: bool, bf16: bool
) -> None:
    encoder = ClapQueryEncoder.tiny(0)
    valid = read_manifest(corpus["valid"])
    before = zero_shot_accuracy(encoder, valid, seconds=1.0)
    # the random tiny CLAP: captions of one class no closer than captions of different ones
    assert abs(before["caption_margin"]) < 0.15
    cfg = ClapFitConfig(
        steps=100,
        batch_size=4,
        lr=3e-3,
        seconds=1.0,
        warmup_steps=5,
        batched_features=batched,
        bf16=bf16,
    )
    losses = fit_clap(encoder, read_manifest(corpus["train"]), cfg)
    after = zero_shot_accuracy(encoder, valid, seconds=1.0)
    # measured over seeds 0-3: held-out accuracy 0.25 (chance) -> 0.625-0.875, caption
    # margin 0.04 -> 0.79-1.09
    assert after["accuracy"] >= 0.5 > before["accuracy"]
    assert after["caption_margin"] > 0.5
    assert sum(losses[-10:]) < sum(losses[:10])
    assert not encoder.model.training
    assert not any(p.requires_grad for p in encoder.model.parameters())


def test_batched_features_match_the_feature_extractor() -> None:
    """Fitting computes CLAP's log-mel features in torch; they must be the extractor's, or the
    fitted encoder would see other features at inference than in training."""
    encoder = ClapQueryEncoder.tiny(0)
    rng = np.random.default_rng(0)
    for length in (1_000, 144_000, 470_000, 480_000):  # repeat-padded, tiled, whole window
        crops = (0.1 * rng.standard_normal((3, length))).astype(np.float32)
        crops[1] *= 1e-4  # a quiet one: the -100 dB floor of the log
        ref = encoder.audio_inputs(list(crops))["input_features"]
        got = encoder.batch_audio_inputs(torch.from_numpy(crops))["input_features"]
        assert got.shape == ref.shape == (3, 1, 1001, 64)
        assert (got - ref).abs().max() < 1e-3  # dB
    captions = ["a beep", "a dog barking", "rain falling"]
    plain = contrastive_loss(encoder, list(crops), captions)
    assert torch.isclose(contrastive_loss(encoder, list(crops), captions, batched=True), plain)
    with pytest.raises(QueryError, match="1 to 480000 samples"):
        encoder.batch_audio_inputs(torch.zeros(2, 480_001))
    with pytest.raises(QueryError, match="unfused"):
        ClapQueryEncoder.tiny(0, fused=True).batch_audio_inputs(torch.zeros(2, 1_000))


def test_fitting_is_deterministic(corpus: dict[str, Path]) -> None:
    cfg = ClapFitConfig(steps=3, batch_size=4, seconds=1.0)
    train = read_manifest(corpus["train"])
    a, b = ClapQueryEncoder.tiny(0), ClapQueryEncoder.tiny(0)
    losses = fit_clap(a, train, cfg)
    assert losses == fit_clap(b, train, cfg)
    assert torch.equal(a.embed_text(["a beep"]), b.embed_text(["a beep"]))
    # bf16 autocast is on when asked (other numbers), and repeatable too
    half = ClapFitConfig(steps=3, batch_size=4, seconds=1.0, bf16=True)
    c, d = ClapQueryEncoder.tiny(0), ClapQueryEncoder.tiny(0)
    bf16_losses = fit_clap(c, train, half)
    assert bf16_losses == fit_clap(d, train, half) != losses
    assert c.model.audio_projection.linear1.weight.dtype == torch.float32  # weights stay fp32


def test_batched_crops_embed_like_single_examples() -> None:
    """The separator's trainer embeds audio-example queries in one batched pass: the same
    embeddings `embed_audio` gives one at a time, for crops at the separator's rate."""
    encoder = ClapQueryEncoder.tiny(0)
    rng = np.random.default_rng(1)
    crops = (0.1 * rng.standard_normal((3, 16_000))).astype(np.float32)
    crops[2] *= 1e-3
    batched = encoder.embed_crops(torch.from_numpy(crops), 16_000)
    single = encoder.embed_audio(list(crops), 16_000)
    assert batched.shape == single.shape == (3, encoder.dim)
    assert (batched - single).abs().max() < 1e-4
    assert torch.allclose(batched.norm(dim=-1), torch.ones(3))
    crops[1] = 0.0
    with pytest.raises(QueryError, match="silent"):
        encoder.embed_crops(torch.from_numpy(crops), 16_000)


def test_train_clap_cli_writes_an_encoder_that_configs_take(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "clap"
    args = [str(corpus["train"]), str(out), "--valid", str(corpus["valid"])]
    proc = cli("train-clap", *args, "--steps", "4", "--batch-size", "4", "--seconds", "1")
    assert proc.returncode == 0, proc.stderr
    assert "before: zero-shot accuracy" in proc.stdout and "after:" in proc.stdout
    fitted = ClapQueryEncoder.from_pretrained(out)
    tiny = ClapQueryEncoder.tiny(0)
    assert not torch.allclose(fitted.embed_text(["a beep"]), tiny.embed_text(["a beep"]))

    # a training config swaps the model config's encoder for the fitted one; the exported
    # bundle carries it
    from querysep.separator import Separator
    from querysep.train.trainer import Trainer, load_train_config

    cfg = train_config(tmp_path, corpus, max_steps=2, save_every=1000)
    cfg["model"]["query_encoder"] = str(out)
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    result = Trainer(load_train_config(tmp_path / "t.yaml")).fit()
    bundle = Separator.from_pretrained(result["final"], device="cpu")
    assert torch.equal(bundle.query_encoder.embed_text(["a beep"]), fitted.embed_text(["a beep"]))


def test_a_caption_vocabulary_makes_each_caption_word_one_token() -> None:
    from querysep.data.corpus import CLASSES, captions_of

    captions = [c for label in CLASSES for c in captions_of(label)]
    encoder = ClapQueryEncoder.tiny(0, captions=captions)
    words = encoder.processor.tokenizer.tokenize
    # what the byte-level pre-tokenizer cuts (a word, "'s", a hyphen) is never split further
    split = [c for c in captions if len(words(c)) != len(re.findall(r"'s|\w+|[^\w\s]", c))]
    assert not split, split
    spelt = ClapQueryEncoder.tiny(0).processor.tokenizer.tokenize  # the tests' tiny vocabulary
    assert len(spelt("a trombone playing")) > 3
    # words the captions never had still tokenize, byte by byte, and embed
    emb = encoder.embed_text(["a glass shattering on tiles"])
    assert emb.shape == (1, encoder.dim) and bool(torch.isfinite(emb).all())


def test_train_clap_from_the_captions_vocabulary(corpus: dict[str, Path], tmp_path: Path) -> None:
    from querysep.train.clap import train_clap

    out = tmp_path / "clap"
    cfg = ClapFitConfig(steps=2, batch_size=4, seconds=1.0)
    losses = train_clap(corpus["train"], out, cfg, init="captions")
    assert len(losses) == 2 and all(np.isfinite(losses))
    fitted = ClapQueryEncoder.from_pretrained(out)
    assert fitted.processor.tokenizer.tokenize("a low hum") == ["a", "Ġlow", "Ġhum"]
    assert fitted.model.config.text_config.hidden_size == 64  # the wider text tower
    assert fitted.dim == ClapQueryEncoder.tiny(0).dim  # separators built for the tiny one fit


def test_train_clap_cli_refuses_bad_requests(corpus: dict[str, Path], tmp_path: Path) -> None:
    fused = tmp_path / "fused-clap"
    ClapQueryEncoder.tiny(0, fused=True).save_pretrained(fused)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    proc = cli("train-clap", str(corpus["train"]), str(busy), "--steps", "1")
    assert proc.returncode != 0 and "not empty" in proc.stderr
    assert (busy / "keep.txt").read_text() == "mine"
    proc = cli("train-clap", str(corpus["train"]), str(corpus["train"].parent), "--steps", "1")
    assert proc.returncode != 0 and "holds an input" in proc.stderr
    proc = cli("train-clap", str(corpus["train"]), str(tmp_path / "x"), "--steps", "0")
    assert proc.returncode != 0 and "must be positive" in proc.stderr
    proc = cli(
        "train-clap",
        str(corpus["train"]),
        str(tmp_path / "x"),
        "--batched-features",
        "--init",
        str(fused),
    )
    assert proc.returncode != 0 and "fused" in proc.stderr
    proc = cli("train-clap", str(tmp_path / "none.jsonl"), str(tmp_path / "x"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_a_missing_query_encoder_is_a_config_error(corpus: dict[str, Path], tmp_path: Path) -> None:
    from querysep.train.trainer import Trainer, load_train_config

    cfg = train_config(tmp_path, corpus)
    cfg["model"]["query_encoder"] = str(tmp_path / "not-fitted-yet")
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="querysep train-clap"):
        Trainer(load_train_config(tmp_path / "t.yaml"))


def test_a_bundle_keeps_its_own_encoder(tmp_path: Path) -> None:
    from querysep.train.trainer import load_train_config

    cfg = tmp_path / "c.yaml"
    model = {"bundle": "some/bundle", "query_encoder": "some/clap"}
    cfg.write_text(yaml.safe_dump({"data": {"train": "x.jsonl"}, "model": model}))
    with pytest.raises(ConfigError, match="keeps the encoder"):
        load_train_config(cfg)
