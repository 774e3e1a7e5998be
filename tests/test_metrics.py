"""querysep.metrics against torchmetrics, an independent implementation of the same formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.audio import (
    scale_invariant_signal_distortion_ratio,
    signal_noise_ratio,
)

from querysep import metrics
from querysep.errors import AudioError


@pytest.fixture
def signals() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 2, 16000, generator=g, dtype=torch.float64)
    noise = torch.randn(3, 2, 16000, generator=g, dtype=torch.float64)
    est = 0.8 * ref + torch.tensor([0.05, 0.3, 1.0], dtype=torch.float64)[:, None, None] * noise
    mix = ref + noise
    return est, ref, mix


def test_sdr_is_plain_snr(signals) -> None:
    est, ref, _ = signals
    ours = metrics.sdr(est, ref)
    assert ours.shape == (3, 2)
    np.testing.assert_allclose(ours, signal_noise_ratio(est, ref).numpy(), atol=1e-4)


def test_si_sdr(signals) -> None:
    est, ref, _ = signals
    expected = scale_invariant_signal_distortion_ratio(est, ref, zero_mean=True).numpy()
    np.testing.assert_allclose(metrics.si_sdr(est, ref), expected, atol=1e-4)
    # scale invariance, and numpy input gives the same numbers
    np.testing.assert_allclose(metrics.si_sdr(3 * est.numpy(), ref.numpy()), expected, atol=1e-4)


def test_improvements(signals) -> None:
    est, ref, mix = signals
    sdri = metrics.sdr_improvement(est, ref, mix)
    expected = signal_noise_ratio(est, ref) - signal_noise_ratio(mix, ref)
    np.testing.assert_allclose(sdri, expected.numpy(), atol=1e-4)
    si = metrics.si_sdr_improvement(est, ref, mix)
    expected_si = scale_invariant_signal_distortion_ratio(
        est, ref, zero_mean=True
    ) - scale_invariant_signal_distortion_ratio(mix, ref, zero_mean=True)
    np.testing.assert_allclose(si, expected_si.numpy(), atol=1e-4)


def test_perfect_estimate_and_shape_errors() -> None:
    x = np.random.default_rng(0).standard_normal(1000)
    assert metrics.sdr(x, x) > 100
    with pytest.raises(AudioError, match="shape"):
        metrics.sdr(x[:10], x)
