"""`querysep space build` writes a Space that installs and answers from its own files."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import gradio
import pytest
import soundfile as sf

from querysep import space
from querysep.errors import QuerysepError

from .conftest import DemoServer, free_port, stop_demo, tone, wait_for


@pytest.fixture(scope="module")
def space_dir(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return space.build(
        tmp_path_factory.mktemp("space") / "space", [str(tiny_bundle), "querysep-mini"]
    )


def test_the_folder_is_complete_pinned_and_has_no_placeholders(space_dir: Path) -> None:
    names = {p.relative_to(space_dir).as_posix() for p in space_dir.rglob("*") if p.is_file()}
    assert {"app.py", "README.md", "requirements.txt", "space.json"} <= names
    assert "models/tiny/model.safetensors" in names and "examples/examples.json" in names
    readme = (space_dir / "README.md").read_text()
    assert readme.startswith("---\n") and f"sdk_version: {gradio.__version__}\n" in readme
    assert "app_file: app.py" in readme
    lines = [
        line for line in (space_dir / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]  # fmt: skip
    names_pinned = {line.split("==")[0].lower() for line in lines if "==" in line}
    assert {"torch", "transformers", "gradio", "soundfile", "soxr"} <= names_pinned
    assert not [line for line in lines if "==" not in line and line != "spaces"]
    assert "diffusers" not in names_pinned  # no flow model offered: no flow extra
    for path in space_dir.rglob("*"):
        if path.suffix in (".py", ".md", ".txt", ".json"):
            text = path.read_text(errors="replace")
            assert "PLACEHOLDER" not in text and "REPLACE-WITH" not in text, path
    (wheel,) = (space_dir / "wheels").glob("querysep-*.whl")
    inside = zipfile.ZipFile(wheel).namelist()
    assert "querysep/weights/querysep-mini/model.safetensors" in inside
    assert "querysep/space.py" in inside
    with pytest.raises(QuerysepError, match="not empty"):
        space.build(space_dir, ["querysep-mini"])


def test_it_installs_from_its_own_files_offline_and_answers(
    space_dir: Path, tmp_path: Path
) -> None:
    """A fresh virtual environment holds only the Space's pinned dependencies (here: this
    environment's packages, on a path line) and installs querysep from the folder's wheel."""
    from gradio_client import Client, handle_file

    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    check = subprocess.run(
        [python, "-c", "import querysep"], capture_output=True, text=True, cwd=tmp_path
    )
    assert check.returncode != 0  # querysep itself is not visible before the app installs it

    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PIP_NO_INDEX": "1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
    }
    env.pop("QUERYSEP_DEMO_MODELS", None)
    log = tmp_path / "space.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [python, "app.py"], cwd=space_dir, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    server = wait_for(DemoServer(f"http://127.0.0.1:{port}/", process, log), seconds=240)
    try:
        where = subprocess.run(
            [python, "-c", "import querysep; print(querysep.__file__)"],
            capture_output=True, text=True, check=True, cwd=tmp_path,
        ).stdout  # fmt: skip
        assert where.startswith(site), where  # from the Space's wheel, not this checkout
        clip = tmp_path / "in.wav"
        sf.write(clip, (tone(440, 1.0, 16000) + tone(1200, 1.0, 16000, amp=0.1)).T, 16000)
        client = Client(server.url, verbose=False)
        target, rest, *_ = client.predict(  # "tiny": the bundle the folder carries
            handle_file(str(clip)), "dog", model="tiny", api_name="/separate"
        )
        assert sf.info(target).frames == sf.info(rest).frames == 16000
    finally:
        stop_demo(server)


def test_deploy_creates_the_space_and_uploads_the_folder(
    space_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    calls: list[tuple[str, dict]] = []

    class Api:
        def __init__(self, token=None):
            calls.append(("init", {"token": token}))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", {"repo_id": repo_id, **kw}))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw))

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    url = space.deploy("someone/querysep", space_dir, token="t")
    assert url == "https://huggingface.co/spaces/someone/querysep"
    create = dict(calls)["create_repo"]
    assert (create["repo_type"], create["space_sdk"], create["exist_ok"]) == (
        "space",
        "gradio",
        True,
    )
    upload = dict(calls)["upload_folder"]
    assert upload["folder_path"] == str(space_dir) and upload["repo_type"] == "space"
    with pytest.raises(QuerysepError, match="not a Space folder"):
        space.deploy("someone/querysep", space_dir / "models")
