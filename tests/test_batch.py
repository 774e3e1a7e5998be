"""Collections: many inputs, manifests, resumable runs, shared forward passes and ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from querysep import batch
from querysep.errors import DataError
from querysep.options import SeparationOptions
from querysep.query import AudioQuery, Query

from .conftest import run_cli, tone

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def write(path: Path, freq: float, seconds: float = 0.6, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mix = tone(freq, seconds, sr) + tone(freq * 2.7, seconds, sr, amp=0.1)
    sf.write(path, mix.T, sr)
    return path


def log_records(folder: Path) -> list[dict]:
    records = []
    for log in sorted(folder.glob("querysep-log*.jsonl")):
        records += [json.loads(line) for line in log.read_text().splitlines()]
    return records


def outputs(folder: Path) -> dict[str, float]:
    """Every audio output under `folder` with its modification time (ns)."""
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.suffix in (".wav", ".flac")
    }


@pytest.fixture
def collection(tmp_path: Path) -> Path:
    """Nine good files in a tree, a corrupt one, a zero-length one and an unreadable one."""
    root = tmp_path / "in"
    for k in range(9):
        write(root / ("a" if k < 4 else "b/c") / f"take{k}.wav", 200 + 50 * k)
    (root / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    sf.write(root / "empty.wav", np.zeros((0, 1)), 16000)
    (root / "gone.wav").symlink_to(root / "no-such-target.wav")  # unreadable: a dangling link
    (root / "notes.txt").write_text("not audio: not an item")
    return root


def test_folder_run_logs_bad_items_then_resumes_and_force_redoes(
    tiny_bundle: Path, collection: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    args = ("separate", str(collection), "-q", "dog", "--model", str(tiny_bundle), "-o", str(out))
    first = run_cli(capsys, *args)
    assert first.returncode == 1, first.stderr
    assert "Traceback" not in first.stderr
    failed = [line for line in first.stderr.splitlines() if line.startswith("querysep: failed:")]
    assert len(failed) == 3, first.stderr
    assert (
        first.stdout.strip()
        .splitlines()[-1]
        .startswith("querysep: 9 done, 0 skipped, 3 failed of 12 items")
    )
    written = outputs(out)
    assert len(written) == 18  # 9 items x (target, residual), mirroring the input tree
    assert "a/take0_dog.wav" in written and "b/c/take8_dog_residual.wav" in written
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no partial files
    records = log_records(out)
    assert len(records) == 12
    bad = {Path(r["input"]).name: r["error"] for r in records if r["status"] == "failed"}
    assert set(bad) == {"corrupt.wav", "empty.wav", "gone.wav"}
    assert all(reason and "\n" not in reason for reason in bad.values())
    assert "no such file" in bad["gone.wav"]
    summary = json.loads((out / "querysep-summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["ok"]) == (9, 3, False)

    again = run_cli(capsys, *args)  # done items are skipped, and nothing is rewritten
    assert again.returncode == 1
    assert "0 done, 9 skipped, 3 failed" in again.stdout
    assert outputs(out) == written

    time.sleep(0.01)
    forced = run_cli(capsys, *args, "--force")
    assert "9 done, 0 skipped, 3 failed" in forced.stdout
    redone = outputs(out)
    assert redone.keys() == written.keys()
    assert all(redone[k] > written[k] for k in written)


def test_an_output_this_run_did_not_write_is_never_replaced(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    src = write(tmp_path / "x.wav", 300)
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "x_dog.wav"
    mine.write_bytes(b"the user's own file")
    args = ("separate", src, "dog", "--model", tiny_bundle, "-o", out)
    res = run_cli(capsys, *args)
    assert res.returncode == 1 and res.stderr.startswith("querysep: error:"), res.stderr
    assert "--force" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert mine.read_bytes() == b"the user's own file"
    assert not (out / "x_dog_residual.wav").exists()
    forced = run_cli(capsys, *args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert sf.info(str(mine)).frames == sf.info(str(src)).frames
    before = outputs(out)
    rerun = run_cli(capsys, *args)
    assert rerun.returncode == 0 and "skipped" in rerun.stdout
    assert outputs(out) == before


def test_inputs_expand_and_never_share_an_output(tmp_path: Path) -> None:
    dog = [Query.from_text("dog")]
    for name in ("one/x.wav", "one/x.flac", "two/x.wav", "two/y.ogg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    items = batch.collect([tmp_path / "one", tmp_path / "two"], dog)
    names = sorted(str(i.name) for i in items)
    assert names == ["one/x-flac", "one/x-wav", "two/x", "two/y"]
    globbed = batch.collect([str(tmp_path / "*" / "x.wav")], dog)
    assert sorted(str(i.name) for i in globbed) == ["one/x", "two/x"]
    single = batch.collect([tmp_path / "two" / "y.ogg"], dog)
    assert [str(i.name) for i in single] == ["y"]  # one file: outputs at the top, as always
    twice = batch.collect([tmp_path / "two", tmp_path / "two" / "x.wav"], dog)
    assert len(twice) == 2  # the same file named twice is one item
    with pytest.raises(DataError, match="no audio files match"):
        batch.collect([str(tmp_path / "*.mp3")], dog)
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no audio files"):
        batch.collect([tmp_path / "none"], dog)


def test_manifest_rows_give_the_same_audio_as_one_call_per_row(
    tiny_separator, tmp_path: Path
) -> None:
    a, b, c = (
        write(tmp_path / "clips" / f"{n}.wav", f)
        for n, f in zip("abc", (250, 400, 700), strict=True)
    )
    example = write(tmp_path / "example.wav", 400)
    rows = [
        {"audio": "clips/a.wav", "query": "dog barking", "negative": "rain"},
        {"audio": "clips/b.wav", "query": ["piano", "remove the traffic"], "output": "named/b"},
        {"audio": "clips/c.wav", "query": "violin", "query_audio": "example.wav",
         "audio_weight": 0.3},
    ]  # fmt: skip
    manifest = tmp_path / "items.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = batch.read_manifest(manifest)
    summary = tiny_separator.separate_files(items, tmp_path / "out")
    assert (summary.done, summary.failed) == (3, 0)

    ref = tmp_path / "ref"
    calls = [
        (a, "dog barking", {"negative": "rain"}),
        (b, ["piano", "remove the traffic"], {"stem": "b"}),
        (c, Query.make("violin", AudioQuery(str(example)), weights=(0.7, 0.3)), {}),
    ]
    for audio, query, extra in calls:
        pairs = tiny_separator.separate_file(audio, query, ref, **extra)
        for pair in pairs:
            for p in pair:
                # rows mirror their folder below the manifest's, unless they name an output
                folder = "named" if audio.stem == "b" else "clips"
                mine = tmp_path / "out" / folder / p.name
                got, want = sf.read(mine)[0], sf.read(p)[0]
                np.testing.assert_allclose(got, want, atol=1e-6)

    csv_manifest = tmp_path / "items.csv"
    csv_manifest.write_text(
        "audio,query,output\nclips/a.wav,dog barking,from-csv/a\nclips/b.wav,piano | flute,\n"
    )
    parsed = batch.read_manifest(csv_manifest)
    assert [len(i.queries) for i in parsed] == [1, 2]
    assert str(parsed[0].name) == "from-csv/a"
    for bad, message in (
        ('{"audio": "a.wav", "query": "x", "colour": 1}', "unknown field"),
        ('{"query": "x"}', "`audio` must be a path"),
        ("not json", "not JSON"),
        ('{"audio": "a.wav", "query": "x", "output": "../escape"}', "inside the output"),
        ('{"audio": "a.wav"}', "no query"),
    ):
        manifest.write_text(bad + "\n")
        with pytest.raises(DataError, match=message):
            batch.read_manifest(manifest)


def test_shared_forward_passes_change_nothing(tiny_separator, tmp_path: Path) -> None:
    """Chunks of six files in batches of 4 across files (4 threads) = one file at a time."""
    files = [write(tmp_path / "in" / f"f{k}.wav", 220 + 90 * k, seconds=1.3) for k in range(6)]
    files.append(write(tmp_path / "in" / "short.wav", 500, seconds=0.3))  # a lone short chunk
    items = batch.collect([tmp_path / "in"], [Query.from_text("dog"), Query.from_text("bird")])
    one = tiny_separator.separate_files(items, tmp_path / "one", workers=1)
    calls: list[int] = []
    model = tiny_separator.model
    original = type(model).separate_many

    def counting(rows, queries, negatives=None, **options):
        calls.append(rows.shape[0])
        return original(model, rows, queries, negatives, **options)

    model.separate_many = counting
    try:
        shared = tiny_separator.separate_files(
            items,
            tmp_path / "shared",
            workers=4,
            options=SeparationOptions(chunk_seconds=0.5, overlap=0.25, batch_size=4),
        )
        reference = tiny_separator.separate_files(
            items,
            tmp_path / "alone",
            workers=1,
            options=SeparationOptions(chunk_seconds=0.5, overlap=0.25, batch_size=1),
        )
    finally:
        del model.separate_many
    assert one.done == shared.done == reference.done == 7
    assert max(calls) > 1  # some pass carried several files' chunks
    for path in (tmp_path / "alone").rglob("*.wav"):
        twin = tmp_path / "shared" / path.relative_to(tmp_path / "alone")
        np.testing.assert_allclose(sf.read(twin)[0], sf.read(path)[0], atol=1e-5)


def torchrun(args: list[str], port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", str(port), "-m", "querysep", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip


def test_two_ranks_do_every_item_once_even_when_one_is_killed(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import psutil

    from .conftest import free_port

    for k in range(12):
        # rank 1 takes items 1, 3, 5, ...: its second is long, so it can be killed in the middle
        write(tmp_path / "in" / f"item{k:02d}.wav", 180 + 40 * k, seconds=60.0 if k == 3 else 0.5)
    common = ["separate", str(tmp_path / "in"), "-q", "dog", "--model", str(tiny_bundle),
              "--workers", "1", "--quiet"]  # fmt: skip
    single = run_cli(capsys, *common, "-o", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr

    killed = tmp_path / "killed"
    run = torchrun([*common, "-o", str(killed)], free_port())
    rank1_log = killed / "querysep-log.rank1.jsonl"
    deadline = time.monotonic() + 120
    while not (rank1_log.exists() and rank1_log.read_text().count("\n") >= 1):
        assert time.monotonic() < deadline and run.poll() is None, run.communicate()[1][-3000:]
        time.sleep(0.05)
    rank1 = [
        p for p in psutil.Process(run.pid).children(recursive=True)
        if p.environ().get("RANK") == "1"
    ]  # fmt: skip
    assert rank1
    os.kill(rank1[0].pid, signal.SIGKILL)
    run.communicate(timeout=120)
    assert run.returncode != 0
    assert not (killed / "item03_dog.wav").exists()  # the long item was cut short: not done

    rerun = torchrun([*common, "-o", str(killed)], free_port())
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-3000:]
    records = log_records(killed)
    done = [r["input"] for r in records if r["status"] == "done"]
    assert sorted(done) == sorted(str(p) for p in (tmp_path / "in").iterdir())  # each once
    assert {r["rank"] for r in records if r["status"] == "done"} == {0, 1}
    summary = json.loads((killed / "querysep-summary.json").read_text())  # rank 0's, merged
    assert (summary["total"], summary["failed"], summary["ranks"]) == (12, 0, 2)
    assert summary["done"] == 12 - len([r for r in records if r["status"] == "skipped"])
    for path in (tmp_path / "one").glob("*.wav"):
        assert np.array_equal(sf.read(path)[0], sf.read(killed / path.name)[0])


def twelve_items(
    folder: Path, bundle: Path, capsys: pytest.CaptureFixture
) -> tuple[list[Path], list[str]]:
    """Twelve short files and the arguments that separate them (CPU, one worker); the
    one-process run's outputs land in `folder/one` as the reference."""
    files = [
        write(folder / "in" / f"item{k:02d}.wav", 180 + 40 * k, seconds=0.5) for k in range(12)
    ]
    common = ["separate", str(folder / "in"), "-q", "dog", "--model", str(bundle),
              "--device", "cpu", "--workers", "1", "--quiet"]  # fmt: skip
    single = run_cli(capsys, *common, "-o", str(folder / "one"))
    assert single.returncode == 0, single.stderr
    return files, common


