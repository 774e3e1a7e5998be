"""Separation metrics in the LASS convention: "SDR" is the plain SNR, as AudioSep and DCASE
2024 Task 9 report it (not bss_eval's filtered SDR, which reads several dB higher).

Inputs are numpy arrays or torch tensors shaped [..., time]; results are dB per item, [...].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from querysep.errors import AudioError, QuerysepError

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


def energy_ratio_db(estimate: Any, mixture: Any) -> np.ndarray:
    """10 log10(|s_hat|^2 / |x|^2): how much of the mixture comes out. For a query whose sound
    is absent the right output is silence, and SDR is undefined, so this is what is scored
    (issue 13's bar: <= -15 dB)."""
    est, mix = _pair(estimate, mixture)
    return 10 * np.log10((np.sum(est**2, axis=-1) + 1e-12) / (np.sum(mix**2, axis=-1) + 1e-12))


__all__ = ["energy_ratio_db", "sdr", "sdr_improvement", "si_sdr", "si_sdr_improvement"]


def bss_sdr(estimate: Any, reference: Any, filter_length: int = 512) -> np.ndarray:
    """bss_eval SDR (distortion filter of `filter_length` taps) via fast_bss_eval.

    A different quantity from `sdr`: it forgives linear filtering of the reference, so it
    reads several dB higher on the same estimate. Report it in its own column.
    """
    try:
        import fast_bss_eval
    except ImportError:
        raise QuerysepError("bss_eval SDR needs fast_bss_eval: pip install fast_bss_eval") from None
    est, ref = _pair(estimate, reference)
    flat_est, flat_ref = est.reshape(-1, 1, est.shape[-1]), ref.reshape(-1, 1, ref.shape[-1])
    out = fast_bss_eval.sdr(flat_ref, flat_est, filter_length=filter_length, use_cg_iter=None)
    return np.asarray(out, dtype=np.float64).reshape(est.shape[:-1])


def clap_score(encoder: Any, audio: Any, sample_rate: int, text: str) -> float:
    """Cosine between the CLAP embeddings of `audio` and `text` (both unit norm): how well
    a separated sound matches its description, the score generative separators report."""
    audio_emb = encoder.embed_audio([_as_float64(audio).astype(np.float32)], sample_rate)[0]
    text_emb = encoder.embed_text([text])[0]
    return float((audio_emb.float() * text_emb.float()).sum())
