"""Hugging Face Space entry point (`app_file` in README.md); also `python demo/app.py` locally.

Settings come from the Space's variables: QUERYSEP_DEMO_MODELS (comma-separated bundles, Hub
ids or registry names; the first is the default; unset: the registry default) and the limits
QUERYSEP_DEMO_MAX_SECONDS, _MAX_FILE_MB, _MAX_QUERIES, _QUEUE_SIZE, _CONCURRENCY, _TIME_LIMIT.
On ZeroGPU hardware the `spaces` package lends each separation a GPU; elsewhere it runs on the
CPU (or a GPU the machine has).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict
from pathlib import Path

with contextlib.suppress(ImportError):  # first: on ZeroGPU, `spaces` patches torch before CUDA
    import spaces  # noqa: F401

from querysep.demo import Limits, launch, limits_from_env, models_from_env, zerogpu

if __name__ == "__main__":
    limits = Limits(**limits_from_env())
    launch(
        models_from_env(),
        # Spaces set GRADIO_SERVER_NAME=0.0.0.0; a local run stays on the loopback interface.
        host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        examples_dir=Path(__file__).resolve().parent / "examples",
        gpu=zerogpu(limits),
        **asdict(limits),
    )