def launched(
    *commands: list[str], timeout: float = 120, envs: list[dict[str, str]] | None = None
) -> list[subprocess.CompletedProcess]:
    """Starts the commands together (each in its own session, with its own `envs` entry if
    given) and waits for all of them; any still running at the end is killed with its
    children, and the test fails."""
    envs = envs or [ENV] * len(commands)
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, start_new_session=True)
        for cmd, env in zip(commands, envs, strict=True)
    ]  # fmt: skip
    results = []
    try:
        for cmd, proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return results


def assert_split_once(out: Path, files: list[Path], reference: Path) -> None:
    """Two ranks did every item exactly once, each its own every-2nd share, rank 0's summary
    counts all twelve, and every output equals the one-process run's, sample for sample."""
    logs = sorted(p.name for p in out.glob("querysep-log*.jsonl"))
    assert logs == ["querysep-log.rank0.jsonl", "querysep-log.rank1.jsonl"]
    records = log_records(out)
    assert [r["status"] for r in records] == ["done"] * len(files)  # none twice, none left out
    for rank in (0, 1):
        mine = sorted(r["input"] for r in records if r["rank"] == rank)
        assert mine == [str(f) for f in files[rank::2]]
    summary = json.loads((out / "querysep-summary.json").read_text())
    counts = ("done", "skipped", "failed", "total", "ranks", "ok")
    assert tuple(summary[k] for k in counts) == (12, 0, 0, 12, 2, True)
    want = sorted(p.name for p in reference.glob("*.wav"))
    assert len(want) == 24 and sorted(p.name for p in out.glob("*.wav")) == want
    for name in want:  # not byte for byte: libsndfile's PEAK chunk holds the time of writing
        assert np.array_equal(sf.read(out / name)[0], sf.read(reference / name)[0]), name


