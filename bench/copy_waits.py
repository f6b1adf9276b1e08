"""How long the computation waited for streamed copies, measured where the waiting happens.

On a GPU, `CudaCopyEngine.wait` only makes the compute *stream* wait for the copy's event: the host returns at
once, so host-side timers (`BlockStreamer.stats.wait_s`) read ~0 however long the GPU stalls. `TimedCopyEngine`
wraps any copy engine and brackets each wait with two timing events recorded on the compute stream, one before
and one after the wait: the time between them is how long the stream stood still waiting for that copy
(zero when the copy had already finished). On the CPU the "device" is the host thread itself, so the host time
of the wait is the stall. Used by `bench/gpu_streaming.py` and `bench/gpu_check.py`.
"""

from __future__ import annotations

import time
from typing import Any, List, Tuple

import torch

from mova_model.memory.copy_engines import CopyEngine


class TimedCopyEngine(CopyEngine):
    """`inner` with every `wait` timed on the device (CUDA events on the compute stream) and on the host."""

    def __init__(self, inner: CopyEngine) -> None:
        self.inner = inner
        self.device = inner.device
        self.cuda = self.device.type == "cuda"
        self.host_wait_s = 0.0
        self.waits = 0
        self._events: List[Tuple[Any, Any]] = []

    def allocate(self, nbytes: int) -> torch.Tensor:
        return self.inner.allocate(nbytes)

    def register_all(self, layouts) -> int:
        return self.inner.register_all(layouts)

    @property
    def pinned_bytes(self) -> int:
        return self.inner.pinned_bytes

    def reserve(self, slot_bytes: int) -> int:
        return self.inner.reserve(slot_bytes)

    def submit(self, layout, slot: torch.Tensor, slot_id: int) -> Any:
        return self.inner.submit(layout, slot, slot_id)

    def release(self, slot_id: int) -> None:
        self.inner.release(slot_id)

    def onload(self, layout) -> torch.Tensor:
        return self.inner.onload(layout)

    def close(self) -> None:
        self.inner.close()

    def wait(self, ticket: Any) -> None:
        started = time.perf_counter()
        if self.cuda:
            before = torch.cuda.Event(enable_timing=True)
            before.record(torch.cuda.current_stream(self.device))
            self.inner.wait(ticket)
            after = torch.cuda.Event(enable_timing=True)
            after.record(torch.cuda.current_stream(self.device))
            self._events.append((before, after))
        else:
            self.inner.wait(ticket)
        self.host_wait_s += time.perf_counter() - started
        self.waits += 1

    def device_wait_s(self) -> float:
        """Seconds the compute stream (the host thread on the CPU) stood still waiting for copies so far."""
        if not self.cuda:
            return self.host_wait_s
        torch.cuda.synchronize(self.device)
        return sum(before.elapsed_time(after) for before, after in self._events) / 1e3

    def reset(self) -> None:
        self.host_wait_s, self.waits = 0.0, 0
        self._events.clear()
