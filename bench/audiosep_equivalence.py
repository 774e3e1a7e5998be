"""querysep's ResUNet against AudioSep's own ResUNet30, with identical random weights.

    python bench/audiosep_equivalence.py PATH/TO/AudioSep-checkout

Needs an AudioSep checkout (github.com/Audio-AGI/AudioSep) and its dependency torchlibrosa
(which imports librosa) importable; nothing of AudioSep is part of querysep. The AudioSep model
gets random weights, non-trivial BatchNorm statistics and a scaled-up FiLM so every path
matters; its state dict goes through `querysep.convert.audiosep` into querysep's model, and
both separate the same random mixtures.
"""

from __future__ import annotations

import argparse
import sys

import torch

from querysep.convert.audiosep import convert_resunet
from querysep.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audiosep", help="path to an AudioSep checkout")
    args = parser.parse_args()
    sys.path.insert(0, args.audiosep)
    from models.resunet import ResUNet30  # AudioSep's module, from the user's checkout

    torch.manual_seed(0)
    ref = ResUNet30(1, 1, 512)
    with torch.no_grad():
        for name, buf in ref.named_buffers():
            if "running_mean" in name:
                buf.normal_(0, 0.1)
            if "running_var" in name:
                buf.uniform_(0.5, 2.0)
        for name, p in ref.named_parameters():
            if "bn" in name:
                p.add_(0.1 * torch.randn_like(p))
            if "film" in name:
                p.mul_(3)
    ref.eval()
    conversion = convert_resunet(ref.state_dict())
    ours = build_model("resunet", {"sample_rate": 32000, "query_dim": 512}).eval()
    ours.load_state_dict(conversion.state, strict=True)
    print(f"mapped {len(conversion.state)} tensors, dropped {len(conversion.dropped)}")
    for length in (32000 * 5, 32000 * 2 + 77, 5000):
        x = torch.randn(2, length) * 0.1
        q = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
        with torch.no_grad():
            a = ref({"mixture": x[:, None], "condition": q})["waveform"][:, 0]
            b = ours(x, q)
        rel = 10 * torch.log10(((a - b) ** 2).sum() / (a**2).sum())
        print(
            f"{length} samples: max |diff| {(a - b).abs().max().item():.2e}, "
            f"relative error {rel.item():.1f} dB, reference rms {a.pow(2).mean().sqrt().item():.3f}"
        )


if __name__ == "__main__":
    main()