def test_accelerate_launch_splits_items_over_two_processes(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`accelerate launch` starts its processes through torch.distributed.run (`--multi_gpu`,
    the default with several GPUs; on CPU it needs the flag); `--cpu` starts one process only
    (several need MPI), which then does every item."""
    from .conftest import free_port

    files, common = twelve_items(tmp_path, tiny_bundle, capsys)
    accelerate = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch",
                  "--num_machines", "1", "--num_processes", "2", "--mixed_precision", "no",
                  "--dynamo_backend", "no"]  # fmt: skip
    out = tmp_path / "accelerate"
    multi = [*accelerate, "--multi_gpu", "--main_process_port", str(free_port())]
    (run,) = launched([*multi, "-m", "querysep", *common, "-o", str(out)])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "querysep: 12 done, 0 skipped, 0 failed of 12 items" in run.stderr
    assert_split_once(out, files, tmp_path / "one")

    alone = tmp_path / "cpu"
    (run,) = launched([*accelerate, "--cpu", "-m", "querysep", *common, "-o", str(alone)])
    assert run.returncode == 0, run.stderr[-3000:]
    assert [p.name for p in alone.glob("querysep-log*.jsonl")] == ["querysep-log.jsonl"]
    assert [r["status"] for r in log_records(alone)] == ["done"] * 12
    summary = json.loads((alone / "querysep-summary.json").read_text())
    assert (summary["done"], summary["total"], summary["ranks"]) == (12, 12, 1)


def test_two_nodes_of_one_rank_each_split_the_items(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Two torchrun agents, one per "node" (--nnodes 2 --node-rank 0 / 1), meeting at node 0's
    address: here both on 127.0.0.1, sharing the output folder as nodes would."""
    from .conftest import free_port

    files, common = twelve_items(tmp_path, tiny_bundle, capsys)
    out, port = tmp_path / "nodes", str(free_port())
    nodes = [
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(n),
         "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", port,
         "-m", "querysep", *common, "-o", str(out)]
        for n in (0, 1)
    ]  # fmt: skip
    node0, node1 = launched(*nodes)
    assert (node0.returncode, node1.returncode) == (0, 0), node0.stderr[-3000:] + node1.stderr
    assert "querysep: 12 done, 0 skipped, 0 failed of 12 items" in node0.stderr
    assert "querysep:" not in node1.stderr  # rank 0 alone reports the merged count
    assert_split_once(out, files, tmp_path / "one")


