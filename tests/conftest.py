from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never read or fill the user's model cache (a converted audiosep-base there would change
# what the default model does).
os.environ["QUERYSEP_CACHE"] = os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"querysep-test-cache-{os.getpid()}"
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
CONFIGS = ROOT / "configs" / "models"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny band-split bundle whose FiLM is perturbed so queries matter."""
    import torch

    from querysep.separator import Separator

    sep = Separator.from_config(CONFIGS / "bandsplit-tiny.yaml", seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in sep.model.named_parameters():
            if "film" in name.lower():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    sep.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_separator(tiny_bundle: Path):
    from querysep.separator import Separator

    return Separator.from_pretrained(tiny_bundle, device="cpu")


def tone(freq: float, seconds: float, sr: int, channels: int = 1, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([x * (1 - 0.2 * c) for c in range(channels)]).astype(np.float32)


def bad_audio_files(tmp: Path) -> dict[str, Path]:
    """Every kind of unusable input file, by name."""
    import soundfile as sf

    (tmp / "empty.wav").write_bytes(b"")
    (tmp / "random.flac").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp / "folder.wav").mkdir()
    sf.write(tmp / "full.wav", tone(440, 1.0, 16000).T, 16000)
    (tmp / "trunc.wav").write_bytes((tmp / "full.wav").read_bytes()[:3000])
    sf.write(tmp / "full.flac", np.random.default_rng(1).standard_normal((16000, 1)) * 0.1, 16000)
    data = (tmp / "full.flac").read_bytes()
    (tmp / "trunc.flac").write_bytes(data[: len(data) // 2])
    sf.write(tmp / "zero.wav", np.zeros((0, 1)), 16000)
    sf.write(tmp / "slow.wav", np.zeros((100, 1)), 500)
    sf.write(tmp / "nan.wav", np.full((1000, 1), np.nan, np.float32), 16000, subtype="FLOAT")
    names = ("missing.wav", "empty.wav", "random.flac", "folder.wav", "trunc.wav", "trunc.flac",
             "zero.wav", "slow.wav", "nan.wav")  # fmt: skip
    return {name: tmp / name for name in names}
