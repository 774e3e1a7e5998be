from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from querysep.convert.audiosep import convert_resunet, map_key
from querysep.errors import ConfigError, ModelLoadError
from querysep.models import build_model
from querysep.models.resunet import ResUNetSeparator

from .conftest import CONFIGS, DATA

#: Key names and shapes of AudioSep's ResUNet30(1, 1, 512) state dict (facts about its format).
AUDIOSEP_KEYS = json.loads((DATA / "audiosep_resunet30_keys.json").read_text())


def model(name: str = "resunet-audiosep", query_dim: int = 512) -> ResUNetSeparator:
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    torch.manual_seed(0)
    return build_model(
        "resunet", {**cfg["model"], "sample_rate": cfg["sample_rate"], "query_dim": query_dim}
    )


def test_audiosep_checkpoint_layout_maps_onto_every_parameter() -> None:
    m = model()
    fake = {
        k: torch.randn(shape) if shape else torch.tensor(7) for k, shape in AUDIOSEP_KEYS.items()
    }
    conv = convert_resunet(fake)
    assert len(conv.state) + len(conv.dropped) == len(AUDIOSEP_KEYS) == 332
    result = m.load_state_dict(conv.state, strict=True)  # shapes and names all line up
    assert not result.missing_keys and not result.unexpected_keys
    why = set(conv.dropped.values())
    assert why == {"STFT matrices, recomputed", "decoder bn2, unused by AudioSep's forward",
                   "decoder beta2, unused by AudioSep's forward"}  # fmt: skip
    # 26.5 M in AudioSep's count, less the decoder bn2 / beta2 it never uses
    dead = sum(torch.Size(AUDIOSEP_KEYS[k]).numel() for k in conv.dropped if "stft" not in k)
    assert abs(m.num_parameters() + dead - 26.45e6) < 0.1e6


def test_key_mapping_examples_and_unknown_keys() -> None:
    assert map_key("base.encoder_block1.conv_block1.bn1.weight") == "encoders.0.bn1.weight"
    assert (
        map_key("film.decoder_block6->conv_block2->beta2.bias")
        == "decoders.5.conv_block2.film2.proj.bias"
    )
    assert map_key("film.conv_block7a->conv_block1->beta1.weight") == "center.film1.proj.weight"
    assert map_key("base.decoder_block2.bn2.running_mean") is None
    with pytest.raises(ModelLoadError, match="unexpected key"):
        convert_resunet({"base.encoder_block9.extra.weight": torch.zeros(1)})


@pytest.mark.parametrize(("name", "rate"), [("resunet-audiosep", 32000), ("resunet-dcase", 16000)])
@pytest.mark.parametrize("seconds", [0.01, 1.0, 2.337])
def test_shapes_lengths_and_silence(name: str, rate: int, seconds: float) -> None:
    m = model(name).eval()
    n = int(seconds * rate)
    q = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
    with torch.no_grad():
        y = m(torch.randn(2, n) * 0.1, q)
        silent = m(torch.zeros(1, n), q[:1])
    assert y.shape == (2, n) and torch.isfinite(y).all()
    assert silent.abs().max() < 1e-6


def test_film_conditions_the_output_and_grads_flow() -> None:
    m = model("resunet-dcase")
    x = torch.randn(2, 16000) * 0.1
    q = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
    m.eval()
    with torch.no_grad():
        same = m(x, q[:1].expand(2, -1))
        assert torch.allclose(same[0:1], m(x[:1], q[:1]), atol=1e-6)
        for p in (p for n, p in m.named_parameters() if "film" in n):
            p.add_(0.05 * torch.randn_like(p))
        a, b = m(x[:1], q[:1]), m(x[:1], q[1:])
    assert not torch.allclose(a, b, atol=1e-5)
    m.train()
    m(x, q).square().mean().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_config_errors() -> None:
    with pytest.raises(ConfigError):
        build_model("resunet", {"sample_rate": 16000, "query_dim": 8, "widths": [1, 2]})
    with pytest.raises(ConfigError):
        build_model("resunet", {"sample_rate": 16000, "query_dim": 8, "n_fft": 1000})
    with pytest.raises(ConfigError):
        build_model("resunet", {"sample_rate": 16000, "query_dim": 8, "bogus": 1})


