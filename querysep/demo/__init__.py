"""The Gradio web demo: upload or record audio, describe a sound, hear and see it and the rest.

`build_demo()` makes the `gr.Blocks` app that `demo/app.py` serves on a Hugging Face Space, and
`launch()` runs it locally (`querysep demo`). Needs the `demo` extra (gradio, matplotlib).

A Space is shared by strangers, so every request is bounded: upload size (Gradio refuses larger
files before they reach the app) and duration, number of queries, a queue of bounded length with
bounded concurrency, and a time limit per request. Requests only pick among the models offered
at start-up, and the app reads nothing but Gradio's uploads and writes nothing but its own
output files in Gradio's temporary folder, which Gradio deletes after an hour.

By concern: limits.py (what a request may cost), models.py (the menu, loading once),
queries.py (query fields and sampler settings), handler.py (the `/separate` event and the
job it runs), media.py (result files, spectrograms, examples), app.py (the layout).
"""

from querysep.demo.app import CACHE_SECONDS, build_demo, launch, zerogpu
from querysep.demo.handler import (
    PROGRESS_SECONDS,
    DemoHandler,
    Job,
    Outputs,
    Request,
    TimeLimitError,
    release_memory,
    run_job,
)
from querysep.demo.limits import (
    ENV_PREFIX,
    MAX_CANDIDATES,
    MAX_QUERY_CHARS,
    Limits,
    limit_text,
    limits_from_env,
    models_from_env,
)
from querysep.demo.media import (
    CHECKOUT_EXAMPLES,
    EXAMPLES_MANIFEST,
    SPECTROGRAM_N_FFT,
    SPECTROGRAM_RANGE_DB,
    SPECTROGRAM_WIDTH,
    load_examples,
    output_folder,
    spectrograms,
    write_results,
    write_spectrograms,
)
from querysep.demo.models import ModelChoice, load_model, model_choices
from querysep.demo.queries import MODES, build_queries, sampling_options, split_queries

__all__ = [
    "CACHE_SECONDS",
    "CHECKOUT_EXAMPLES",
    "ENV_PREFIX",
    "EXAMPLES_MANIFEST",
    "MAX_CANDIDATES",
    "MAX_QUERY_CHARS",
    "MODES",
    "PROGRESS_SECONDS",
    "SPECTROGRAM_N_FFT",
    "SPECTROGRAM_RANGE_DB",
    "SPECTROGRAM_WIDTH",
    "DemoHandler",
    "Job",
    "Limits",
    "ModelChoice",
    "Outputs",
    "Request",
    "TimeLimitError",
    "build_demo",
    "build_queries",
    "launch",
    "limit_text",
    "limits_from_env",
    "load_examples",
    "load_model",
    "model_choices",
    "models_from_env",
    "output_folder",
    "release_memory",
    "run_job",
    "sampling_options",
    "spectrograms",
    "split_queries",
    "write_results",
    "write_spectrograms",
    "zerogpu",
]
