"""The files a demo reads and writes: result WAVs, spectrogram pictures, the example clips."""

from __future__ import annotations

import functools
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from querysep.query.parse import slug
from querysep.separator import SeparationResult, output_paths

#: Examples shipped in a source checkout (`demo/examples`); a Space passes its own folder.
CHECKOUT_EXAMPLES = Path(__file__).resolve().parents[2] / "demo" / "examples"
EXAMPLES_MANIFEST = "examples.json"
SPECTROGRAM_WIDTH = 800
SPECTROGRAM_N_FFT = 512
SPECTROGRAM_RANGE_DB = 80.0


# -- pictures --------------------------------------------------------------------------------------
@functools.cache
def _palette() -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def _magnitude(audio: np.ndarray, width: int) -> np.ndarray:
    """|STFT| of the channel mean, [bins, <= width frames]: the hop grows with the length, so
    a ten-minute input costs about as much to draw as a ten-second one."""
    import torch

    from querysep.dsp import STFT

    mono = torch.from_numpy(np.ascontiguousarray(audio.mean(axis=0), dtype=np.float32))
    n_fft = SPECTROGRAM_N_FFT
    hop = max(n_fft // 4, math.ceil(mono.numel() / max(1, width - 1)))  # centred: 1 + n // hop
    return STFT(n_fft, hop)(mono).abs().numpy()


def spectrograms(*signals: np.ndarray, width: int = SPECTROGRAM_WIDTH) -> list[np.ndarray]:
    """RGB uint8 spectrograms on one dB scale (the loudest of them = top of the scale), so a
    quiet stem looks quiet next to its mixture. Low frequencies at the bottom."""
    mags = [_magnitude(s, width) for s in signals]
    ref = max(float(m.max()) for m in mags) + 1e-12
    images = []
    for mag in mags:
        db = 20 * np.log10(mag / ref + 1e-12)
        level = np.clip(1 + db / SPECTROGRAM_RANGE_DB, 0, 1)[::-1]
        images.append(_palette()[(level * 255).astype(np.uint8)])
    return images


# -- result files ---------------------------------------------------------------------------------
def output_folder() -> Path:
    """A fresh folder inside Gradio's temporary folder for one request's files.

    Gradio serves files from there without copying them and deletes them with its other
    temporary files. A folder per request also keeps concurrent requests apart: Gradio's own
    saving of returned arrays names files by content and rewrites them in place, so two
    requests with identical pictures could serve each other a half-written file. The folder is
    private to the server's user (0700), as Gradio keeps uploads: on a shared machine other
    users cannot read anyone's results.
    """
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder()) / "querysep" / uuid.uuid4().hex
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)  # whatever the umask
    return folder


def write_results(
    results: list[SeparationResult], stem: str, folder: Path
) -> list[tuple[str, str]]:
    """(target, residual) 16-bit WAVs per query, named as `SeparationResult.save` names them
    (`<stem>_<query>[_residual].wav`); a repeated query gets `<stem>-<k>`."""
    files: list[tuple[str, str]] = []
    used: set[Path] = set()
    for k, result in enumerate(results):
        name = slug(stem)
        if output_paths(folder, name, result.query)[0] in used:
            name = f"{name}-{k + 1}"
        target, residual = result.save(folder, name, subtype="PCM_16")
        used.add(target)
        files.append((str(target), str(residual)))
    return files


def write_spectrograms(folder: Path, **signals: np.ndarray) -> list[str]:
    """One WebP spectrogram per named signal, all on one scale."""
    from PIL import Image

    paths = []
    for name, image in zip(signals, spectrograms(*signals.values()), strict=True):
        path = folder / f"spectrogram-{name}.webp"
        Image.fromarray(image).save(path, quality=90)
        paths.append(str(path))
    return paths


# -- examples -----------------------------------------------------------------------------------
def load_examples(folder: str | Path | None) -> list[list[Any]]:
    """Rows [recording, query, example clip, mode] from `<folder>/examples.json`, if any."""
    if folder is None or not (Path(folder) / EXAMPLES_MANIFEST).is_file():
        return []
    folder = Path(folder)
    rows = json.loads((folder / EXAMPLES_MANIFEST).read_text(encoding="utf-8"))
    return [
        [
            str(folder / row["audio"]),
            row.get("query", ""),
            str(folder / row["example"]) if row.get("example") else None,
            row.get("mode", "extract"),
        ]
        for row in rows
    ]