def test_runs_in_the_streaming_engine_with_stereo_and_negatives() -> None:
    import numpy as np

    from querysep.separator import Separator

    from .conftest import tone

    cfg = yaml.safe_load((CONFIGS / "resunet-dcase.yaml").read_text())
    cfg["query_encoder"] = {"tiny": True}
    sep = Separator.from_config(cfg)
    assert not sep.model.accepts_negative
    with torch.no_grad():
        for p in (p for n, p in sep.model.named_parameters() if "film" in n):
            p.add_(0.05 * torch.randn_like(p))
    mix = tone(440, 2.5, 44100, channels=2) + tone(3000, 2.5, 44100, channels=2, amp=0.1)
    plain = sep.separate(mix, "dog", sample_rate=44100, chunk_seconds=1.0)
    folded = sep.separate(mix, "dog", sample_rate=44100, chunk_seconds=1.0, negative="rain")
    assert plain.target.shape == mix.shape and np.isfinite(plain.target).all()
    np.testing.assert_allclose(plain.target + plain.residual, mix, atol=1e-6)
    assert not np.allclose(plain.target, folded.target, atol=1e-6)  # negative folded into the query


def test_mask_and_phase_arithmetic_by_hand() -> None:
    """Constant mask logits: |mask| = sigmoid(0) = 0.5 and a rotation by theta of every bin but
    the top one, which AudioSep drops before the UNet and pads back with a zero mask."""
    m = model("resunet-dcase").eval()
    theta = 0.7
    with torch.no_grad():
        m.after_conv.weight.zero_()
        m.after_conv.bias.copy_(
            torch.tensor(
                [0.0, math.atanh(0.5 * math.cos(theta)), math.atanh(0.5 * math.sin(theta))]
            )
        )
    x = torch.randn(1, 16000 + 123) * 0.1
    with torch.no_grad():
        y = m(x, torch.nn.functional.normalize(torch.randn(1, 512), dim=-1))
    spec = m.stft(x)
    expected_spec = 0.5 * spec * complex(math.cos(theta), math.sin(theta))
    expected_spec[:, -1] = 0
    expected = m.stft.inverse(expected_spec, x.shape[-1])
    assert (y - expected).abs().max() < 1e-5


class AttributeDict(dict):
    """Pickled under Lightning's name, as Lightning stores hyper-parameters."""


def _save_lightning_like(path, payload) -> None:
    import sys
    import types

    names = [
        "pytorch_lightning",
        "pytorch_lightning.utilities",
        "pytorch_lightning.utilities.parsing",
    ]
    fakes = {name: types.ModuleType(name) for name in names}
    AttributeDict.__module__ = names[-1]
    fakes[names[-1]].AttributeDict = AttributeDict
    sys.modules.update(fakes)
    try:
        torch.save(payload, path)
    finally:
        for name in names:  # reading must not need them
            del sys.modules[name]


def test_reads_lightning_checkpoints_without_importing_lightning(tmp_path) -> None:
    from querysep.convert.audiosep import read_lightning_checkpoint

    sep = {
        f"ss_model.{k}": torch.randn(s) if s else torch.tensor(3) for k, s in AUDIOSEP_KEYS.items()
    }
    clap = {"query_encoder.model.text_branch.embeddings.word_embeddings.weight": torch.randn(4, 3)}
    payload = {
        "epoch": 3,
        "global_step": 4_000_000,
        "state_dict": {**sep, **clap},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}}],
        "hyper_parameters": AttributeDict(lr=1e-3),
    }
    _save_lightning_like(tmp_path / "audiosep.ckpt", payload)
    ckpt = read_lightning_checkpoint(tmp_path / "audiosep.ckpt")
    assert len(ckpt.separator) == 332 and list(ckpt.query_encoder) == [
        "model.text_branch.embeddings.word_embeddings.weight"
    ]
    assert set(ckpt.skipped) == {"epoch", "global_step", "optimizer_states", "hyper_parameters"}
    conv = convert_resunet(ckpt.separator)
    model().load_state_dict(conv.state, strict=True)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned-by-checkpoint",))


