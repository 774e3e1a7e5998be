"""AudioSep checkpoint import: LAION-CLAP -> ClapModel, `querysep convert audiosep`, registry.

Offline and with random weights. Key names and shapes of the full-size models come from JSON
files written by instantiating the reference code (AudioSep's ResUNet30 and LAION-CLAP's
HTSAT-base + RoBERTa); `bench/clap_equivalence.py` checks the numbers against LAION's own code.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from querysep import pretrained
from querysep.convert import clap
from querysep.convert.audiosep import AUDIOSEP_CONFIG, convert_checkpoint, convert_resunet
from querysep.errors import ModelLoadError
from querysep.models import build_model
from querysep.separator import Separator, load, separate

from .conftest import DATA, tone
from .test_cli import ENV

LAION_KEYS = json.loads((DATA / "laion_clap_htsat_base_keys.json").read_text())
CONVERT = [sys.executable, "-m", "querysep", "convert", "audiosep"]
AUDIOSEP_KEYS = json.loads((DATA / "audiosep_resunet30_keys.json").read_text())


# -- a tiny CLAP in LAION's layout (the inverse of the converter, written independently) --------
_BLOCK_NAMES = [
    ("layernorm_before", "norm1"),
    ("layernorm_after", "norm2"),
    ("attention.self.relative_position_bias_table", "attn.relative_position_bias_table"),
    ("attention.self.relative_position_index", "attn.relative_position_index"),
    ("attention.output.dense", "attn.proj"),
    ("intermediate.dense", "mlp.fc1"),
    ("output.dense", "mlp.fc2"),
]


def to_laion_layout(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in hf_state.items():
        if key == "text_model.embeddings.token_type_ids":
            continue
        m = re.fullmatch(r"(text|audio)_projection\.linear([12])\.(.+)", key)
        if m:
            out[f"{m[1]}_projection.{0 if m[2] == '1' else 2}.{m[3]}"] = value
            continue
        if key.startswith("text_model."):
            out["text_branch." + key[len("text_model.") :]] = value
            continue
        if key.startswith("logit_scale"):
            out[key] = value
            continue
        rest = key[len("audio_model.audio_encoder.") :]
        rest = rest.replace("batch_norm.", "bn0.")
        m = re.fullmatch(r"(layers\.\d+\.blocks\.\d+)\.(.+)", rest)
        if m:
            block, name = m.groups()
            q = re.fullmatch(r"attention\.self\.(query|key|value)\.(weight|bias)", name)
            if q:
                qkv.setdefault(f"audio_branch.{block}.attn.qkv.{q[2]}", {})[q[1]] = value
                continue
            for hf_name, laion_name in _BLOCK_NAMES:
                if name.startswith(hf_name):
                    name = laion_name + name[len(hf_name) :]
                    break
            rest = f"{block}.{name}"
        out["audio_branch." + rest] = value
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["query"], parts["key"], parts["value"]])
    # what LAION's checkpoints carry beyond the embedding path
    out["audio_branch.spectrogram_extractor.stft.conv_real.weight"] = torch.randn(513, 1, 1024)
    out["audio_branch.logmel_extractor.melW"] = torch.rand(513, 64)
    out["audio_branch.tscam_conv.weight"] = torch.randn(527, 64, 2, 3)
    out["audio_branch.head.weight"] = torch.randn(527, 527)
    out["text_transform.sequential.0.weight"] = torch.randn(512, 512)
    out["audio_branch.layers.0.blocks.1.attn_mask"] = torch.zeros(4, 64, 64)
    out["text_branch.embeddings.position_ids"] = torch.arange(66)[None]
    return out


def tiny_clap_config():
    from transformers import ClapConfig

    return ClapConfig(
        text_config=dict(
            vocab_size=320,
            hidden_size=64,  # one 64-wide head, as the converter infers for RoBERTa layouts
            num_hidden_layers=2,
            num_attention_heads=1,
            intermediate_size=96,
            max_position_embeddings=66,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            projection_hidden_act="relu",
        ),
        audio_config=dict(
            hidden_size=64,
            patch_embeds_hidden_size=32,
            depths=[2, 1],
            num_attention_heads=[2, 4],
            window_size=8,
            spec_size=256,
            num_mel_bins=64,
            enable_fusion=False,
            projection_hidden_act="relu",
        ),
        projection_dim=512,  # what AudioSep's FiLM layers take
    )


@pytest.fixture(scope="module")
def tiny_laion() -> tuple[object, dict[str, torch.Tensor]]:
    from transformers import ClapModel

    torch.manual_seed(3)
    model = ClapModel(tiny_clap_config()).eval()
    with torch.no_grad():  # batch-norm statistics away from their trivial init
        bn = model.audio_model.audio_encoder.batch_norm
        bn.running_mean.normal_(0, 2)
        bn.running_var.uniform_(0.5, 3)
    return model, to_laion_layout(model.state_dict())


def fake_resunet_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in AUDIOSEP_KEYS.items():
        if not shape:
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = 0.05 * torch.randn(shape, generator=g)
    return state


@pytest.fixture(scope="module")
def audiosep_checkpoint(tmp_path_factory, tiny_laion) -> tuple[Path, Path]:
    """A Lightning-format file laid out like audiosep_base_4M_steps.ckpt, plus tokenizer files."""
    from querysep.query.tiny import write_tiny_vocabulary

    root = tmp_path_factory.mktemp("audiosep")
    _, clap_state = tiny_laion
    state = {f"ss_model.{k}": v for k, v in fake_resunet_state().items()}
    state |= {f"query_encoder.model.{k}": v for k, v in clap_state.items()}
    ckpt = root / "audiosep_base_4M_steps.ckpt"
    torch.save(
        {"state_dict": state, "epoch": 3, "global_step": 4_000_000, "optimizer_states": [{}]}, ckpt
    )
    return ckpt, write_tiny_vocabulary(root / "roberta-base")


def convert_cli(ckpt: Path, out: Path, tokenizer: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CONVERT, str(ckpt), str(out), "--tokenizer", str(tokenizer)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )


# -- the full-size layout -----------------------------------------------------------------------
def test_full_laion_clap_layout_maps_onto_clapmodel_exactly() -> None:
    state = {k: torch.empty(shape) for k, shape in LAION_KEYS.items()}
    state["text_branch.embeddings.position_ids"] = torch.empty(1, 514)  # transformers < 4.31
    mapped, dropped = clap.convert_state(state)
    config = clap.config_from_state(state)
    assert config.audio_config.depths == [2, 2, 12, 2]
    assert config.audio_config.num_attention_heads == [4, 8, 16, 32]
    assert config.audio_config.patch_embeds_hidden_size == 128
    assert config.audio_config.window_size == 8
    assert config.text_config.num_hidden_layers == 12
    assert config.text_config.num_attention_heads == 12
    assert config.projection_dim == 512
    clap.check_layout(mapped, config)  # raises on any missing, extra or misshaped tensor
    qkv = [k for k in state if k.endswith("attn.qkv.weight")]
    assert len(qkv) == 18
    # every key is either consumed or dropped with a reason; qkv keys become three each
    assert len(state) == len(dropped) + len(mapped) - 2 * 2 * len(qkv)
    assert set(dropped.values()) == {
        "front end, computed by ClapFeatureExtractor",
        "AudioSet classifier head, not on the embedding path",
        "contrastive-training MLP, not on the embedding path",
        "index buffer, recomputed by transformers",
        "shifted-window mask buffer, recomputed by transformers",
    }


def test_layout_errors_are_named() -> None:
    state = {k: torch.empty(shape) for k, shape in LAION_KEYS.items()}
    with pytest.raises(ModelLoadError, match=r"unexpected key in the CLAP weights: extra\.thing"):
        clap.convert_state({**state, "extra.thing": torch.empty(1)})
    with pytest.raises(ModelLoadError, match="feature-fusion"):
        clap.convert_state(
            {**state, "audio_branch.fusion_model.local_att.0.weight": torch.empty(1)}
        )
    mapped, _ = clap.convert_state(state)
    config = clap.config_from_state(state)
    broken = dict(mapped)
    del broken["text_projection.linear2.bias"]
    with pytest.raises(ModelLoadError, match="missing"):
        clap.check_layout(broken, config)
    broken = {**mapped, "audio_projection.linear1.weight": torch.empty(3, 3)}
    with pytest.raises(ModelLoadError, match="shape"):
        clap.check_layout(broken, config)


def test_converted_clap_gives_the_original_embeddings(tiny_laion) -> None:
    original, laion_state = tiny_laion
    converted, dropped = clap.build_clap_model(laion_state)
    assert "text_branch.embeddings.position_ids" in dropped
    ids = torch.randint(3, 300, (2, 12))
    ids[:, 0], ids[:, -1] = 0, 2
    features = torch.randn(2, 1, 1001, 64)
    longer = torch.zeros(2, 1, dtype=torch.bool)
    with torch.no_grad():
        for m in (original, converted):
            m.eval()
        a = original.get_text_features(input_ids=ids).pooler_output
        b = converted.get_text_features(input_ids=ids).pooler_output
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        a = original.get_audio_features(input_features=features, is_longer=longer).pooler_output
        b = converted.get_audio_features(input_features=features, is_longer=longer).pooler_output
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


# -- the converter end to end -------------------------------------------------------------------
def test_convert_cli_writes_a_working_bundle(audiosep_checkpoint, tiny_laion, tmp_path) -> None:
    ckpt, tok = audiosep_checkpoint
    out = tmp_path / "audiosep"
    proc = convert_cli(ckpt, out, tok)
    assert proc.returncode == 0, proc.stderr
    assert "285 tensors mapped, 47 dropped" in proc.stdout
    assert "epoch" in proc.stdout and "optimizer_states" in proc.stdout  # reported as skipped
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "query_encoder",
    ]
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["family"] == "resunet" and cfg["sample_rate"] == 32000
    assert re.fullmatch(r"[0-9a-f]{64}", cfg["source"]["sha256"])

    sep = Separator.from_pretrained(out, device="cpu")
    # separator weights: identical to mapping the AudioSep tensors directly
    direct = build_model(
        "resunet", {**AUDIOSEP_CONFIG["model"], "sample_rate": 32000, "query_dim": 512}
    )
    direct.load_state_dict(convert_resunet(fake_resunet_state()).state)
    for key, value in direct.state_dict().items():
        assert torch.equal(sep.model.state_dict()[key], value), key
    # query encoder: the checkpoint's CLAP, through transformers, with its tokenizer
    original, _ = tiny_laion
    enc = sep.query_encoder
    tokens = enc.processor.tokenizer(["a dog barking"], return_tensors="pt")
    with torch.no_grad():
        want = original.get_text_features(**tokens).pooler_output[0]
    got = enc.embed_text(["a dog barking"])[0]
    torch.testing.assert_close(got, torch.nn.functional.normalize(want, dim=-1), atol=1e-5, rtol=0)

    audio = tone(440, 1.3, 44100) + tone(1200, 1.3, 44100, amp=0.1)
    by_text = sep.separate(audio, "dog barking", sample_rate=44100)
    by_audio = sep.separate(audio, DATA / "dog.mp3", sample_rate=44100)
    for result in (by_text, by_audio):
        assert result.target.shape == audio.shape and np.isfinite(result.target).all()
        np.testing.assert_allclose(result.target + result.residual, audio, atol=1e-5)
    assert not np.allclose(by_text.target, by_audio.target)


def test_convert_refuses_unsafe_targets(audiosep_checkpoint, tmp_path) -> None:
    ckpt, tok = audiosep_checkpoint
    with pytest.raises(ModelLoadError, match="holds an input"):
        convert_checkpoint(ckpt, ckpt.parent, tok)
    assert ckpt.is_file()
    with pytest.raises(ModelLoadError, match=r"lacks vocab\.json"):
        convert_checkpoint(ckpt, tmp_path / "x", tmp_path)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    proc = convert_cli(ckpt, occupied, tok)
    assert proc.returncode == 1 and "--force" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert (occupied / "keep.txt").read_text() == "mine"


# -- the registry -------------------------------------------------------------------------------
def test_audiosep_offline_error_says_what_to_fetch(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("QUERYSEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pretrained.DEFAULT_MODEL == "audiosep-base"
    assert pretrained.default_model() == "querysep-mini"  # neither cached nor downloadable
    with pytest.raises(ModelLoadError) as err:
        separate(tone(440, 0.5, 32000), "dog", sample_rate=32000, model="audiosep-base")
    message = str(err.value)
    assert "\n" not in message
    assert pretrained.AUDIOSEP_CHECKPOINT.url in message
    assert "roberta-base" in message and "querysep convert audiosep" in message
    assert str(tmp_path / "cache" / "models" / "audiosep-base") in message
    assert pretrained.AUDIOSEP_CHECKPOINT.url == (
        "https://huggingface.co/spaces/Audio-AGI/AudioSep/resolve/main/"
        "checkpoint/audiosep_base_4M_steps.ckpt"
    )


def test_first_use_downloads_converts_and_caches(
    audiosep_checkpoint, tmp_path, monkeypatch
) -> None:
    ckpt, tok = audiosep_checkpoint
    monkeypatch.setenv("QUERYSEP_CACHE", str(tmp_path / "cache"))
    local = {
        pretrained.AUDIOSEP_CHECKPOINT.filename: ckpt,
        "vocab.json": tok / "vocab.json",
        "merges.txt": tok / "merges.txt",
    }
    calls: list[str] = []

    def fake_hub_download(repo_id, filename, repo_type=None, revision=None):
        calls.append(f"{repo_type}:{repo_id}/{filename}")
        return str(local[filename])

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub_download)
    monkeypatch.setattr(pretrained, "_hub_sha256", lambda file: None)
    monkeypatch.setattr(pretrained, "hub_reachable", lambda timeout=None: (True, ""))
    audio = tone(440, 0.7, 32000)
    first = separate(audio, "dog barking", sample_rate=32000, device="cpu")
    assert sorted(calls) == sorted(
        [
            "space:Audio-AGI/AudioSep/checkpoint/audiosep_base_4M_steps.ckpt",
            "model:FacebookAI/roberta-base/vocab.json",
            "model:FacebookAI/roberta-base/merges.txt",
        ]
    )
    bundle = tmp_path / "cache" / "models" / "audiosep-base"
    assert (bundle / "model.safetensors").is_file()
    calls.clear()
    again = Separator.from_pretrained("audiosep-base", device="cpu")  # from the cache
    assert calls == []
    np.testing.assert_array_equal(again.separate(audio, "dog barking", sample_rate=32000).target,
                                  first.target)  # fmt: skip
    assert load("audiosep-base", device="cpu") is load(None, device="cpu")


def test_download_checks_the_hash(audiosep_checkpoint, monkeypatch) -> None:
    ckpt, _ = audiosep_checkpoint
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: str(ckpt))
    monkeypatch.setattr(pretrained, "_hub_sha256", lambda file: "0" * 64)
    with pytest.raises(ModelLoadError, match="expected 0000"):
        pretrained.download(pretrained.AUDIOSEP_CHECKPOINT)


def test_models_command_lists_sources_and_licence(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "querysep", "models", "-v"],
        capture_output=True,
        text=True,
        env={**ENV, "QUERYSEP_CACHE": str(tmp_path)},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "audiosep-base (default)" in proc.stdout
    assert "MIT" in proc.stdout and "roberta-base/resolve/main/vocab.json" in proc.stdout
