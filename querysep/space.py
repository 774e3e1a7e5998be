"""A Hugging Face Space from this querysep: `querysep space build DIR`, `querysep space deploy`.

The folder is self-contained: app.py, README.md (the Space's front matter), requirements.txt
with every dependency pinned to the versions installed here, a wheel of this querysep, the
local model bundles it offers, and the demo's examples. A Space installs requirements.txt
before the folder's files are copied in, so app.py installs the bundled wheel (offline, without
dependencies) the first time it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from querysep import __version__
from querysep.errors import QuerysepError, first_line

SETTINGS_NAME = "space.json"
#: What every Space needs beyond querysep's own dependencies; `spaces` lends ZeroGPU GPUs.
_EXTRA_REQUIREMENTS = ("spaces",)
_APP = '''"""The Space's entry point, written by `querysep space build` (querysep {version})."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSION = "{version}"


def ensure_querysep() -> None:
    """The Space installed requirements.txt before this folder existed: install the bundled
    querysep wheel now, offline and without dependencies (they are pinned there)."""
    try:
        import querysep

        if querysep.__version__ == VERSION:
            return
    except ImportError:
        pass
    wheel = next((HERE / "wheels").glob("querysep-*.whl"))
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    subprocess.run([*pip, "--force-reinstall", str(wheel)], check=True)


if __name__ == "__main__":
    ensure_querysep()
    from querysep.space import serve

    serve(HERE)
