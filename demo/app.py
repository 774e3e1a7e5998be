"""The web demo as a Hugging Face Space, run from this checkout: `python demo/app.py`.

`querysep space build DIR` writes a deployable Space folder (this app, pinned requirements, a
wheel of querysep, the models it offers); `querysep space deploy USER/NAME` uploads one.
Settings come from the variables QUERYSEP_DEMO_MODELS (comma-separated bundles, Hub ids or
registry names; the first is the default) and the limits QUERYSEP_DEMO_MAX_SECONDS,
_MAX_FILE_MB, _MAX_QUERIES, _QUEUE_SIZE, _CONCURRENCY, _TIME_LIMIT.
"""

from pathlib import Path

if __name__ == "__main__":
    from querysep.space import serve

    serve(Path(__file__).resolve().parent)
