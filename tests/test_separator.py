from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from querysep import metrics
from querysep.errors import AudioError, ModelLoadError, QuerysepError
from querysep.options import SeparationOptions
from querysep.query import AudioQuery, Query
from querysep.separator import Separator, separate

from .conftest import CONFIGS, DATA, tone


def test_bundle_round_trip_is_bit_identical(tiny_bundle: Path, tmp_path: Path) -> None:
    a = Separator.from_pretrained(tiny_bundle, device="cpu")
    mix = tone(440, 2.3, 44100) + tone(3000, 2.3, 44100, amp=0.1)
    out_a = a.separate(mix, "a dog barking", sample_rate=44100)
    a.save_pretrained(tmp_path / "again")
    b = Separator.from_pretrained(tmp_path / "again", device="cpu")
    out_b = b.separate(mix, "a dog barking", sample_rate=44100)
    assert np.array_equal(out_a.target, out_b.target)
    cfg = json.loads((tmp_path / "again" / "config.json").read_text())
    assert cfg["family"] == "bandsplit" and cfg["querysep_version"]
    assert cfg["query_encoder"] == {"path": "query_encoder", "dim": 16}
    assert (tmp_path / "again" / "model.safetensors").is_file()
    assert not list((tmp_path / "again").glob(".*"))  # no temp files left behind


@pytest.mark.parametrize(
    ("rate", "channels", "seconds"), [(44100, 1, 1.0), (16000, 2, 3.3), (48000, 2, 0.05)]
)
def test_output_matches_input_rate_channels_length(
    tiny_separator: Separator, rate: int, channels: int, seconds: float
) -> None:
    mix = tone(523, seconds, rate, channels) + 0.01
    mix = mix[:, :-1] if mix.shape[1] % 2 == 0 else mix  # odd lengths
    res = tiny_separator.separate(mix, "birds chirping", sample_rate=rate)
    assert res.target.shape == res.residual.shape == mix.shape
    assert res.sample_rate == rate
    assert np.isfinite(res.target).all()
    np.testing.assert_allclose(res.target + res.residual, mix, atol=1e-6)


def test_stereo_channels_are_separated_independently(tiny_separator: Separator) -> None:
    left = tone(440, 1.5, 44100)[0]
    right = np.random.default_rng(0).standard_normal(left.shape).astype(np.float32) * 0.1
    both = tiny_separator.separate(np.stack([left, right]), "dog", sample_rate=44100)
    only_left = tiny_separator.separate(left, "dog", sample_rate=44100)
    np.testing.assert_allclose(both.target[0], only_left.target[0], atol=1e-5)


def test_queries_change_the_output_and_lists_match_singles(tiny_separator: Separator) -> None:
    mix = tone(440, 2.0, 44100) + tone(2500, 2.0, 44100, amp=0.2)
    results = tiny_separator.separate(mix, ["a dog barking", "rain falling"], sample_rate=44100)
    assert isinstance(results, list) and len(results) == 2
    single = tiny_separator.separate(mix, "rain falling", sample_rate=44100)
    np.testing.assert_allclose(results[1].target, single.target, atol=1e-5)
    assert not np.allclose(results[0].target, results[1].target, atol=1e-4)


def test_remove_returns_the_rest(tiny_separator: Separator) -> None:
    mix = tone(440, 1.0, 44100) + tone(2500, 1.0, 44100, amp=0.2)
    extract = tiny_separator.separate(mix, "dog barking", sample_rate=44100)
    remove = tiny_separator.separate(mix, "remove the dog barking", sample_rate=44100)
    except_ = tiny_separator.separate(mix, "everything except the dog barking", sample_rate=44100)
    np.testing.assert_allclose(remove.target, extract.residual, atol=1e-6)
    np.testing.assert_allclose(remove.residual, extract.target, atol=1e-6)
    np.testing.assert_allclose(except_.target, remove.target, atol=1e-6)
    assert remove.query.mode == "remove"


def test_negative_query_changes_output(tiny_separator: Separator) -> None:
    mix = tone(440, 1.0, 44100) + tone(2500, 1.0, 44100, amp=0.2)
    plain = tiny_separator.separate(mix, "dog", sample_rate=44100)
    neg = tiny_separator.separate(mix, "dog", sample_rate=44100, negative="rain falling")
    assert not np.allclose(plain.target, neg.target, atol=1e-5)


