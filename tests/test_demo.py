"""The web demo: its pieces in-process, then the real server (`querysep demo`, 127.0.0.1, tiny
offline bundle) driven through gradio_client as API users drive it. The headless-browser test
is in test_demo_browser.py.

The tiny model has random weights, so "correct" means: outputs as long as the input at its
rate, target + residual == mixture, remove mode swaps the two, and the files hold what
`Separator.separate` gives for the same request (up to 16-bit rounding).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType, SimpleNamespace

import gradio as gr
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from querysep.demo import (
    DemoHandler,
    Job,
    Limits,
    build_queries,
    limits_from_env,
    load_examples,
    model_choices,
    run_job,
    sampling_options,
    spectrograms,
    split_queries,
    zerogpu,
)
from querysep.errors import QueryError, QuerysepError
from querysep.query import AudioQuery, Query

from .conftest import DATA, ROOT, DemoServer, start_demo, stop_demo, tone

RATE = 16_000
PCM16 = 2.0**-15  # one step of a 16-bit file
#: What the server's RSS may grow by over a batch of requests once warm (allocator slack).
RSS_SLACK_MIB = 100


# -- pieces, in-process -------------------------------------------------------------------------
def test_queries_from_text_toggle_and_example() -> None:
    assert split_queries("dog barking\n cat ; a siren;\n\n") == ["dog barking", "cat", "a siren"]
    several = build_queries("dog barking\nremove the siren")
    assert [(q.positives, q.mode) for q in several] == [
        (("dog barking",), "extract"),
        (("siren",), "remove"),
    ]
    toggled = build_queries("dog barking; remove the siren", mode="remove")
    assert [q.mode for q in toggled] == ["remove", "remove"]
    assert [q.label for q in toggled] == ["remove dog barking", "remove the siren"]
    mixed = build_queries("dog", example="clip.wav", example_weight=0.25)
    assert mixed[0].positives == ("dog", AudioQuery("clip.wav"))
    assert mixed[0].weights == (0.75, 0.25)
    alone = build_queries("", example="clip.wav")
    assert alone[0].positives == (AudioQuery("clip.wav"),)
    bad_texts = (("  \n ; ", "empty"), ("remove the", "names no sound"), ("x" * 3000, "long"))
    for bad, match in bad_texts:
        with pytest.raises(QueryError, match=match):
            build_queries(bad)
    with pytest.raises(QueryError, match="between 0 and 1"):
        build_queries("dog", example="clip.wav", example_weight=1.5)


def test_model_choices_and_limits(tiny_bundle: Path, tmp_path: Path) -> None:
    from querysep import pretrained

    choices = model_choices([str(tiny_bundle)])
    assert (choices[0].label, choices[0].spec) == (tiny_bundle.name, str(tiny_bundle))
    assert [c.label for c in choices[1:]] == pretrained.names()
    twin = tmp_path / tiny_bundle.name
    twin.mkdir()
    labels = [c.label for c in model_choices([str(tiny_bundle), str(twin)])]
    assert labels[:2] == [tiny_bundle.name, str(twin)]  # same folder name: the path tells apart
    # offline with an empty cache the packaged model comes first
    assert model_choices(None)[0].label == pretrained.default_model() == "querysep-mini"

    env = {"QUERYSEP_DEMO_MAX_SECONDS": "20", "QUERYSEP_DEMO_QUEUE_SIZE": " ", "OTHER": "1"}
    assert limits_from_env(env) == {"max_seconds": 20.0}
    assert Limits(**limits_from_env(env)).max_seconds == 20.0
    with pytest.raises(QuerysepError, match="QUERYSEP_DEMO_TIME_LIMIT must be a number"):
        limits_from_env({"QUERYSEP_DEMO_TIME_LIMIT": "ten"})
    with pytest.raises(QuerysepError, match="concurrency must be a positive"):
        Limits(concurrency=0)
    with pytest.raises(QuerysepError, match="max_queries must be a whole"):
        Limits(max_queries=2.5)


def test_sampler_settings_reach_only_models_that_take_them() -> None:
    options = ("steps", "guidance", "shift", "generator")
    flow = SimpleNamespace(model=SimpleNamespace(sampling_options=options))
    mask = SimpleNamespace(model=SimpleNamespace(sampling_options=()))
    assert sampling_options(flow, 8.0, 2.0, 3.0) == ({"steps": 8, "guidance": 2.0, "seed": 3}, "")
    given = sampling_options(flow, None, None, 1.0, shift=3.0, candidates=4.0)
    assert given == ({"shift": 3.0, "seed": 1, "candidates": 4}, "")
    assert sampling_options(mask, None, None, None) == ({}, "")
    options, note = sampling_options(mask, 8.0, None, 3.0, candidates=2.0)
    assert options == {} and note == "steps, seed, candidates ignored: this model is not generative"
    for bad in (0.0, 9.0, float("nan")):
        with pytest.raises(QuerysepError, match="candidates"):
            sampling_options(flow, None, None, None, candidates=bad)


def test_spectrograms_share_one_scale_and_stay_small() -> None:
    rate = 44_100
    loud = np.random.default_rng(0).standard_normal((2, 600 * rate)).astype(np.float32) * 0.3
    started = time.perf_counter()
    images = spectrograms(loud, loud * 0.01)
    assert time.perf_counter() - started < 10
    for image in images:
        assert image.dtype == np.uint8 and image.shape[2] == 3
        assert image.shape[0] == 257 and 700 <= image.shape[1] <= 800  # ten minutes, 800 px
    assert images[1].mean() < images[0].mean() - 20  # 40 dB quieter looks darker
    short = spectrograms(np.zeros((1, 100), np.float32))[0]  # shorter than one FFT frame
    assert short.shape[0] == 257 and 1 <= short.shape[1] <= 8


def test_examples_are_small_mono_and_listed() -> None:
    rows = load_examples(ROOT / "demo" / "examples")
    assert len(rows) >= 4 and {row[3] for row in rows} == {"extract", "remove"}
    assert any(row[2] for row in rows)  # one example query by audio clip
    for audio, query, clip, _ in rows:
        for path in filter(None, (audio, clip)):
            info = sf.info(path)
            assert info.channels == 1 and info.duration <= 10
            assert Path(path).stat().st_size < 512 * 1024
        assert query or clip
    assert load_examples(None) == [] and load_examples(ROOT / "tests") == []


def test_time_limit_stops_a_run_with_a_clear_message(tiny_bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "mix.wav"
    sf.write(path, tone(440, 3.0, RATE)[0], RATE)
    handler = DemoHandler(Limits(time_limit=1e-6), model_choices([str(tiny_bundle)]))
    with pytest.raises(gr.Error) as info:
        handler(str(path), "dog", progress=lambda *a, **k: None)
    assert info.value.message.startswith("stopped at the demo's time limit of 1e-06 s per request")


def test_long_inputs_report_progress(tiny_bundle: Path, tmp_path: Path) -> None:
    jobs: list[Job] = []
    steps: list[str] = []

    def compute(job: Job):
        jobs.append(job)
        return run_job(job)

    handler = DemoHandler(Limits(), model_choices([str(tiny_bundle)]), compute)
    for seconds in (2.0, 12.0):
        path = tmp_path / f"{seconds:g}s.wav"
        sf.write(path, tone(440, seconds, RATE)[0], RATE)
        handler(str(path), "dog", progress=lambda share, desc: steps.append(desc))
    assert [job.progress for job in jobs] == [False, True]  # the engine's bar, tracked by Gradio
    assert steps[:3] == ["loading tiny", "separating", "writing and drawing"]
    assert jobs[0].time_limit == Limits().time_limit
    assert 0 < jobs[0].deadline - time.time() <= Limits().time_limit


def test_zerogpu_wraps_separation_with_a_duration_from_the_input(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert zerogpu(Limits()) is None  # no `spaces` package here
    calls: dict[str, object] = {}
    fake = ModuleType("spaces")

    def gpu(duration):
        calls["duration"] = duration
        return lambda fn: calls.setdefault("wrapped", fn)

    fake.GPU = gpu  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "spaces", fake)
    decorate = zerogpu(Limits(time_limit=100))
    assert decorate is not None and decorate(run_job) is run_job and calls["wrapped"] is run_job
    path = tmp_path / "ten.wav"
    sf.write(path, np.zeros(10 * RATE, np.float32), RATE)
    duration = calls["duration"]
    two, twelve = tuple(build_queries("dog; cat")), tuple(build_queries(";".join(["dog"] * 12)))
    assert duration(Job(str(path), two, "m")) == 34  # 30 s + 0.2 x 10 s x 2 queries
    assert duration(Job(str(path), twelve, "m")) == 54
    sf.write(path, np.zeros(400 * RATE, np.float32), RATE)
    assert duration(Job(str(path), two, "m")) == 100  # capped by the time limit


def test_cli_refuses_a_model_it_cannot_load(tmp_path: Path, capsys) -> None:
    from querysep.cli import main

    assert main(["demo", "--model", str(tmp_path / "missing"), "--port", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("querysep: error: model ") and err.count("\n") == 1


# -- the server, through gradio_client -------------------------------------------------------
@pytest.fixture(scope="module")
def mixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "street.wav"
    audio = tone(440, 2.0, RATE)[0] + tone(1300, 2.0, RATE, amp=0.2)[0]
    sf.write(path, audio, RATE, subtype="PCM_16")
    return path


def client(server: DemoServer):
    from gradio_client import Client

    downloads = server.log.parent / "downloads"  # beside the server's files, not in /tmp/gradio
    return Client(server.url, verbose=False, download_files=str(downloads))


def separate(server: DemoServer, audio: Path, query: str, **kwargs: object) -> tuple:
    from gradio_client import handle_file

    files = {k: handle_file(str(v)) for k, v in kwargs.items() if isinstance(v, Path)}
    return client(server).predict(
        handle_file(str(audio)), query, api_name="/separate", **{**kwargs, **files}
    )


def read(path: str) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == RATE
    return audio.T


def assert_matches(path: str, expected: np.ndarray) -> None:
    np.testing.assert_allclose(read(path), expected, atol=PCM16)


def test_text_query_gives_the_engines_result(
    demo_server: DemoServer, mixture: Path, tiny_separator
) -> None:
    target, residual, *images, stems, timing = separate(
        demo_server, mixture, "dog barking", negative="cat"
    )
    mix = read(str(mixture))
    assert read(target).shape == read(residual).shape == mix.shape
    np.testing.assert_allclose(read(target) + read(residual), mix, atol=2 * PCM16)
    direct = tiny_separator.separate(mix, "dog barking", sample_rate=RATE, negative="cat")
    assert_matches(target, direct.target)
    assert_matches(residual, direct.residual)
    plain = tiny_separator.separate(mix, "dog barking", sample_rate=RATE)
    assert np.abs(plain.target - direct.target).max() > 1e-3  # the negative query took part
    assert Path(target).name == "street_dog-barking.wav"
    assert [Path(s).name for s in stems] == [Path(target).name]
    assert [Image.open(i).size for i in images] == [(251, 257)] * 3  # 1 + 32000 // 128 frames
    assert re.fullmatch(r"2\.0 s of audio, 1 query with tiny on \w+: .* real time\)", timing)


def test_audio_example_query(demo_server: DemoServer, mixture: Path, tiny_separator) -> None:
    clip = DATA / "dog.mp3"
    target, *_ = separate(demo_server, mixture, "", example=clip)
    mix = read(str(mixture))
    direct = tiny_separator.separate(mix, Query.make(audio=AudioQuery(str(clip))), sample_rate=RATE)
    assert_matches(target, direct.target)
    by_text = tiny_separator.separate(mix, "dog barking", sample_rate=RATE)
    assert np.abs(direct.target - by_text.target).max() > 1e-3  # the clip is a different query
    both = separate(demo_server, mixture, "dog barking", example=clip, example_weight=0.3)
    query = Query.make("dog barking", AudioQuery(str(clip)), weights=(0.7, 0.3))
    assert_matches(both[0], tiny_separator.separate(mix, query, sample_rate=RATE).target)


def test_remove_mode_swaps_target_and_rest(demo_server: DemoServer, mixture: Path) -> None:
    extracted, rest, *_ = separate(demo_server, mixture, "dog barking")
    for result in (
        separate(demo_server, mixture, "dog barking", mode="remove"),
        separate(demo_server, mixture, "remove the dog barking"),
    ):
        assert_matches(result[0], read(rest))
        assert_matches(result[1], read(extracted))
    assert Path(result[0]).name == "street_remove-the-dog-barking.wav"


def test_several_queries_give_one_stem_each(
    demo_server: DemoServer, mixture: Path, tiny_separator
) -> None:
    target, _, *_, stems, timing = separate(demo_server, mixture, "dog barking\ncat; a siren")
    direct = tiny_separator.separate(
        read(str(mixture)), ["dog barking", "cat", "a siren"], sample_rate=RATE
    )
    assert [Path(s).name for s in stems] == [
        "street_dog-barking.wav", "street_cat.wav", "street_a-siren.wav"
    ]  # fmt: skip
    for stem, result in zip(stems, direct, strict=True):
        assert_matches(stem, result.target)
    assert_matches(target, direct[0].target) and "3 queries" in timing


def test_bad_requests_get_one_line_messages(
    demo_server: DemoServer, mixture: Path, tmp_path: Path
) -> None:
    from gradio_client.exceptions import AppError

    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(25 * 8000, np.int16), 8000)  # 25 s (limit 20 s), 400 kB
    garbage = tmp_path / "noise.wav"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    cases = [
        (long, "dog", {}, r"^the recording is 25\.0 s long; this demo takes at most 20 s$"),
        (garbage, "dog", {}, r"^cannot read the recording as audio"),
        (mixture, "  ", {}, r"^the query is empty"),
        (mixture, "remove the", {}, r"names no sound"),
        (mixture, ";".join(["dog"] * 9), {}, r"^9 queries: this demo separates at most 8"),
        (mixture, "dog", {"model": "/etc"}, r"^Value: /etc is not in the list of choices"),
        (mixture, "dog", {"model": "audiosep-base"}, r"audiosep-base is not in the cache"),
        (mixture, "dog", {"example": long}, r"^the example clip is 25\.0 s long"),
        (mixture, "dog", {"chunk_seconds": 0.001}, r"(?i)chunk|at least|minimum"),
        (mixture, "x" * 2001, {}, r"^the query is longer than 2000 characters$"),
        (mixture, "dog", {"negative": "dog barking loudly " * 150_000},
         r"^the negative query is longer than 2000 characters$"),
    ]  # fmt: skip
    for audio, query, extra, message in cases:
        with pytest.raises(AppError, match=message) as info:
            separate(demo_server, audio, query, **extra)
        assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


def test_oversize_uploads_are_refused(demo_server: DemoServer, tmp_path: Path) -> None:
    big = tmp_path / "big.wav"
    sf.write(big, np.zeros(RATE * 40, np.float32), RATE, subtype="FLOAT")  # 2.5 MB > 1 MB
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        separate(demo_server, big, "dog")  # gradio_client checks the server's limit first
    # A client that skips that check is refused by the server itself.
    boundary = "querysepboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + big.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        demo_server.url + "gradio_api/upload", data=body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code == 413
    assert "maximum" in info.value.read().decode().lower()


def test_no_file_access_beyond_gradios_uploads(demo_server: DemoServer) -> None:
    for path in (ROOT / "README.md", Path("/etc/passwd")):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"{demo_server.url}gradio_api/file={path}", timeout=10)
        assert info.value.code == 403
    # An API call naming a server path instead of uploading a file is refused.
    data = [{"path": str(DATA / "dog.mp3"), "meta": {"_type": "gradio.FileData"}}, "dog"]
    data += [None, 0.5, "", "extract", None, None, None, None, None]
    request = urllib.request.Request(
        demo_server.url + "gradio_api/call/separate", data=json.dumps({"data": data}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )  # fmt: skip
    event = json.load(urllib.request.urlopen(request, timeout=10))["event_id"]
    with urllib.request.urlopen(
        f"{demo_server.url}gradio_api/call/separate/{event}", timeout=30
    ) as stream:
        reply = stream.read().decode()
    assert "event: error" in reply and "complete" not in reply


def test_concurrent_clients_all_get_correct_results(
    demo_server: DemoServer, mixture: Path, tiny_separator
) -> None:
    import psutil

    mix = read(str(mixture))
    queries = ["dog barking", "cat", "a siren", "remove the dog barking"] * 2
    expected = {q: tiny_separator.separate(mix, q, sample_rate=RATE).target for q in queries}
    server = psutil.Process(demo_server.pid)
    separate(demo_server, mixture, "warm-up")
    baseline = server.memory_info().rss
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda q: separate(demo_server, mixture, q), queries))
    for query, (target, residual, *_) in zip(queries, results, strict=True):
        assert_matches(target, expected[query])
        np.testing.assert_allclose(read(target) + read(residual), mix, atol=2 * PCM16)
    grown = (server.memory_info().rss - baseline) / 2**20
    assert grown < RSS_SLACK_MIB, f"the server grew by {grown:.0f} MiB over {len(queries)} requests"


def test_a_full_queue_turns_requests_away(
    tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from gradio_client import handle_file

    workdir = tmp_path_factory.mktemp("queue")
    recording = workdir / "long.wav"
    sf.write(recording, tone(440, 120.0, RATE)[0], RATE)  # about 2 s of work each
    server = start_demo(tiny_bundle, workdir, {"QUEUE_SIZE": "1", "CONCURRENCY": "1"})
    try:
        api = client(server)
        jobs = [api.submit(handle_file(str(recording)), "dog", api_name="/separate")
                for _ in range(5)]  # fmt: skip
        outcomes = []
        for job in jobs:
            try:
                outcomes.append(job.result()[-1])
            except Exception as exc:  # gradio_client's QueueError
                outcomes.append(str(exc))
    finally:
        stop_demo(server)
    served = [o for o in outcomes if o.startswith("120.0 s of audio")]
    refused = [o for o in outcomes if o == "Queue is full! Please try again."]
    assert served and refused and len(served) + len(refused) == 5, outcomes


def test_results_are_private_to_the_server_user(monkeypatch, tmp_path: Path) -> None:
    """Uploads are private (0600); results get a 0700 folder, so no other user reads them."""
    import stat

    from querysep.demo import output_folder, write_results
    from querysep.separator import SeparationResult

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    old = os.umask(0o022)
    try:
        folder = output_folder()
        x = tone(440, 0.2, RATE)
        result = SeparationResult(x, x * 0, RATE, Query.from_text("dog"), "mix")
        ((target, residual),) = write_results([result], "mix", folder)
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert Path(target).parent == folder and Path(residual).is_file()