def test_mpi_rank_variables_split_the_items(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """What Open MPI's mpirun gives each process (`accelerate launch --cpu --mpirun_hostfile`
    runs through it): OMPI_COMM_WORLD_* instead of RANK / WORLD_SIZE. The project does not
    install MPI, so the two processes are started with the variables mpirun would set."""
    from .conftest import free_port

    files, common = twelve_items(tmp_path, tiny_bundle, capsys)
    base = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    mpi = [
        {**base, "OMPI_COMM_WORLD_RANK": str(r), "OMPI_COMM_WORLD_SIZE": "2",
         "OMPI_COMM_WORLD_LOCAL_RANK": str(r)}
        for r in (0, 1)
    ]  # fmt: skip
    out = tmp_path / "mpi"
    command = [sys.executable, "-m", "querysep", *common, "-o", str(out)]
    # without a meeting point: one line naming what is missing, no traceback, no outputs
    (alone,) = launched(command, envs=[mpi[0]])
    assert alone.returncode != 0 and "Traceback" not in alone.stderr
    assert "need MASTER_ADDR and MASTER_PORT" in alone.stderr.strip().splitlines()[-1]
    assert not list(out.glob("*.wav"))
    meet = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    rank0, rank1 = launched(command, command, envs=[{**e, **meet} for e in mpi])
    assert (rank0.returncode, rank1.returncode) == (0, 0), rank0.stderr[-3000:] + rank1.stderr
    assert "querysep: 12 done, 0 skipped, 0 failed of 12 items" in rank0.stderr
    assert_split_once(out, files, tmp_path / "one")


def test_rank_variables_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    for names in batch.RANK_VARIABLES:
        for name in names:
            monkeypatch.delenv(name, raising=False)
    assert batch.Ranks.from_env() == batch.Ranks(0, 1, 0)
    monkeypatch.setenv("PMI_RANK", "3")
    monkeypatch.setenv("PMI_SIZE", "4")
    assert batch.Ranks.from_env() == batch.Ranks(3, 4, 0)
    monkeypatch.setenv("RANK", "1")  # torchrun's variables come first
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert batch.Ranks.from_env() == batch.Ranks(1, 2, 0)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(DataError, match="RANK 2 is not within WORLD_SIZE 2"):
        batch.Ranks.from_env()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(DataError, match="whole numbers"):
        batch.Ranks.from_env()