def test_audio_example_and_mixed_queries(tiny_separator: Separator) -> None:
    mix = tone(440, 1.0, 44100) + tone(2500, 1.0, 44100, amp=0.2)
    by_path = tiny_separator.separate(mix, AudioQuery(str(DATA / "dog.mp3")), sample_rate=44100)
    mixed = tiny_separator.separate(
        mix,
        Query.make("dog barking", AudioQuery(str(DATA / "dog.mp3")), weights=(0.5, 0.5)),
        sample_rate=44100,
    )
    assert np.isfinite(by_path.target).all() and np.isfinite(mixed.target).all()
    assert not np.allclose(by_path.target, mixed.target, atol=1e-5)


def test_silence_in_silence_out(tiny_separator: Separator) -> None:
    res = tiny_separator.separate(np.zeros((2, 30000), np.float32), "dog", sample_rate=22050)
    assert np.array_equal(res.target, np.zeros((2, 30000), np.float32))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((1, 0), np.float32),
        np.full((1, 100), np.nan, np.float32),
        np.ones((40, 100), np.float32),
    ],
)
def test_bad_arrays_are_audio_errors(tiny_separator: Separator, bad: np.ndarray) -> None:
    with pytest.raises(AudioError):
        tiny_separator.separate(bad, "dog", sample_rate=44100)


def test_array_needs_rate_and_rates_are_checked(tiny_separator: Separator) -> None:
    with pytest.raises(QuerysepError, match="sample_rate"):
        tiny_separator.separate(np.ones(100, np.float32), "dog")
    with pytest.raises(AudioError):
        tiny_separator.separate(np.ones(100, np.float32), "dog", sample_rate=500)
    with pytest.raises(QuerysepError, match="overlap"):
        tiny_separator.separate(np.ones(1000, np.float32), "dog", sample_rate=16000, overlap=1.5)


def test_separate_file_streams_to_disk_and_matches_memory(
    tiny_separator: Separator, tmp_path: Path
) -> None:
    import soundfile as sf

    mix = tone(440, 7.5, 32000, channels=2) + tone(1800, 7.5, 32000, channels=2, amp=0.1)
    src = tmp_path / "in.flac"
    sf.write(src, mix.T, 32000, subtype="PCM_24")
    loaded = sf.read(src, dtype="float32")[0].T
    paths = tiny_separator.separate_file(
        src, ["dog", "remove the rain"], tmp_path / "out", chunk_seconds=2.0
    )
    memory = tiny_separator.separate(src, ["dog", "remove the rain"], chunk_seconds=2.0)
    assert [p.name for p in paths[0]] == ["in_dog.wav", "in_dog_residual.wav"]
    for (tpath, rpath), res in zip(paths, memory, strict=True):
        target, rate = sf.read(tpath, dtype="float32", always_2d=True)
        residual, _ = sf.read(rpath, dtype="float32", always_2d=True)
        assert rate == 32000 and target.shape == (loaded.shape[1], 2)
        np.testing.assert_allclose(target.T, res.target, atol=1e-6)
        np.testing.assert_allclose(target.T + residual.T, loaded, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "in_dog.wav",
        "in_dog_residual.wav",
        "in_remove-the-rain.wav",
        "in_remove-the-rain_residual.wav",
    ]


def test_refuses_to_overwrite_input(tiny_separator: Separator, tmp_path: Path) -> None:
    import soundfile as sf

    src = tmp_path / "x_dog.wav"
    sf.write(src, tone(440, 0.5, 16000).T, 16000)
    before = src.read_bytes()
    with pytest.raises(AudioError, match="overwrite"):
        tiny_separator.separate_file(src, "dog", tmp_path, stem="x")
    assert src.read_bytes() == before


def test_bf16_runs_on_cpu(tiny_bundle: Path) -> None:
    sep = Separator.from_pretrained(tiny_bundle, device="cpu", dtype="bf16")
    mix = tone(440, 1.0, 44100)
    res = sep.separate(mix, "dog", sample_rate=44100)
    ref = Separator.from_pretrained(tiny_bundle, device="cpu").separate(
        mix, "dog", sample_rate=44100
    )
    assert np.isfinite(res.target).all()
    assert metrics.sdr(res.target, ref.target).min() > 15  # bf16 close to fp32
    with pytest.raises(QuerysepError, match="fp16"):
        Separator.from_pretrained(tiny_bundle, device="cpu", dtype="fp16")


def test_module_level_separate_and_default_model(tiny_bundle: Path) -> None:
    res = separate(
        tone(440, 0.5, 16000), "dog", model=str(tiny_bundle), sample_rate=16000, device="cpu"
    )
    assert res.target.shape == (1, 8000)
    with pytest.raises(ModelLoadError, match=r"audiosep-base is not in the cache.*--model"):
        separate(tone(440, 0.5, 16000), "dog", sample_rate=16000, model="audiosep-base")


