"""The Gradio layout around the handler: `build_demo` makes the app, `launch` serves it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import gradio as gr

from querysep.demo.handler import DemoHandler, Job, run_job
from querysep.demo.limits import MAX_CANDIDATES, Limits, limits_from_env, models_from_env
from querysep.demo.media import CHECKOUT_EXAMPLES, load_examples
from querysep.demo.models import load_model, model_choices
from querysep.demo.queries import MODES

#: Gradio deletes this app's temporary files (uploads, results) older than this, this often.
CACHE_SECONDS = 3600


def zerogpu(limits: Limits) -> Callable[[Callable], Callable] | None:
    """`spaces.GPU` when the `spaces` package is installed (Hugging Face Spaces), else None.

    On ZeroGPU hardware each run borrows a GPU for a duration that grows with the input,
    capped by the time limit; elsewhere `spaces.GPU` does nothing and the CPU (or a local GPU)
    is used.
    """
    try:
        import spaces
    except ImportError:
        return None

    def duration(job: Job) -> int:
        from querysep import audio as qaudio

        seconds = qaudio.info(job.audio).duration * len(job.queries)
        return int(min(limits.time_limit, 30 + 0.2 * seconds))

    return spaces.GPU(duration=duration)


def build_demo(
    models: list[str] | None = None,
    *,
    max_seconds: float = Limits.max_seconds,
    max_file_mb: float = Limits.max_file_mb,
    max_queries: int = Limits.max_queries,
    queue_size: int = Limits.queue_size,
    concurrency: int = Limits.concurrency,
    time_limit: float = Limits.time_limit,
    examples_dir: str | Path | None = CHECKOUT_EXAMPLES,
    gpu: Callable[[Callable], Callable] | None = None,
    preload: bool = True,
) -> gr.Blocks:
    """The app. `models`: bundles, Hub ids or registry names offered (first = default; None:
    the registry). `gpu`: a decorator for the separation function (`zerogpu(...)` on a
    Space). `preload` loads the default model now rather than on the first request.
    """
    limits = Limits(max_seconds, max_file_mb, max_queries, queue_size, concurrency, time_limit)
    choices = model_choices(models)
    if preload:
        load_model(choices[0].spec)
    handler = DemoHandler(limits, choices, gpu(run_job) if gpu else run_job)
    examples = load_examples(examples_dir)

    with gr.Blocks(
        title="querysep: separate any sound you describe",
        analytics_enabled=False,
        delete_cache=(CACHE_SECONDS, CACHE_SECONDS),
    ) as demo:
        gr.Markdown(
            "# querysep: separate any sound you describe\n"
            "Upload or record a recording, say what you want (*dog barking*, *remove the "
            "traffic noise*) or give an example clip, and get that sound and the rest. "
            f"Up to {limits.max_seconds:g} s and {limits.max_file_mb:g} MB per recording; "
            "several queries (one per line) give one stem each."
        )
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(
                    sources=["upload", "microphone"], type="filepath", label="Recording"
                )
                query = gr.Textbox(
                    value="",
                    label="Sound to extract",
                    placeholder="dog barking   (one query per line, or ';' between them)",
                    lines=2,
                )
                mode = gr.Radio(
                    list(MODES),
                    value="extract",
                    label="Mode",
                    info="remove: get everything except the sound ('remove the X' works too)",
                )
                with gr.Accordion("Example clip and negative query", open=False):
                    example = gr.Audio(
                        sources=["upload", "microphone"],
                        type="filepath",
                        label="Example of the sound (optional)",
                    )
                    example_weight = gr.Slider(
                        0, 1, value=0.5, step=0.05, label="Weight of the example against the text"
                    )
                    negative = gr.Textbox(
                        value="", label="But not (negative query)", placeholder="speech"
                    )
                with gr.Accordion("Model and settings", open=False):
                    model = gr.Dropdown(
                        [c.label for c in choices], value=choices[0].label, label="Model"
                    )
                    chunk = gr.Number(
                        value=None, minimum=1, maximum=60,
                        label="Chunk length in seconds (blank: the model's own)",
                    )  # fmt: skip
                    steps = gr.Number(
                        value=None, precision=0, minimum=1, maximum=100,
                        label="Sampling steps (flow models; blank: the model's own)",
                    )  # fmt: skip
                    guidance = gr.Number(
                        value=None, minimum=0, maximum=20, label="Guidance (flow models)"
                    )
                    seed = gr.Number(value=None, precision=0, label="Seed (flow models)")
                    shift = gr.Number(
                        value=None, minimum=0.1, maximum=10,
                        label="Sigma schedule shift (flow models; blank: the model's own)",
                    )  # fmt: skip
                    candidates = gr.Number(
                        value=None, precision=0, minimum=1, maximum=MAX_CANDIDATES,
                        label="Candidates: sample k, keep the best by CLAPScore (flow models)",
                    )  # fmt: skip
                run = gr.Button("Separate", variant="primary")
            with gr.Column():
                target = gr.Audio(
                    type="filepath", label="Result: what you asked for", buttons=["download"]
                )
                residual = gr.Audio(type="filepath", label="The rest", buttons=["download"])
                timing = gr.Textbox(label="Timing", interactive=False)
                stems = gr.Files(label="All results (one file per query)")
        with gr.Row():
            pictures = [
                gr.Image(label=name, interactive=False, type="filepath")
                for name in ("Mixture", "Result", "The rest")
            ]
        inputs = [audio, query, example, example_weight, negative, mode, model, chunk, steps,
                  guidance, seed, shift, candidates]  # fmt: skip
        run.click(
            handler,
            inputs=inputs,
            outputs=[target, residual, *pictures, stems, timing],
            api_name="separate",
            api_description="Separate a recording by a text query: returns the target and "
            "residual files, three spectrograms, all targets and a timing line.",
            concurrency_limit=limits.concurrency,
            concurrency_id="separate",
        )
        if examples:
            gr.Examples(
                examples,
                inputs=[audio, query, example, mode],
                label="Examples: CC0 animal recordings mixed with synthetic speech",
                cache_examples=False,
            )
    demo.queue(max_size=limits.queue_size, default_concurrency_limit=limits.concurrency)
    return demo


def launch(
    models: list[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    *,
    examples_dir: str | Path | None = CHECKOUT_EXAMPLES,
    gpu: Callable[[Callable], Callable] | None = None,
    **limits: float,
) -> None:
    """Serves the app until interrupted. Limits not given come from QUERYSEP_DEMO_* variables,
    then the defaults; models not given from QUERYSEP_DEMO_MODELS, then the registry."""
    settings = Limits(**{**limits_from_env(), **limits})
    demo = build_demo(
        models or models_from_env(), examples_dir=examples_dir, gpu=gpu, **asdict(settings)
    )
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=f"{settings.max_file_mb:g}mb",
        theme=gr.themes.Default(
            font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
        ),  # system fonts: the page fetches nothing from font CDNs
    )
