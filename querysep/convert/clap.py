"""LAION-CLAP (HTSAT audio tower + RoBERTa text tower) weights -> `transformers.ClapModel`.

AudioSep ships its frozen query encoder inside its checkpoint in LAION's own layout
(`audio_branch.*`, `text_branch.*`, Sequential projections, fused qkv). This maps those keys onto
`ClapModel`, so text and audio queries run through transformers with the checkpoint's weights.
The ClapConfig is read off the tensor shapes, so HTSAT-tiny and HTSAT-base checkpoints both work.

Dropped on purpose (each listed in the report): the torchlibrosa STFT / mel matrices (the
`ClapFeatureExtractor` computes the same log-mel front end), HTSAT's AudioSet classifier
(`tscam_conv`, `head`), which the embedding path never reaches, the contrastive-training MLPs
`text_transform` / `audio_transform`, and index or mask buffers that transformers recomputes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from querysep.errors import ModelLoadError

_BLOCK = r"audio_branch\.layers\.(\d+)\.blocks\.(\d+)\."
_ENC = "audio_model.audio_encoder."
_RULES: list[tuple[str, str]] = [
    (r"text_branch\.(.+)", r"text_model.\1"),
    (r"(text|audio)_projection\.0\.(weight|bias)", r"\1_projection.linear1.\2"),
    (r"(text|audio)_projection\.2\.(weight|bias)", r"\1_projection.linear2.\2"),
    (r"logit_scale_(a|t)", r"logit_scale_\1"),
    (r"audio_branch\.bn0\.(.+)", _ENC + r"batch_norm.\1"),
    (r"audio_branch\.patch_embed\.(proj|norm)\.(weight|bias)", _ENC + r"patch_embed.\1.\2"),
    (r"audio_branch\.norm\.(weight|bias)", _ENC + r"norm.\1"),
    (
        r"audio_branch\.layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)",
        _ENC + r"layers.\1.downsample.\2.\3",
    ),
    (_BLOCK + r"norm1\.(weight|bias)", _ENC + r"layers.\1.blocks.\2.layernorm_before.\3"),
    (_BLOCK + r"norm2\.(weight|bias)", _ENC + r"layers.\1.blocks.\2.layernorm_after.\3"),
    (
        _BLOCK + r"attn\.relative_position_bias_table",
        _ENC + r"layers.\1.blocks.\2.attention.self.relative_position_bias_table",
    ),
    (
        _BLOCK + r"attn\.proj\.(weight|bias)",
        _ENC + r"layers.\1.blocks.\2.attention.output.dense.\3",
    ),
    (_BLOCK + r"mlp\.fc1\.(weight|bias)", _ENC + r"layers.\1.blocks.\2.intermediate.dense.\3"),
    (_BLOCK + r"mlp\.fc2\.(weight|bias)", _ENC + r"layers.\1.blocks.\2.output.dense.\3"),
]
#: The fused qkv projection is split into transformers' three (LAION stacks q, k, v in order).
_QKV = _BLOCK + r"attn\.qkv\.(weight|bias)"
_DROPPED: list[tuple[str, str]] = [
    (r"audio_branch\.(spectrogram_extractor|logmel_extractor)\..+", "front end, computed by "
     "ClapFeatureExtractor"),
    (r"audio_branch\.(tscam_conv|head)\..+", "AudioSet classifier head, not on the embedding path"),
    (r"(text|audio)_transform\..+", "contrastive-training MLP, not on the embedding path"),
    (_BLOCK + r"attn\.relative_position_index", "index buffer, recomputed by transformers"),
    (_BLOCK + r"attn_mask", "shifted-window mask buffer, recomputed by transformers"),
    (r"text_branch\.embeddings\.position_ids", "index buffer, recomputed by transformers"),
]  # fmt: skip
#: ClapModel state entries that are derived, not learned: they keep transformers' values.
_DERIVED = re.compile(
    r"(text_model\.embeddings\.(position_ids|token_type_ids)"
    r"|audio_model\.audio_encoder\.layers\.\d+\.blocks\.\d+\.attention\.self\.relative_position_index)"
)


def map_key(key: str) -> str | None:
    """The ClapModel key for a LAION-CLAP key; None when dropped on purpose."""
    for pattern, _ in _DROPPED:
        if re.fullmatch(pattern, key):
            return None
    for pattern, target in _RULES:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(target)
    if re.fullmatch(_QKV, key):
        return key  # split by convert_state
    if "fusion" in key or "mel_conv2d" in key:
        raise ModelLoadError("feature-fusion CLAP checkpoints are not supported (unfused only)")
    raise ModelLoadError(f"unexpected key in the CLAP weights: {key}")


def drop_reason(key: str) -> str:
    return next(why for pattern, why in _DROPPED if re.fullmatch(pattern, key))


def convert_state(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(ClapModel state dict, {dropped key: why}); every input key lands in one of the two."""
    out: dict[str, Tensor] = {}
    dropped: dict[str, str] = {}
    for key, value in state.items():
        target = map_key(key)
        if target is None:
            dropped[key] = drop_reason(key)
            continue
        qkv = re.fullmatch(_QKV, key)
        if qkv:
            layer, block, kind = qkv.groups()
            if value.shape[0] % 3:
                raise ModelLoadError(f"{key}: fused qkv of size {value.shape[0]} is not 3 x dim")
            base = f"{_ENC}layers.{layer}.blocks.{block}.attention.self."
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                out[f"{base}{name}.{kind}"] = part.clone()
            continue
        if target in out:
            raise ModelLoadError(f"two CLAP keys map to {target}")
        out[target] = value
    return out, dropped