def test_loading_errors(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a directory"):
        Separator.from_pretrained("no-such-model")
    with pytest.raises(ModelLoadError, match="Hub"):
        Separator.from_pretrained("querysep/not-cached-anywhere")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, broken / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle"):
        Separator.from_pretrained(broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="cannot read weights"):
        Separator.from_pretrained(broken)
    cfg = json.loads((tiny_bundle / "config.json").read_text())
    cfg["model"]["dim"] = cfg["model"].get("dim", 16) * 2
    wrong = tmp_path / "wrong"
    shutil.copytree(tiny_bundle, wrong)
    (wrong / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="do not"):
        Separator.from_pretrained(wrong)
    # a bundle only reads its own files: no absolute path, no way out through ".."
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(tiny_bundle, elsewhere)
    for bad, message in (
        (str(elsewhere / "query_encoder"), "must be a folder inside the bundle"),
        ("../elsewhere/query_encoder", "points outside the bundle"),
        (7, "must be a folder inside the bundle"),
    ):
        cfg = json.loads((tiny_bundle / "config.json").read_text())
        cfg["query_encoder"]["path"] = bad
        (wrong / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ModelLoadError, match=message):
            Separator.from_pretrained(wrong)


@pytest.mark.parametrize("rate", [16000, 32000, 48000])
def test_other_sample_rates_build_and_run(rate: int) -> None:
    import yaml

    cfg = yaml.safe_load((CONFIGS / "bandsplit-tiny.yaml").read_text())
    cfg["sample_rate"] = rate
    sep = Separator.from_config(cfg)
    res = sep.separate(tone(440, 1.0, 44100), "dog", sample_rate=44100)
    assert res.target.shape == (1, 44100) and np.isfinite(res.target).all()


@pytest.mark.parametrize("name", ["bandsplit-small.yaml", "bandsplit-base.yaml"])
def test_hub_encoder_configs_build_offline_and_fail_clearly_on_query(
    name: str, tmp_path: Path
) -> None:
    sep = Separator.from_config(CONFIGS / name)
    assert sep.model.query_dim == 512
    sep.save_pretrained(tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["query_encoder"]["hub_id"].startswith("laion/")
    assert not (tmp_path / "b" / "query_encoder").exists()
    with pytest.raises(ModelLoadError, match="Hub"):
        sep.separate(tone(440, 0.2, 44100), "dog", sample_rate=44100)


def test_result_save_names_and_formats(tiny_separator: Separator, tmp_path: Path) -> None:
    import soundfile as sf

    src = tmp_path / "street.wav"
    sf.write(src, tone(440, 0.5, 16000).T, 16000)
    from_file = tiny_separator.separate(src, "remove the dog")
    paths = from_file.save(tmp_path / "o", format="flac", subtype="PCM_16")
    assert [p.name for p in paths] == [
        "street_remove-the-dog.flac",
        "street_remove-the-dog_residual.flac",
    ]
    assert sf.info(str(paths[0])).subtype == "PCM_16"
    from_array = tiny_separator.separate(tone(440, 0.5, 16000), "dog", sample_rate=16000)
    assert from_array.save(tmp_path / "o")[0].name == "mixture_dog.wav"


def test_auto_batch_size_and_inference_overrides(tiny_separator: Separator) -> None:
    plan = tiny_separator.plan()
    assert plan.batch_size == 1  # CPU: one chunk at a time
    assert plan.chunk == round(4.0 * 44100) and plan.overlap == round(0.25 * plan.chunk)
    plan = tiny_separator.plan(SeparationOptions(chunk_seconds=2.0, overlap=0.5, batch_size=3))
    assert (plan.chunk, plan.overlap, plan.batch_size) == (88200, 44100, 3)
    with pytest.raises(QuerysepError, match="batch_size"):
        SeparationOptions(batch_size=0)  # refused when made, before any model is involved


def test_sampling_options_reach_generative_models_only(tiny_separator: Separator) -> None:
    audio = tone(440, 1.0, 44100)
    with pytest.raises(QuerysepError, match="steps applies to generative models"):
        tiny_separator.separate(audio, "dog", sample_rate=44100, steps=4)
    with pytest.raises(QuerysepError, match="seed applies"):
        tiny_separator.separate(audio, "dog", sample_rate=44100, seed=1)
    with pytest.raises(QuerysepError, match="candidates applies"):
        tiny_separator.separate(audio, "dog", sample_rate=44100, candidates=2)
    with pytest.raises(QuerysepError, match="shift applies"):
        tiny_separator.separate(audio, "dog", sample_rate=44100, shift=3.0)

    seen: list[dict] = []
    model = tiny_separator.model
    original = type(model).separate_many

    def recording(rows, queries, negatives=None, **options):
        seen.append(options)
        return original(model, rows, queries, negatives)

    model.sampling_options = ("steps", "guidance", "generator")
    model.separate_many = recording
    try:
        with pytest.raises(QuerysepError, match="steps must be a whole number from 1"):
            tiny_separator.separate(audio, "dog", sample_rate=44100, steps=0)
        with pytest.raises(QuerysepError, match="guidance must be"):
            tiny_separator.separate(audio, "dog", sample_rate=44100, guidance=float("nan"))
        tiny_separator.separate(audio, "dog", sample_rate=44100, steps=3, guidance=2.0, seed=7)
    finally:
        del model.sampling_options, model.separate_many
    assert seen and all(o["steps"] == 3 and o["guidance"] == 2.0 for o in seen)
    generators = {id(o["generator"]) for o in seen}
    assert len(generators) == 1  # one generator for the run: chunks draw successive noise


def test_outputs_get_normal_permissions(tiny_separator: Separator, tmp_path: Path) -> None:
    import os
    import stat

    src = tmp_path / "in.wav"
    import soundfile as sf

    sf.write(src, tone(440, 0.5, 16000).T, 16000)
    old = os.umask(0o022)
    try:
        ((target, _),) = tiny_separator.separate_file(src, "dog", tmp_path / "out")
        tiny_separator.save_pretrained(tmp_path / "bundle")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's private 0600
    assert stat.S_IMODE((tmp_path / "bundle" / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "bundle" / "query_encoder").stat().st_mode) == 0o755


def test_saved_bundles_are_readable_by_other_users(tiny_bundle: Path, tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        Separator.from_pretrained(tiny_bundle, device="cpu").save_pretrained(tmp_path / "b")
    finally:
        os.umask(old)
    for path in (tmp_path / "b").rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o044 == 0o044, f"{path.relative_to(tmp_path)} is {oct(mode)}"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ff_mult": 1_000_000_000}, "do not match the config"),
        ({"depth": 100, "dim": 256}, "do not match the config"),
        ({"n_fft": 2**31}, "n_fft must be at most"),
        ({"bands": {"scale": "mel", "num_bands": 100_000}}, "num_bands must be in"),
        ({"bands": {"scale": "mel", "num_bands": 1e5}}, "num_bands must be a whole number"),
    ],
)
def test_hostile_bundle_configs_are_refused_before_allocating(
    tiny_bundle: Path, tmp_path: Path, change: dict, message: str
) -> None:
    """A bundle's config is checked against its weights file's header (a model built on the
    meta device) before any real tensor exists: no 4 TB request, no traceback."""
    import resource
    import time

    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"].update(change)
    (bad / "config.json").write_text(json.dumps(cfg))
    before, started = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
    with pytest.raises(ModelLoadError, match=message) as err:
        Separator.from_pretrained(bad, device="cpu")
    assert "\n" not in str(err.value)
    assert time.monotonic() - started < 30
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 300, f"peak RSS grew by {grown_mib:.0f} MiB"


def test_compile_routes_every_forward_pass_through_the_compiled_function(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Separator.compile()` hands the model's forward pass to torch.compile and then runs what
    it returns (here a recording stand-in: a real compilation takes minutes on this CPU, and
    bench/separate.py --compile measures it)."""
    import torch

    sep = Separator.from_pretrained(tiny_bundle, device="cpu")
    mix = tone(440, 1.0, 44100) + tone(1800, 1.0, 44100, amp=0.1)
    eager = sep.separate(mix, "dog", sample_rate=44100).target
    calls: list[int] = []

    def fake_compile(fn):
        def compiled(rows, *args, **kwargs):
            calls.append(rows.shape[0])
            return fn(rows, *args, **kwargs)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    assert sep.compile() is sep
    compiled = sep.separate(mix, "dog", sample_rate=44100).target
    assert calls and np.array_equal(compiled, eager)

    def broken(fn):
        raise RuntimeError("no C++ compiler\nlong details")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(QuerysepError, match=r"cannot compile the model: no C\+\+ compiler$"):
        sep.compile()
