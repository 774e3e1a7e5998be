"""querysep-mini, the model inside the package: it loads offline, its files are checked, it is
the offline default, and it really separates held-out sounds (quality, not only plumbing).

The mixtures in tests/data/mini are made from the corpus's test split (`bench/mini.py
--fixtures`): their sources were never seen in training.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from querysep import audio, metrics, pretrained
from querysep.errors import ModelLoadError
from querysep.separator import Separator, separate

from .conftest import DATA, ROOT

MINI = DATA / "mini"
ITEMS = json.loads((MINI / "items.json").read_text(encoding="utf-8"))
ENV = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def mini() -> Separator:
    return Separator.from_pretrained("querysep-mini", device="cpu")


def _item(item: dict) -> tuple[np.ndarray, np.ndarray, int]:
    mixture, rate = audio.load(MINI / item["mixture"])
    target = audio.load(MINI / item["target"])[0] if item.get("target") else None
    return mixture, target, rate


def test_separates_held_out_mixtures_and_follows_the_query(mini: Separator) -> None:
    """Over the shipped held-out mixtures, the right caption gets the sound back and another
    class's caption does not. Thresholds are regression guards a little under what the shipped
    model measures (11.21 dB mean, 9.93 dB apart here); the model shipped before it (10.04 dB,
    8.93 dB apart) would fail them. bench/README.md has the full benchmark (issue 13's 9 dB mean
    over 420 mixtures: 9.08 dB)."""
    right, other = [], []
    for item in (i for i in ITEMS if i.get("target")):
        mixture, target, rate = _item(item)
        results = mini.separate(mixture, [item["query"], item["other_query"]], sample_rate=rate)
        right.append(float(metrics.sdr_improvement(results[0].target, target, mixture).mean()))
        other.append(float(metrics.sdr_improvement(results[1].target, target, mixture).mean()))
    assert len(right) >= 15
    assert np.mean(right) >= 10.5, f"mean SDRi {np.mean(right):.2f} dB"
    assert np.mean(right) - np.mean(other) >= 9.0, (np.mean(right), np.mean(other))
    assert max(right) >= 20.0  # where it works, it really separates


def test_absent_targets_are_turned_down(mini: Separator) -> None:
    """A query for a sound that is not there gets a quieter output: median -14.5 dB of the
    mixture here, against -10.9 for the model shipped before it, which this guard fails. The
    issue's bar (90 % of bench/mini.py's absent mixtures at <= -15 dB) is far off: 41 % for
    this model and the two before it (medians -10.2, -9.8 and -10.9 dB over the bench's 120);
    the band-split before them had 55 %. A stage that pushed it further cost 0.7 dB of SDRi
    (bench/README.md)."""
    ratios = []
    for item in (i for i in ITEMS if not i.get("target")):
        mixture, _, rate = _item(item)
        out = mini.separate(mixture, item["query"], sample_rate=rate)
        ratios.append(float(metrics.energy_ratio_db(out.target.ravel(), mixture.ravel())))
    assert len(ratios) >= 5 and np.median(ratios) <= -12.0, ratios


def test_packaged_bundle_is_small_listed_and_knows_its_sounds() -> None:
    folder = pretrained.PACKAGED_DIR / "querysep-mini"
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20
    assert pretrained.verify_packaged(folder) == folder
    sounds = pretrained.sounds("querysep-mini")
    assert len(sounds) >= 40 and {"piano", "dog", "woman_speaking", "drum_kit"} <= set(sounds)
    groups = {v["group"] for v in sounds.values()}
    assert groups == {"instruments", "drums", "speech", "animals", "procedural"}


def test_damaged_or_extra_files_are_refused(tmp_path: Path, monkeypatch) -> None:
    original, copy = (
        pretrained.PACKAGED_DIR / "querysep-mini",
        tmp_path / "weights" / "querysep-mini",
    )
    shutil.copytree(original, copy)
    monkeypatch.setattr(pretrained, "PACKAGED_DIR", tmp_path / "weights")
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"model.safetensors does not match its sha256"):
        Separator.from_pretrained("querysep-mini", device="cpu")
    shutil.copy(original / "model.safetensors", weights)
    Separator.from_pretrained("querysep-mini", device="cpu")  # intact again
    (copy / "extra.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"unlisted file extra\.bin"):
        Separator.from_pretrained("querysep-mini", device="cpu")


def test_offline_default_is_mini(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("QUERYSEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "_FALLBACK_SAID", [])
    assert pretrained.default_model() == "querysep-mini"
    assert pretrained.default_model() == "querysep-mini"
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "querysep-mini" in said[0] and "audiosep-base" in said[0]
    mixture, _, rate = _item(ITEMS[0])
    out = separate(mixture, ITEMS[0]["query"], sample_rate=rate, device="cpu")
    direct = Separator.from_pretrained("querysep-mini", device="cpu")
    np.testing.assert_array_equal(
        out.target, direct.separate(mixture, ITEMS[0]["query"], sample_rate=rate).target
    )
    # a cached audiosep-base stays the default
    (tmp_path / "cache" / "models" / "audiosep-base").mkdir(parents=True)
    (tmp_path / "cache" / "models" / "audiosep-base" / "config.json").write_text("{}")
    assert pretrained.default_model() == "audiosep-base"


def test_unreachable_hub_is_detected_quickly(monkeypatch) -> None:
    import socket

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(pretrained, "_PROBED", {})
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: refused at once
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    reachable, why = pretrained.hub_reachable()
    assert not reachable and "127.0.0.1" in why
    assert time.perf_counter() - started < 2.0
    with socket.socket() as silent:  # accepts the connection, never answers: the timeout
        silent.bind(("localhost", 0))
        silent.listen(1)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://localhost:{silent.getsockname()[1]}")
        started = time.perf_counter()
        reachable, why = pretrained.hub_reachable(timeout=0.5)
        assert not reachable and "localhost" in why
        assert time.perf_counter() - started < 1.5
        reachable, _ = pretrained.hub_reachable(timeout=0.5)  # the answer is reused
        assert not reachable and time.perf_counter() - started < 1.5


def test_cli_without_model_uses_mini_offline(tmp_path: Path) -> None:
    item = ITEMS[0]
    env = {**ENV, "QUERYSEP_CACHE": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-m", "querysep", "separate", str(MINI / item["mixture"]),
         item["query"], "-o", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "querysep-mini" in out.stderr
    written = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert len(written) == 2 and any(n.endswith("_residual.wav") for n in written)
    listing = subprocess.run(
        [sys.executable, "-m", "querysep", "models", "-v"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert "querysep-mini (default offline) [packaged]" in listing.stdout
    assert "sounds (42): piano" in listing.stdout


def test_weights_ship_inside_the_wheel(tmp_path: Path) -> None:
    import zipfile

    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("querysep-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    folder = pretrained.PACKAGED_DIR / "querysep-mini"
    shipped = {f"querysep/weights/querysep-mini/{p.relative_to(folder).as_posix()}"
               for p in folder.rglob("*") if p.is_file()}  # fmt: skip
    assert shipped and shipped <= names


def test_demo_first_start_offline_separates_with_mini(tmp_path: Path) -> None:
    from .conftest import start_demo, stop_demo
    from .test_demo import read, separate

    env_cache = {"QUERYSEP_CACHE": str(tmp_path / "cache")}
    server = start_demo(None, tmp_path, {}, env=env_cache)
    try:
        item = next(i for i in ITEMS if i["name"].startswith("sweep05"))  # harmonica, 19.4 dB
        mixture, target, _ = _item(item)
        out, *_ = separate(server, MINI / item["mixture"], item["query"])
        gain = float(metrics.sdr_improvement(read(out), target, mixture).mean())
        assert gain >= 12.0, f"SDRi {gain:.2f} dB through the demo"
    finally:
        stop_demo(server)


def test_models_fetch_names_what_it_cannot_get_offline(tmp_path: Path) -> None:
    env = {**ENV, "QUERYSEP_CACHE": str(tmp_path / "cache")}
    for name, message in (("audiosep-base", "cannot be downloaded"), ("nope", "unknown model")):
        out = subprocess.run(
            [sys.executable, "-m", "querysep", "models", "--fetch", name],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert message in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "querysep", "models", "--fetch", "querysep-mini"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and "querysep/weights/querysep-mini" in out.stdout


def _commands(text: str) -> list[str]:
    """`querysep ...` command lines in `text`: continuations joined, comment markers, make's
    `$(VENV)/bin/` and trailing comments dropped, whitespace collapsed."""
    lines, joined = [], ""
    for raw in text.splitlines():
        line = raw.strip().lstrip("#").strip().replace("$(VENV)/bin/", "")
        if joined:
            line = f"{joined} {line}"
        if line.endswith("\\"):
            joined = line[:-1]
            continue
        joined = ""
        lines.append(" ".join(line.split("  #")[0].split()))
    return [line for line in lines if line.startswith("querysep ")]


def test_the_mini_recipe_is_written_the_same_wherever_it_is_written() -> None:
    """`make mini` (the Makefile, the source) is copied into the stage-1 config's header and
    bench/README.md's record of the run, and its step counts into README.md: a change to the
    recipe must reach every copy, or the shipped figures describe another recipe."""
    import yaml

    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = make.split("\nmini:", 1)[1].split("\n\n", 1)[0]
    steps = [c for c in _commands(recipe) if c.split()[1] in ("data", "train-clap", "train")]
    assert [c.split()[1] for c in steps] == ["data", "train-clap", "train", "train"]
    header = (ROOT / "configs/train/mini.yaml").read_text(encoding="utf-8").split("\nmodel:")[0]
    bench = (ROOT / "bench/README.md").read_text(encoding="utf-8")
    record = bench.split("The recipe as `make mini` runs it", 1)[1].split("```bash", 1)[1]
    record = record.split("```")[0]
    for where, text in [("configs/train/mini.yaml", header), ("bench/README.md", record)]:
        assert [c for c in _commands(text) if c in steps] == steps, where

    clap = steps[1].split()
    counts = [int(clap[clap.index("--steps") + 1])] + [
        yaml.safe_load((ROOT / c.split()[2]).read_text(encoding="utf-8"))["train"]["max_steps"]
        for c in steps[2:]
    ]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### querysep-mini: the model inside the package", 1)[1]
    section = " ".join(section.split("\n### ", 1)[0].split())
    for n in counts:
        assert f"{n:,} " in section, f"README.md's make mini paragraph lacks {n:,} steps"
        assert f"{n:,} steps" in record or f"--steps {n}" in record, n


def test_pack_stores_fp16_where_it_fits_and_refuses_non_finite_weights(tmp_path: Path) -> None:
    """`querysep pack`: separator weights go to fp16 (half the size) except a tensor fp16
    cannot hold, which stays fp32 (a batch norm's running variance passed 65,504 in a real
    querysep-mini run); the packed folder verifies and separates as the bundle does, to fp16's
    precision. A non-finite weight is refused and nothing is written."""
    import torch
    from safetensors.torch import load_file, save_file

    from .conftest import small_resunet_bundle

    bundle = small_resunet_bundle(tmp_path / "bundle")
    state = load_file(str(bundle / "model.safetensors"))
    state["decoders.1.bn1.running_var"] = state["decoders.1.bn1.running_var"] + 7e4
    save_file(state, str(bundle / "model.safetensors"))
    out = pretrained.pack(bundle, tmp_path / "packed", sounds={"beep": {"group": "procedural"}})
    packed = load_file(str(out / "model.safetensors"))
    assert packed["decoders.1.bn1.running_var"].dtype == torch.float32
    assert packed["encoders.0.conv1.weight"].dtype == torch.float16
    assert pretrained.verify_packaged(out) == out
    mix = np.random.default_rng(0).standard_normal((1, 16000)).astype(np.float32) * 0.1
    a, b = (
        Separator.from_pretrained(x, device="cpu").separate(mix, "a beep", sample_rate=16000).target
        for x in (bundle, out)
    )
    assert np.abs(a - b).max() <= 1e-2 * np.abs(a).max() and np.abs(a).max() > 0

    state["encoders.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(bundle / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"not finite \(encoders\.0\.conv1\.weight\)"):
        pretrained.pack(bundle, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
