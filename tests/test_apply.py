from __future__ import annotations

import numpy as np
import pytest
import torch

from querysep.apply import ChunkPlan, OverlapAdd, iter_array_blocks, overlap_add, stream_separate


def identity(k: int = 1):
    def fn(rows: torch.Tensor) -> torch.Tensor:
        return rows.unsqueeze(1).repeat(1, k, 1)

    return fn


def err_db(est: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor) -> float:
    est, ref = np.asarray(est, np.float64), np.asarray(ref, np.float64)
    return 10 * np.log10(np.sum((est - ref) ** 2) / np.sum(ref**2) + 1e-30)


@pytest.mark.parametrize("length", [1, 100, 999, 1000, 1001, 2500, 7777])
@pytest.mark.parametrize(("chunk", "overlap"), [(1000, 250), (1000, 500), (1000, 0), (512, 400)])
def test_identity_reconstructs_exactly(length: int, chunk: int, overlap: int) -> None:
    x = torch.randn(2, length)
    y = overlap_add(identity(), x, ChunkPlan(chunk, overlap, batch_size=3), num_outputs=1)
    assert y.shape == (1, 2, length)
    assert err_db(y[0], x) < -100


def test_crossfade_weights_sum_to_one() -> None:
    plan = ChunkPlan(1000, 300)
    total = torch.zeros(1000 + 2 * plan.hop, dtype=torch.float64)
    for i, (fi, fo) in enumerate([(False, True), (True, True), (True, False)]):
        total[i * plan.hop : i * plan.hop + plan.chunk] += plan.fade(fi, fo)
    assert torch.allclose(total, torch.ones_like(total))


def test_chunk_dependent_model_has_no_seams() -> None:
    """A model whose gain differs per chunk gives a smooth crossfade, never a jump."""
    calls = iter(range(1000))

    def gain_per_call(rows: torch.Tensor) -> torch.Tensor:
        g = torch.tensor([1.0 + 0.1 * next(calls) for _ in range(rows.shape[0])])
        return (rows * g[:, None]).unsqueeze(1)

    x = torch.ones(1, 5000)
    y = overlap_add(gain_per_call, x, ChunkPlan(1000, 400, batch_size=1), 1)[0, 0]
    assert torch.all(y.diff().abs() < 0.01)  # gains step by 0.1; the crossfade spreads each step


def test_streaming_blocks_equal_whole_array_and_memory_is_bounded() -> None:
    x = torch.randn(1, 20_000)
    plan = ChunkPlan(1000, 250, batch_size=2)
    whole = overlap_add(identity(2), x, plan, 2)
    engine = OverlapAdd(identity(2), plan, channels=1, num_outputs=2)
    outs, held = [], []
    for i in range(0, 20_000, 333):
        outs += engine.push(x[:, i : i + 333])
        held.append(engine._inp.shape[1] + engine._acc.shape[-1])
    outs += engine.finish()
    streamed = torch.cat(outs, dim=-1)
    assert torch.equal(streamed, whole)
    assert max(held) < 3 * plan.chunk  # buffers do not grow with the stream


def test_k_outputs_and_silence_skips_model() -> None:
    seen = []

    def fn(rows: torch.Tensor) -> torch.Tensor:
        seen.append(rows.shape[0])
        return torch.stack([rows, -rows, 2 * rows], dim=1)

    x = torch.zeros(2, 3000)
    x[0, 1500:] = torch.randn(1500)
    y = overlap_add(fn, x, ChunkPlan(1000, 250, batch_size=8), 3)
    assert torch.allclose(y[1], -x, atol=1e-6) and torch.allclose(y[2], 2 * x, atol=1e-6)
    assert torch.equal(y[:, 1], torch.zeros(3, 3000))
    assert sum(seen) < 8  # only the non-silent chunk rows reached the model
    assert torch.equal(
        overlap_add(fn, torch.zeros(1, 500), ChunkPlan(1000, 250), 3), torch.zeros(3, 1, 500)
    )


def test_nan_from_model_is_an_error() -> None:
    from querysep.errors import QuerysepError

    with pytest.raises(QuerysepError, match="NaN"):
        overlap_add(
            lambda r: (r * float("nan")).unsqueeze(1), torch.ones(1, 10), ChunkPlan(100, 25), 1
        )


class _Collect:
    def __init__(self, k: int, channels: int):
        self.t = [[] for _ in range(k)]
        self.r = [[] for _ in range(k)]

    def write(self, k: int, target: np.ndarray, residual: np.ndarray) -> None:
        self.t[k].append(target)
        self.r[k].append(residual)

    def result(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.t[k], axis=1), np.concatenate(self.r[k], axis=1)


@pytest.mark.parametrize(("rate", "model_rate"), [(32000, 32000), (44100, 32000), (16000, 22050)])
def test_stream_separate_resamples_back_to_exact_length(rate: int, model_rate: int) -> None:
    rng = np.random.default_rng(0)
    n = int(2.7 * rate) + 3
    # band-limited content so the rate round trip is (nearly) lossless
    t = np.arange(n) / rate
    mix = np.stack(
        [0.3 * np.sin(2 * np.pi * 300 * t), 0.2 * np.sin(2 * np.pi * 1234 * t + 1)]
    ).astype(np.float32)
    mix += 1e-3 * rng.standard_normal(mix.shape).astype(np.float32) * 0
    sink = _Collect(2, 2)
    stream_separate(
        iter_array_blocks(mix, 4000),
        sample_rate=rate,
        model_rate=model_rate,
        channels=2,
        total_frames=n,
        fn=lambda rows: torch.stack([rows, 0.5 * rows], dim=1),
        plan=ChunkPlan(model_rate, model_rate // 4, batch_size=2),
        num_outputs=2,
        sink=sink,
    )
    target, residual = sink.result(0)
    half, _ = sink.result(1)
    assert target.shape == residual.shape == mix.shape
    np.testing.assert_allclose(target + residual, mix, atol=1e-6)  # exact residual definition
    core = slice(rate // 10, n - rate // 10)  # resampler edges aside
    assert err_db(target[:, core], mix[:, core]) < -60
    assert err_db(half[:, core], 0.5 * mix[:, core]) < -60


def test_the_stop_hook_runs_before_every_forward_pass_and_can_stop_the_run() -> None:
    """A deadline or a cancel button stops a run within one batch of chunks, through the
    engine's hook rather than by patching the model."""
    calls: list[int] = []

    class Stop(Exception):
        pass

    def fn(rows: torch.Tensor) -> torch.Tensor:
        calls.append(rows.shape[0])
        return rows[:, None]

    def stop_after_two() -> None:
        if len(calls) >= 2:
            raise Stop

    plan = ChunkPlan(chunk=100, overlap=20, batch_size=1)
    audio = torch.randn(1, 1000)
    engine = OverlapAdd(fn, plan, channels=1, num_outputs=1, stop_check=stop_after_two)
    with pytest.raises(Stop):
        engine.push(audio)
        engine.finish()
    assert len(calls) == 2
    seen: list[int] = []
    full = OverlapAdd(fn, plan, channels=1, num_outputs=1, stop_check=lambda: seen.append(1))
    out = torch.cat(full.push(audio) + full.finish(), dim=-1)
    assert torch.allclose(out[0], audio, atol=1e-6) and len(seen) == len(calls) - 2 > 2