def test_refuses_checkpoints_that_would_run_code(tmp_path, monkeypatch) -> None:
    from querysep.convert.audiosep import read_lightning_checkpoint

    monkeypatch.chdir(tmp_path)
    torch.save(
        {"state_dict": {"ss_model.x": torch.zeros(1)}, "hook": _Exploit()}, tmp_path / "bad.ckpt"
    )
    with pytest.raises(ModelLoadError, match="refusing"):
        read_lightning_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "pwned-by-checkpoint").exists()
    (tmp_path / "junk.ckpt").write_bytes(b"\x80\x04not really a checkpoint")
    with pytest.raises(ModelLoadError):
        read_lightning_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.ckpt")
    with pytest.raises(ModelLoadError, match="state_dict"):
        read_lightning_checkpoint(tmp_path / "plain.ckpt")
    with pytest.raises(ModelLoadError, match="no checkpoint"):
        read_lightning_checkpoint(tmp_path / "missing.ckpt")


def test_presence_gate_scales_each_chunk_as_a_whole_and_starts_open() -> None:
    """The gate multiplies one item's whole output by one number in [0, 1] (the iSTFT is
    linear), starts almost open so a gate added to a trained model barely changes it, and can
    close to silence; without `presence_gate` the model has no such parameters (AudioSep's
    layout)."""
    plain = model("resunet-mini", query_dim=64).eval()
    cfg = yaml.safe_load((CONFIGS / "resunet-mini.yaml").read_text())
    torch.manual_seed(0)
    gated = build_model(
        "resunet",
        {**cfg["model"], "presence_gate": True, "sample_rate": 16000, "query_dim": 64},
    ).eval()
    assert not any(k.startswith("presence") for k in plain.state_dict())
    extra = {k for k in gated.state_dict() if k not in plain.state_dict()}
    assert extra and all(k.startswith("presence.") for k in extra)
    gated.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(3, 16000) * 0.1
    q = torch.nn.functional.normalize(torch.randn(3, 64), dim=-1)
    with torch.no_grad():
        ref = plain(x, q)
        start = torch.sigmoid(torch.tensor(4.0))
        torch.testing.assert_close(gated(x, q), ref * start, rtol=1e-4, atol=1e-7)
        last = gated.presence.score[-1]
        last.weight.normal_(0, 0.5)
        out = gated(x, q)
        gates = (out * ref).sum(-1) / ref.square().sum(-1)  # least-squares scale per item
        torch.testing.assert_close(out, ref * gates[:, None], rtol=1e-4, atol=1e-7)
        assert ((gates > 0) & (gates < 1)).all() and gates.max() - gates.min() > 1e-3
        last.weight.zero_()
        last.bias.fill_(-30.0)
        closed = gated(x, q)
    assert closed.square().sum() / ref.square().sum() < 1e-20


def test_negative_conditioning_is_its_own_film_and_starts_as_the_model_without_it() -> None:
    """`negative: true` adds one zero-initialised FiLM beside each query FiLM (`neg*` keys,
    nothing else), so a trained model extended with it separates exactly as before; "no
    negative" is the all-zero vector whichever way it arrives; once trained, the negative
    changes the output and each item reads its own negative."""
    plain = model("resunet-mini", query_dim=64).eval()
    cfg = yaml.safe_load((CONFIGS / "resunet-mini.yaml").read_text())
    torch.manual_seed(0)
    neg = build_model(
        "resunet", {**cfg["model"], "negative": True, "sample_rate": 16000, "query_dim": 64}
    ).eval()
    assert neg.accepts_negative and not plain.accepts_negative
    assert not any(".neg" in k for k in plain.state_dict())  # AudioSep's layout unchanged
    extra = {k for k in neg.state_dict() if k not in plain.state_dict()}
    assert extra and all(k.split(".")[-3] in ("neg1", "neg2") for k in extra)
    assert not neg.load_state_dict(plain.state_dict(), strict=False).unexpected_keys
    x = torch.randn(3, 16000) * 0.1
    q, n = (torch.nn.functional.normalize(torch.randn(3, 64), dim=-1) for _ in range(2))
    with torch.no_grad():
        ref = plain(x, q)
        torch.testing.assert_close(neg(x, q, n), ref)
        for name, p in neg.named_parameters():
            if ".neg" in name:
                p.normal_(0, 0.2)
        none, zeros, with_n = neg(x, q), neg(x, q, torch.zeros_like(n)), neg(x, q, n)
        alone = neg(x[1:2], q[1:2], n[1:2])
    torch.testing.assert_close(none, zeros)
    assert (with_n - none).abs().amax(-1).min() > 1e-4
    torch.testing.assert_close(alone[0], with_n[1], rtol=1e-4, atol=1e-6)
