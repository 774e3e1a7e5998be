"""Separation metrics in the LASS convention: "SDR" is the plain SNR, as AudioSep and DCASE
2024 Task 9 report it (not bss_eval's filtered SDR, which reads several dB higher).

Inputs are numpy arrays or torch tensors shaped [..., time]; results are dB per item, [...].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from querysep.errors import AudioError

EPS = 1e-8


def _as_float64(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _pair(estimate: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
    est, ref = _as_float64(estimate), _as_float64(reference)
    if est.shape != ref.shape:
        raise AudioError(f"estimate {est.shape} and reference {ref.shape} differ in shape")
    return est, ref


def sdr(estimate: Any, reference: Any) -> np.ndarray:
    """10 log10(|s|^2 / |s - s_hat|^2)."""
    est, ref = _pair(estimate, reference)
    num = np.sum(ref**2, axis=-1)
    den = np.sum((ref - est) ** 2, axis=-1)
    return 10 * np.log10((num + EPS) / (den + EPS))


def si_sdr(estimate: Any, reference: Any) -> np.ndarray:
    """Scale-invariant SDR: the reference is rescaled to best match the estimate (zero-mean)."""
    est, ref = _pair(estimate, reference)
    est = est - est.mean(axis=-1, keepdims=True)
    ref = ref - ref.mean(axis=-1, keepdims=True)
    alpha = np.sum(est * ref, axis=-1, keepdims=True) / (
        np.sum(ref**2, axis=-1, keepdims=True) + EPS
    )
    target = alpha * ref
    return 10 * np.log10(
        (np.sum(target**2, axis=-1) + EPS) / (np.sum((est - target) ** 2, axis=-1) + EPS)
    )


def sdr_improvement(estimate: Any, reference: Any, mixture: Any) -> np.ndarray:
    """SDRi = SDR(estimate) - SDR(mixture), both against the reference."""
    return sdr(estimate, reference) - sdr(mixture, reference)


def si_sdr_improvement(estimate: Any, reference: Any, mixture: Any) -> np.ndarray:
    return si_sdr(estimate, reference) - si_sdr(mixture, reference)


__all__ = ["sdr", "sdr_improvement", "si_sdr", "si_sdr_improvement"]