def config_from_state(state: Mapping[str, Tensor]) -> Any:
    """A ClapConfig that matches the checkpoint's shapes (LAION key names)."""
    from transformers import ClapConfig

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise ModelLoadError(f"the CLAP weights lack {key}: not a LAION HTSAT + RoBERTa CLAP")
        return tuple(state[key].shape)

    layers = _indices(state, r"audio_branch\.layers\.(\d+)\.")
    depths = [len(_indices(state, rf"audio_branch\.layers\.{i}\.blocks\.(\d+)\.")) for i in layers]
    heads = [
        shape(f"audio_branch.layers.{i}.blocks.0.attn.relative_position_bias_table")[1]
        for i in layers
    ]
    table = shape("audio_branch.layers.0.blocks.0.attn.relative_position_bias_table")[0]
    window = (round(table**0.5) + 1) // 2  # the table has (2w - 1)^2 rows
    patch = shape("audio_branch.patch_embed.proj.weight")
    text_hidden = shape("text_branch.embeddings.word_embeddings.weight")[1]
    text_layers = len(_indices(state, r"text_branch\.encoder\.layer\.(\d+)\."))
    text_config = {
        "vocab_size": shape("text_branch.embeddings.word_embeddings.weight")[0],
        "hidden_size": text_hidden,
        "num_hidden_layers": text_layers,
        "num_attention_heads": max(1, text_hidden // 64),  # RoBERTa's 64-wide heads
        "intermediate_size": shape("text_branch.encoder.layer.0.intermediate.dense.weight")[0],
        "max_position_embeddings": shape("text_branch.embeddings.position_embeddings.weight")[0],
        "type_vocab_size": shape("text_branch.embeddings.token_type_embeddings.weight")[0],
        "layer_norm_eps": 1e-5,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "projection_hidden_act": "relu",
    }
    audio_config = {
        "patch_embeds_hidden_size": patch[0],
        "patch_size": patch[-1],
        "patch_stride": [patch[-1], patch[-1]],
        "depths": depths,
        "num_attention_heads": heads,
        "window_size": window,
        "hidden_size": shape("audio_branch.norm.weight")[0],
        "num_mel_bins": shape("audio_branch.bn0.weight")[0],
        "spec_size": 256,
        "enable_fusion": False,
        "num_classes": state["audio_branch.head.weight"].shape[0]
        if "audio_branch.head.weight" in state
        else 527,
        "projection_hidden_act": "relu",
    }
    projection_dim = shape("text_projection.2.weight")[0]
    return ClapConfig(
        text_config=text_config, audio_config=audio_config, projection_dim=projection_dim
    )


def _indices(state: Mapping[str, Tensor], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})


def check_layout(mapped: Mapping[str, Tensor], config: Any) -> None:
    """Every learned ClapModel tensor provided with its exact shape, and nothing extra.

    Runs on a meta-device model, so checking a full-size layout costs no memory.
    """
    from transformers import ClapModel

    with torch.device("meta"):
        expected = ClapModel(config).state_dict()
    missing = [k for k in expected if k not in mapped and not _DERIVED.fullmatch(k)]
    unexpected = [k for k in mapped if k not in expected]
    if missing or unexpected:
        raise ModelLoadError(
            f"CLAP weights do not fit ClapModel: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for key, value in mapped.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ModelLoadError(
                f"CLAP weight {key} has shape {tuple(value.shape)}, "
                f"ClapModel expects {tuple(expected[key].shape)}"
            )


def build_clap_model(state: Mapping[str, Tensor]) -> tuple[Any, dict[str, str]]:
    """A `ClapModel` holding the checkpoint's weights, and the report of dropped keys.

    A ClapModel parameter the checkpoint does not provide, or a checkpoint tensor ClapModel has
    no place for, is an error: a half-loaded encoder would give plausible-looking nonsense.
    """
    from transformers import ClapModel

    mapped, dropped = convert_state(state)
    config = config_from_state(state)
    check_layout(mapped, config)
    model = ClapModel(config)  # real tensors; derived buffers get transformers' values
    model.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=False)
    return model.eval(), dropped


def feature_extractor(config: Any) -> Any:
    """LAION's front end for unfused HTSAT: 48 kHz, 1024 / 480 STFT, slaney mel 50-14000 Hz."""
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor(
        feature_size=config.audio_config.num_mel_bins,
        sampling_rate=48_000,
        hop_length=480,
        fft_window_size=1024,
        frequency_min=50,
        frequency_max=14_000,
        max_length_s=10,
        padding="repeatpad",
        truncation="rand_trunc",
    )
