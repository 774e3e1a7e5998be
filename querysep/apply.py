"""Chunked overlap-add: runs any mono model over any length of audio in constant memory.

The stream is cut into fixed-length chunks that overlap; every chunk x channel row is batched
through the model, weighted by a crossfade window and added back. The weights are divided out
exactly, so an identity model reconstructs its input bit-for-bit up to float rounding and no
seam survives at chunk boundaries. Nothing here knows about files, queries or sample rates
beyond the plain rate conversion in `stream_separate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from querysep import audio as qaudio
from querysep.audio import StreamResampler, fit_length
from querysep.errors import QuerysepError

#: rows [N, t] -> targets [N, K, t]
ChunkFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ChunkPlan:
    chunk: int
    overlap: int
    batch_size: int = 4

    @classmethod
    def from_seconds(
        cls, sample_rate: int, chunk_seconds: float, overlap: float, batch_size: int
    ) -> ChunkPlan:
        chunk = max(64, round(chunk_seconds * sample_rate))
        if not 0 <= overlap < 1:
            raise QuerysepError(f"overlap must be a fraction in [0, 1), got {overlap}")
        return cls(chunk, min(chunk - 1, round(overlap * chunk)), max(1, int(batch_size)))

    @property
    def hop(self) -> int:
        return self.chunk - self.overlap

    def fade(self, fade_in: bool, fade_out: bool) -> Tensor:
        """Raised-cosine crossfades over the overlap: sin^2 + cos^2 = 1 where two chunks meet."""
        w = torch.ones(self.chunk, dtype=torch.float64)
        if self.overlap:
            ramp = torch.sin(0.5 * math.pi * (torch.arange(self.overlap) + 0.5) / self.overlap) ** 2
            if fade_in:
                w[: self.overlap] = ramp
            if fade_out:
                w[-self.overlap :] = ramp.flip(0)
        return w


class OverlapAdd:
    """Streaming engine: `push` blocks [C, n], get finished output blocks [K, C, m] back."""

    def __init__(
        self,
        fn: ChunkFn,
        plan: ChunkPlan,
        channels: int,
        num_outputs: int,
        *,
        stop_check: Callable[[], None] | None = None,
    ):
        """`stop_check` runs before every forward pass and may raise to stop the run (a
        deadline, a cancelled request): a run stops within one batch of chunks."""
        self.fn, self.plan, self.channels, self.k = fn, plan, channels, num_outputs
        self.stop_check = stop_check
        self._inp = torch.zeros(channels, 0)  # input samples from absolute index _inp_start
        self._inp_start = 0
        self._seen = 0  # input samples pushed so far
        self._next_chunk = 0  # index of the next chunk to schedule
        self._pending: list[tuple[int, Tensor, bool]] = []  # (start, rows [C, chunk], is_last)
        self._acc = torch.zeros(num_outputs, channels, 0, dtype=torch.float64)
        self._wsum = torch.zeros(0, dtype=torch.float64)
        self._out_start = 0  # absolute index of _acc[..., 0]
        self._done = False

    def push(self, block: Tensor | np.ndarray) -> list[Tensor]:
        block = torch.as_tensor(block, dtype=torch.float32)
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise QuerysepError(
                f"expected blocks of shape [{self.channels}, n], got {tuple(block.shape)}"
            )
        if block.shape[1]:
            self._inp = torch.cat([self._inp, block], dim=1)
            self._seen += block.shape[1]
        return self._advance(final=False)

    def finish(self) -> list[Tensor]:
        if self._seen == 0:
            raise QuerysepError("cannot separate zero-length audio")
        out = self._advance(final=True)
        self._done = True
        return out

    # -- internals ------------------------------------------------------------------------
    def _chunk_exists(self, i: int) -> bool:
        return i == 0 or i * self.plan.hop + self.plan.overlap < self._seen

    def _advance(self, final: bool) -> list[Tensor]:
        plan = self.plan
        while True:
            start = self._next_chunk * plan.hop
            end = start + plan.chunk
            # Wait for one sample past the chunk: only then do we know whether it is the last.
            if not final and self._seen <= end:
                break
            if final and not self._chunk_exists(self._next_chunk):
                break
            is_last = self._seen <= end
            self._pending.append((start, self._slice_input(start, end, is_last), is_last))
            self._next_chunk += 1
            if len(self._pending) >= plan.batch_size:
                self._run_pending()
        if final and self._pending:
            self._run_pending()
        self._drop_input_before(self._next_chunk * plan.hop)
        ready = self._seen if final else min(self._seen, self._next_chunk * plan.hop)
        if self._pending:
            ready = min(ready, self._pending[0][0])
        return self._emit(ready)

    def _slice_input(self, start: int, end: int, is_last: bool) -> Tensor:
        rows = self._inp[:, start - self._inp_start : end - self._inp_start]
        if start == 0 and is_last:
            return rows  # the whole input fits in one chunk: run it at its own length
        if rows.shape[1] < self.plan.chunk:
            rows = torch.nn.functional.pad(rows, (0, self.plan.chunk - rows.shape[1]))
        return rows

    def _drop_input_before(self, index: int) -> None:
        cut = max(0, min(index, self._seen) - self._inp_start)
        if cut:
            self._inp = self._inp[:, cut:]
            self._inp_start += cut

    def _run_pending(self) -> None:
        pending, self._pending = self._pending, []
        rows = torch.cat([r for _, r, _ in pending], dim=0)  # [n_chunks * C, t]
        outputs = self._run_model(rows).double()  # [n_chunks * C, K, t]
        outputs = outputs.reshape(len(pending), self.channels, self.k, -1).transpose(1, 2)
        for (start, chunk_rows, is_last), out in zip(pending, outputs, strict=True):
            length = min(chunk_rows.shape[1], self._seen - start)
            window = self.plan.fade(fade_in=start > 0, fade_out=not is_last)[:length]
            self._accumulate(start, out[..., :length] * window, window)

    def _run_model(self, rows: Tensor) -> Tensor:
        # Silent rows skip the model: silence in, exact silence out, and no wasted compute.
        if self.stop_check is not None:
            self.stop_check()
        active = rows.abs().amax(dim=-1) > 0
        out = torch.zeros(rows.shape[0], self.k, rows.shape[1])
        if bool(active.any()):
            result = self.fn(rows[active])
            if result.shape != (int(active.sum()), self.k, rows.shape[1]):
                raise QuerysepError(
                    f"model returned shape {tuple(result.shape)} "
                    f"for input {tuple(rows[active].shape)}"
                )
            result = result.float().cpu()
            if not torch.isfinite(result).all():
                raise QuerysepError("the model produced NaN/inf: try dtype fp32 or another model")
            out[active] = result
        return out

    def _accumulate(self, start: int, values: Tensor, window: Tensor) -> None:
        end = start + values.shape[-1]
        need = end - self._out_start - self._acc.shape[-1]
        if need > 0:
            self._acc = torch.nn.functional.pad(self._acc, (0, need))
            self._wsum = torch.nn.functional.pad(self._wsum, (0, need))
        lo, hi = start - self._out_start, end - self._out_start
        self._acc[..., lo:hi] += values
        self._wsum[lo:hi] += window

    def _emit(self, ready: int) -> list[Tensor]:
        n = ready - self._out_start
        if n <= 0:
            return []
        out = (self._acc[..., :n] / self._wsum[:n].clamp_min(1e-12)).float()
        self._acc, self._wsum = self._acc[..., n:], self._wsum[n:]
        self._out_start = ready
        return [out]


def overlap_add(fn: ChunkFn, audio: Tensor, plan: ChunkPlan, num_outputs: int) -> Tensor:
    """Whole-array convenience: [C, T] -> [K, C, T]."""
    engine = OverlapAdd(fn, plan, audio.shape[0], num_outputs)
    outs = engine.push(audio) + engine.finish()
    return torch.cat(outs, dim=-1)


class Sink(Protocol):
    def write(self, k: int, target: np.ndarray, residual: np.ndarray) -> None: ...


def stream_separate(
    blocks: Iterable[np.ndarray],
    *,
    sample_rate: int,
    model_rate: int,
    channels: int,
    total_frames: int,
    fn: ChunkFn,
    plan: ChunkPlan,
    num_outputs: int,
    sink: Sink,
    progress: Callable[[int], None] | None = None,
    stop_check: Callable[[], None] | None = None,
) -> None:
    """Input-rate blocks -> model rate -> overlap-add -> input rate -> sink(target, residual).

    The residual is the input mixture minus the target at the input's own rate, so
    target + residual == mixture exactly, whatever the resampling did. Output length equals
    `total_frames`.
    """
    to_model = StreamResampler(sample_rate, model_rate, channels)
    back = [StreamResampler(model_rate, sample_rate, channels) for _ in range(num_outputs)]
    engine = OverlapAdd(fn, plan, channels, num_outputs, stop_check=stop_check)
    mixture = _Fifo(channels)
    written = 0

    def deliver(outputs: list[Tensor], last: bool) -> None:
        nonlocal written
        parts = []
        for k, resampler in enumerate(back):
            model_k = [o[k].numpy() for o in outputs] or [np.zeros((channels, 0), np.float32)]
            parts.append(resampler.process(np.concatenate(model_k, axis=1), last=last))
        # On the last block soxr's rounding may leave a sample too many or too few: fit exactly.
        n = total_frames - written if last else min(parts[0].shape[1], total_frames - written)
        if n <= 0:
            return
        mix = mixture.pop(n)
        for k, part in enumerate(parts):
            target = fit_length(part, n)
            sink.write(k, target, mix - target)
        written += n
        if progress:
            progress(n)

    for block in blocks:
        mixture.push(block)
        model_block = to_model.process(block)
        if model_block.shape[1]:
            deliver(engine.push(model_block), last=False)
    tail = to_model.process(np.zeros((channels, 0), np.float32), last=True)
    outs = engine.push(tail) if tail.shape[1] else []
    deliver(outs + engine.finish(), last=True)


class _Fifo:
    """Input-rate mixture samples waiting for their target, to form exact residuals."""

    def __init__(self, channels: int):
        self._blocks: list[np.ndarray] = []
        self._channels = channels

    def push(self, block: np.ndarray) -> None:
        self._blocks.append(block)

    def pop(self, n: int) -> np.ndarray:
        out, have = [], 0
        while have < n and self._blocks:
            b = self._blocks[0]
            take = min(n - have, b.shape[1])
            out.append(b[:, :take])
            have += take
            if take == b.shape[1]:
                self._blocks.pop(0)
            else:
                self._blocks[0] = b[:, take:]
        if have < n:
            out.append(np.zeros((self._channels, n - have), np.float32))
        return np.concatenate(out, axis=1)


def iter_array_blocks(audio: np.ndarray, block_frames: int) -> Iterator[np.ndarray]:
    for i in range(0, audio.shape[1], block_frames):
        yield audio[:, i : i + block_frames]


#: Input block length: files are decoded this much at a time.
BLOCK_SECONDS = 10.0


@dataclass
class Source:
    """Audio to separate, streamed in blocks: a file (never read whole) or an array."""

    sample_rate: int
    channels: int
    frames: int
    blocks: Callable[[], Any]
    stem: str = "mixture"


def open_source(audio: Any, sample_rate: int | None) -> Source:
    """A path or an array -> a source that streams blocks (files are never read whole)."""
    if isinstance(audio, (str, Path)):
        if sample_rate is not None:
            raise QuerysepError("sample_rate is for array input; a file carries its own rate")
        info = qaudio.info(audio)
        block = max(1024, int(BLOCK_SECONDS * info.sample_rate))
        read = lambda: qaudio.read_blocks(audio, block)  # noqa: E731
        return Source(info.sample_rate, info.channels, info.frames, read, Path(audio).stem)
    if sample_rate is None:
        raise QuerysepError("array input needs sample_rate=... (the rate of the samples)")
    array = qaudio.to_array(audio, sample_rate)
    rate = int(sample_rate)
    block = max(1024, int(BLOCK_SECONDS * rate))
    return Source(rate, array.shape[0], array.shape[1], lambda: iter_array_blocks(array, block))
