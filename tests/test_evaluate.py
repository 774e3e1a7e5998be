"""`querysep evaluate`: benchmark lists, scoring, AudioSet aggregation, resumable runs, outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from querysep import evaluate as ev
from querysep import metrics
from querysep.errors import DataError
from querysep.separator import Separator

from .conftest import tone

RATE = 16_000


def write_audiosep_benchmark(root: Path, n: int = 4) -> Path:
    """AudioSep's layout: an eval CSV plus `segment-{idx}.wav` / `mixture-{idx}.wav`."""
    rng = np.random.default_rng(0)
    rows = []
    for idx in range(n):
        source = tone(300 + 200 * idx, 1.0, RATE)[0]
        mixture = source + 0.3 * rng.standard_normal(RATE).astype(np.float32)
        sf.write(root / f"segment-{idx}.wav", source, RATE)
        sf.write(root / f"mixture-{idx}.wav", mixture, RATE)
        rows.append(
            {"idx": idx, "caption": ["dog", "cat"][idx % 2], "src_wav": "", "noise_wav": ""}
        )
    path = root / "esc50_eval.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["idx", "caption", "src_wav", "noise_wav"])
        writer.writeheader()
        writer.writerows(rows)
    return path


class CountingSeparator:
    """The tiny separator, counting calls (to see what a resumed run recomputes)."""

    def __init__(self, separator: Separator) -> None:
        self.inner = separator
        self.calls = 0
        self.query_encoder = separator.query_encoder

    def separate(self, *args, **kwargs):
        self.calls += 1
        return self.inner.separate(*args, **kwargs)


def test_scores_match_the_metrics_and_runs_resume(tiny_separator: Separator, tmp_path) -> None:
    eval_list = write_audiosep_benchmark(tmp_path)
    items = ev.audiosep_items("esc50", eval_list, tmp_path, RATE)
    assert [it.label for it in items] == ["dog", "cat", "dog", "cat"]
    sep = CountingSeparator(tiny_separator)
    out = tmp_path / "results"
    ev.evaluate(sep, items[:2], out, "esc50", RATE, progress=False)  # a run stopped halfway
    assert sep.calls == 2
    ev.evaluate(sep, items, out, "esc50", RATE, progress=False)
    assert sep.calls == 4  # only the two missing items were separated
    with open(out / "items.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["0", "1", "2", "3"]
    mixture, source = items[3].load()
    estimate = tiny_separator.separate(mixture[None], "cat", sample_rate=RATE).target[0]
    assert float(rows[3]["sdr"]) == pytest.approx(float(metrics.sdr(estimate, source)), abs=1e-4)
    sdri = metrics.sdr_improvement(estimate, source, mixture)
    assert float(rows[3]["sdri"]) == pytest.approx(float(sdri), abs=1e-4)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["items"] == 4 and saved["aggregation"] == "mean over items"
    assert saved["sdri"] == pytest.approx(np.mean([float(r["sdri"]) for r in rows]))
    table = (out / "summary.md").read_text()
    assert "| AudioSep (paper) | - | 10.04 | 8.81 | - |" in table
    assert (out / "sdri.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_audioset_is_the_mean_of_per_class_medians() -> None:
    rows = [
        {"label": "a", "sdri": 1.0}, {"label": "a", "sdri": 2.0}, {"label": "a", "sdri": 9.0},
        {"label": "b", "sdri": 4.0},
    ]  # fmt: skip
    rows = [{**r, "sdr": 0.0, "si_sdr": 0.0, "si_sdri": 0.0} for r in rows]
    assert ev.summarize(rows, "audioset")["sdri"] == pytest.approx((2.0 + 4.0) / 2)
    assert ev.summarize(rows, "clotho")["sdri"] == pytest.approx(4.0)


def test_dcase_list_mixes_at_the_listed_snr(tmp_path) -> None:
    sf.write(tmp_path / "s.wav", tone(500, 1.0, RATE)[0], RATE)
    sf.write(tmp_path / "n.wav", 0.5 * np.random.default_rng(1).standard_normal(RATE), RATE)
    path = tmp_path / "lass_synthetic_validation.csv"
    path.write_text("source,noise,snr,caption\ns.wav,n.wav,-3.5,a tone\n")
    (item,) = ev.dcase_items(path, tmp_path, RATE)
    mixture, source = item.load()
    assert float(metrics.sdr(mixture, source)) == pytest.approx(-3.5, abs=1e-3)
    path.write_text("source,noise,snr,caption\ns.wav,n.wav,loud,a tone\n")
    with pytest.raises(DataError, match="numeric snr"):
        ev.dcase_items(path, tmp_path, RATE)


def test_bss_sdr_matches_mir_eval() -> None:
    import mir_eval

    g = np.random.default_rng(0)
    ref = g.standard_normal(8000)
    est = np.convolve(ref, [0.8, 0.3, -0.1])[:8000] + 0.3 * g.standard_normal(8000)
    expected = mir_eval.separation.bss_eval_sources(ref[None], est[None])[0][0]
    assert float(metrics.bss_sdr(est, ref)) == pytest.approx(expected, abs=0.05)
    # filtering is forgiven: bss_eval reads higher than the plain SNR on the same estimate
    assert metrics.bss_sdr(est, ref) > metrics.sdr(est, ref) + 1


def test_clap_score_is_the_cosine_of_clap_embeddings(tiny_separator: Separator) -> None:
    encoder = tiny_separator.query_encoder
    audio = tone(700, 1.0, 48_000)[0]
    features = encoder.processor.feature_extractor(
        audio, sampling_rate=48_000, return_tensors="pt", truncation="rand_trunc"
    )
    tokens = encoder.processor.tokenizer(["a beep"], return_tensors="pt")
    with torch.no_grad():
        a = encoder.model.get_audio_features(**features).pooler_output[0]
        t = encoder.model.get_text_features(**tokens).pooler_output[0]
    expected = torch.nn.functional.cosine_similarity(a, t, dim=0).item()
    assert metrics.clap_score(encoder, audio, 48_000, "a beep") == pytest.approx(expected, abs=1e-4)
