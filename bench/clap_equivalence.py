"""LAION-CLAP's own model against the ClapModel that `querysep.convert.clap` builds from it.

    python bench/clap_equivalence.py PATH/TO/LAION-CLAP-checkout

Needs a checkout of github.com/LAION-AI/CLAP and torchlibrosa (which imports librosa)
importable; nothing of LAION-CLAP is part of querysep. The checkout's package `__init__` pulls
torchvision and downloads RoBERTa, so this script loads only the modules the model needs, stubs
the unused torchvision/h5py imports and gives the text tower a randomly initialised roberta-base
shape. The LAION model (HTSAT-base + RoBERTa, AudioSep's query encoder) gets random weights and
non-trivial BatchNorm statistics; its state dict goes through the converter, and both models embed
the same token ids and the same audio.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
import transformers
from torch.nn.functional import normalize

from querysep.convert.clap import build_clap_model, feature_extractor


def load_laion(checkout: Path) -> torch.nn.Module:
    src = checkout / "src" / "laion_clap" / "clap_module"
    for stub in ("torchvision", "torchvision.ops", "torchvision.ops.misc", "h5py"):
        sys.modules.setdefault(stub, types.ModuleType(stub))
    sys.modules["torchvision.ops.misc"].FrozenBatchNorm2d = type("FrozenBatchNorm2d", (), {})
    package = types.ModuleType("laion_clap_module")
    package.__path__ = [str(src)]
    sys.modules["laion_clap_module"] = package
    for name in ("utils", "feature_fusion", "htsat", "pann_model", "timm_model", "model"):
        spec = importlib.util.spec_from_file_location(
            f"laion_clap_module.{name}", src / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    roberta = transformers.RobertaConfig(
        vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )  # fmt: skip
    model_module = sys.modules["laion_clap_module.model"]
    model_module.RobertaModel = types.SimpleNamespace(
        from_pretrained=lambda *a, **k: transformers.RobertaModel(roberta)
    )
    cfg = json.loads((src / "model_configs" / "HTSAT-base.json").read_text())
    cfg["text_cfg"]["model_type"] = "roberta"
    return model_module.CLAP(
        embed_dim=cfg["embed_dim"], audio_cfg=cfg["audio_cfg"], text_cfg=cfg["text_cfg"],
        enable_fusion=False, joint_embed_shape=512, mlp_act="relu",
    ).eval()  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="path to a LAION-AI/CLAP checkout")
    args = parser.parse_args()
    torch.manual_seed(0)
    laion = load_laion(args.checkout)
    with torch.no_grad():
        bn = laion.audio_branch.bn0
        bn.running_mean.normal_(0, 2)
        bn.running_var.uniform_(0.5, 3)
    ours, dropped = build_clap_model(laion.state_dict())
    print(f"LAION state: {len(laion.state_dict())} tensors, {len(dropped)} dropped on purpose")

    ids = torch.randint(3, 50000, (3, 20))
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones_like(ids)
    mask[1, 15:], ids[1, 15:] = 0, 1  # one padded caption
    audio = 0.1 * torch.randn(2, 480_000)  # 10 s at 48 kHz
    with torch.no_grad():
        text_ref = normalize(laion.encode_text({"input_ids": ids, "attention_mask": mask}, "cpu"))
        text = normalize(ours.get_text_features(input_ids=ids, attention_mask=mask).pooler_output)
        branch = laion.audio_branch
        mel = branch.logmel_extractor(branch.spectrogram_extractor(audio))
        audio_ref = normalize(laion.audio_projection(branch({"waveform": audio})["embedding"]))
        longer = torch.zeros(2, 1, dtype=torch.bool)
        same_mel = ours.get_audio_features(input_features=mel, is_longer=longer).pooler_output
        features = feature_extractor(ours.config)(
            list(audio.numpy()), sampling_rate=48_000, return_tensors="pt"
        )
        own_mel = ours.get_audio_features(**features).pooler_output
    print(f"text embedding, max |diff|: {(text - text_ref).abs().max().item():.2e}")
    print(
        "audio embedding from LAION's log-mel, max |diff|: "
        f"{(normalize(same_mel) - audio_ref).abs().max().item():.2e}"
    )
    print(
        "log-mel, ClapFeatureExtractor vs torchlibrosa, max |diff| (dB): "
        f"{(features['input_features'] - mel).abs().max().item():.2e}"
    )
    print(
        "audio embedding, each with its own front end, max |diff|: "
        f"{(normalize(own_mel) - audio_ref).abs().max().item():.2e}"
    )
    np.testing.assert_allclose(text.numpy(), text_ref.numpy(), atol=1e-4)
    np.testing.assert_allclose(normalize(own_mel).numpy(), audio_ref.numpy(), atol=1e-4)
    print("equivalent (atol 1e-4)")


if __name__ == "__main__":
    main()