'''


def source_root() -> Path:
    """The checkout this querysep runs from: the wheel is built from it."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise QuerysepError(
            "querysep space build needs a source checkout of querysep (pip install -e .), "
            f"and {root} has no pyproject.toml"
        )
    return root


def build(directory: str | Path, models: list[str] | None = None, *, force: bool = False) -> Path:
    """Writes the Space folder; `models` are registry names, Hub ids or local bundles (copied
    in), the first being the default. Written under a temporary name, then moved into place."""
    from querysep.files import atomic_dir, refuse_nonempty

    target = Path(directory)
    refuse_nonempty(target, force)
    root = source_root()
    offered, bundles = _offered(models or [])

    def write(tmp: str) -> None:
        folder = Path(tmp)
        (folder / "app.py").write_text(_APP.format(version=__version__), encoding="utf-8")
        (folder / "README.md").write_text(_readme(root), encoding="utf-8")
        extras = ["demo", *(["flow"] if any(_is_flow(b) for b in bundles.values()) else [])]
        (folder / "requirements.txt").write_text(requirements(extras), encoding="utf-8")
        _build_wheel(root, folder / "wheels")
        for name, bundle in bundles.items():
            shutil.copytree(bundle, folder / "models" / name)
        if (root / "demo" / "examples").is_dir():
            shutil.copytree(root / "demo" / "examples", folder / "examples")
        settings = {"models": offered, "querysep_version": __version__}
        (folder / SETTINGS_NAME).write_text(json.dumps(settings, indent=2) + "\n", "utf-8")

    atomic_dir(target, write)
    return target


def _offered(models: list[str]) -> tuple[list[str], dict[str, Path]]:
    """Model specs as the Space names them (`models/<name>` for local bundles) and the local
    bundles to copy."""
    offered: list[str] = []
    bundles: dict[str, Path] = {}
    for spec in models:
        path = Path(spec).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise QuerysepError(f"{path} is not a querysep bundle (no config.json)")
            name = path.name
            if name in bundles:
                raise QuerysepError(f"two bundles are named {name}: rename one folder")
            bundles[name] = path
            offered.append(f"models/{name}")
        else:
            offered.append(spec)
    return offered, bundles


def _is_flow(bundle: Path) -> bool:
    try:
        return json.loads((bundle / "config.json").read_text("utf-8")).get("family") == "flow"
    except (OSError, ValueError) as exc:
        raise QuerysepError(f"cannot read {bundle}/config.json: {first_line(exc)}") from None


def requirements(extras: list[str]) -> str:
    """querysep's dependencies (and these extras'), pinned to the versions installed here."""
    from importlib import metadata

    from packaging.requirements import Requirement

    lines = [f"# written by `querysep space build` from querysep {__version__}'s dependencies"]
    seen: set[str] = set()
    for text in [*(metadata.requires("querysep") or []), *_EXTRA_REQUIREMENTS]:
        req = Requirement(text)
        wanted = req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras)
        if not wanted or req.name.lower() in seen or req.name == "querysep":
            continue
        seen.add(req.name.lower())
        try:
            version = metadata.version(req.name).split("+")[0]  # torch 2.13.0+cpu -> 2.13.0
            lines.append(f"{req.name}=={version}")
        except metadata.PackageNotFoundError:
            lines.append(str(req.name) + str(req.specifier))
    return "\n".join(lines) + "\n"


def _readme(root: Path) -> str:
    """demo/README.md with front matter that pins this gradio and Python."""
    import gradio

    body = (root / "demo" / "README.md").read_text(encoding="utf-8")
    if body.startswith("---"):
        body = body.split("---", 2)[2].lstrip("\n")
    front = {
        "title": "querysep",
        "emoji": "🎧",
        "colorFrom": "indigo",
        "colorTo": "pink",
        "sdk": "gradio",
        "sdk_version": gradio.__version__,
        "python_version": f'"{sys.version_info.major}.{sys.version_info.minor}"',
        "app_file": "app.py",
        "pinned": "false",
        "license": "mit",
        "short_description": "Separate any sound you describe, by text or example clip",
    }
    return "---\n" + "".join(f"{k}: {v}\n" for k, v in front.items()) + "---\n\n" + body


def _build_wheel(root: Path, out: Path) -> None:
    """pip builds the wheel from a copy of the package's sources (the checkout gets no build/
    folder) with the setuptools installed here: no build isolation, so no download."""
    import tempfile

    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as scratch:
        src = Path(scratch)
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        skip = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(root / "querysep", src / "querysep", ignore=skip)
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
               "--no-build-isolation", "--wheel-dir", str(out), str(src)]  # fmt: skip
        env = {**os.environ, "PIP_NO_INPUT": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not list(out.glob("querysep-*.whl")):
        reason = (done.stderr.strip().splitlines() or ["pip wheel failed"])[-1]
        raise QuerysepError(f"cannot build the querysep wheel: {reason}")


def deploy(
    repo_id: str, directory: str | Path, *, private: bool = False, token: str | None = None
) -> str:
    """Creates the Space (if needed) and uploads the folder; returns its URL."""
    from huggingface_hub import HfApi

    folder = Path(directory)
    if not (folder / "app.py").is_file() or not (folder / SETTINGS_NAME).is_file():
        raise QuerysepError(f"{folder} is not a Space folder: run `querysep space build` first")
    api = HfApi(token=token)
    try:
        api.create_repo(
            repo_id, repo_type="space", space_sdk="gradio", exist_ok=True, private=private
        )
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="space",
            commit_message=f"querysep {__version__} Space",
        )
    except Exception as exc:  # network, authentication, permissions: one line
        raise QuerysepError(f"cannot deploy to the Space {repo_id}: {first_line(exc)}") from None
    return f"https://huggingface.co/spaces/{repo_id}"


def serve(folder: str | Path, **overrides: Any) -> None:
    """The Space's app: settings from the Space's variables (QUERYSEP_DEMO_*), then the
    folder's space.json, then the registry."""
    with contextlib.suppress(ImportError):  # first: on ZeroGPU, `spaces` patches torch early
        import spaces  # noqa: F401
    from dataclasses import asdict

    from querysep.demo import Limits, launch, limits_from_env, models_from_env, zerogpu

    folder = Path(folder)
    models = models_from_env()
    settings_file = folder / SETTINGS_NAME
    if models is None and settings_file.is_file():
        offered = json.loads(settings_file.read_text("utf-8")).get("models") or []
        models = [str(folder / m) if m.startswith("models/") else m for m in offered] or None
    limits = Limits(**limits_from_env())
    launch(
        models,
        # Spaces set GRADIO_SERVER_NAME=0.0.0.0; a local run stays on the loopback interface.
        host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        examples_dir=folder / "examples",
        gpu=zerogpu(limits),
        **{**asdict(limits), **overrides},
    )
