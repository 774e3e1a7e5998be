"""Device and precision choices, made once so every entry point agrees."""

from __future__ import annotations

import torch

from querysep.errors import QuerysepError

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise QuerysepError(
            f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)"
        ) from None
    if dev.type not in ("cpu", "cuda", "mps"):  # meta holds no data; others are not supported
        raise QuerysepError(f"unsupported device {device!r} (use auto, cpu, cuda, cuda:N or mps)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise QuerysepError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise QuerysepError(
            f"device {device!r} requested but this machine has {torch.cuda.device_count()} "
            "CUDA device(s)"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise QuerysepError("device 'mps' requested but MPS is not available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp32 unless asked; fp16 only where the device computes in it (not CPU)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif isinstance(dtype, str) and dtype.lower() in _DTYPES:
        resolved = _DTYPES[dtype.lower()]
    else:
        raise QuerysepError(f"unknown dtype {dtype!r} (use fp32, bf16 or fp16)")
    if resolved not in (torch.float32, torch.bfloat16, torch.float16):
        raise QuerysepError(f"unsupported dtype {resolved} (use fp32, bf16 or fp16)")
    if resolved == torch.float16 and device.type == "cpu":
        raise QuerysepError("fp16 is not supported on CPU: use bf16 or fp32")
    return resolved
