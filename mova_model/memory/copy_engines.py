"""Copy engines for `mova_model.memory.streaming.BlockStreamer`: how a module's bytes reach the compute device.

`CudaCopyEngine` copies from pinned host memory on a side CUDA stream, ordered against the compute stream with
events. `ThrottledCopyEngine` is the CPU simulation (tests, `bench/overlap.py`): a worker thread does a real
memcpy into separate "device" buffers, paced to a set bandwidth. Both have one serial copy queue, like one
DMA engine, and the same interface (`CopyEngine`), so the streamer's prefetch logic is shared.

Inference mode: ComfyUI runs every node inside `torch.inference_mode()`, on its own thread, and the copies run on
the engine's worker thread, where that mode is off (it is thread-local). A tensor made inside inference mode
can only be written inside it, so every buffer an engine allocates (device slots, resident copies, pinned
staging) is made outside inference mode (a normal tensor is writable in either mode and can take part in a
training step's autograd), and every worker job runs inside `torch.inference_mode()` (a byte copy needs no
autograd, and there a write into either kind of tensor is allowed).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch

from .layout import BlockLayout, byte_view
from .pinned import CheckedRegistrar, CudaHostRegistrar, PinnedHostCopies


class CopyEngine:
    """Interface of the asynchronous copier a `BlockStreamer` drives.

    `allocate(n)` returns a flat uint8 device buffer; `submit(layout, slot, slot_id)` starts copying the
    layout's bytes into `slot` and returns a ticket; `wait(ticket)` makes the computation wait for that copy;
    `release(slot_id)` marks the end of the computation that reads the slot (a later copy into it waits for
    that point); `onload(layout)` copies synchronously into a fresh buffer (resident modules).
    """

    device: torch.device

    def allocate(self, nbytes: int) -> torch.Tensor:
        return normal_empty(nbytes, device=self.device)

    def register_all(self, layouts: List[BlockLayout]) -> int:
        """Called once with every streamed layout; returns the host bytes pinned for them (0 by default)."""
        return 0

    @property
    def pinned_bytes(self) -> int:
        """Host bytes page-locked by this engine right now (0 once closed)."""
        return 0

    def reserve(self, slot_bytes: int) -> int:
        """Called once with the slot size before any copy; returns host bytes it allocated (0 by default)."""
        return 0

    def submit(self, layout: BlockLayout, slot: torch.Tensor, slot_id: int) -> Any:
        raise NotImplementedError

    def wait(self, ticket: Any) -> None:
        raise NotImplementedError

    def release(self, slot_id: int) -> None:
        """Compute that reads slot `slot_id` has been issued."""

    def onload(self, layout: BlockLayout) -> torch.Tensor:
        buffer = self.allocate(layout.nbytes)
        layout.copy_into(buffer)
        return buffer

    def close(self) -> None:
        """Stop worker threads and drop host buffers."""


def normal_empty(nbytes: int, device: torch.device | str = "cpu", pin_memory: bool = False) -> torch.Tensor:
    """A flat uint8 buffer made outside inference mode, whatever the caller's mode (see the module docstring)."""
    with torch.inference_mode(False):
        return torch.empty(int(nbytes), dtype=torch.uint8, device=device, pin_memory=pin_memory)


class _Worker:
    """A single FIFO worker thread (one copy engine = one serial copy queue). Jobs run in inference mode."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: "queue.Queue[Optional[Callable[[], None]]]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                job = self._queue.get()
                if job is None:
                    return
                job()

    def put(self, job: Callable[[], None]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._queue.put(job)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Finish queued jobs and end the thread (a later `put` starts a new one)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=60)
            self._thread = None


@dataclass
class _Ticket:
    done: threading.Event = field(default_factory=threading.Event)
    error: Optional[BaseException] = None
    cuda_event: Any = None


class ThrottledCopyEngine(CopyEngine):
    """CPU simulation of a host->device link: a worker thread memcpys into separate buffers at `bandwidth`.

    The copy is real (every byte is moved into a buffer distinct from the host tensors) and is paced in
    `chunk_bytes` pieces so that n bytes take n / bandwidth seconds. `bandwidth` in bytes/s; None = unpaced.
    pin "all" / "ring" also runs `CudaCopyEngine`'s host side (`pinned.PinnedHostCopies`, registrations checked
    by `pinned.CheckedRegistrar` unless `registrar` is given): copies come from the pinned copy of each module, or
    pass through the staging buffers; "none" (default) copies straight from the module's tensors.
    """

    def __init__(self, bandwidth: Optional[float] = None, chunk_bytes: int = 1 << 20, pin: str = "none",
                 staging: int = 2, registrar=None) -> None:
        if pin not in ("none", "all", "ring"):
            raise ValueError(f"pin must be 'none', 'all' or 'ring', got {pin!r}")
        self.device = torch.device("cpu")
        self.bandwidth = bandwidth
        self.chunk_bytes = int(chunk_bytes)
        self.bytes_copied = 0
        self.busy_s = 0.0
        self._worker = _Worker("mova-throttled-copy")
        self.host = None if pin == "none" else PinnedHostCopies(pin, staging, registrar)
        self._next_staging = 0

    @property
    def pinned_bytes(self) -> int:
        return self.host.pinned_bytes if self.host is not None else 0

    def register_all(self, layouts: List[BlockLayout]) -> int:
        return self.host.pin_all(layouts) if self.host is not None else 0

    def reserve(self, slot_bytes: int) -> int:
        return self.host.reserve(slot_bytes) if self.host is not None else 0

    def _host_sources(self, layout: BlockLayout):
        """(tensor, offset) pairs a streamed copy reads: the module's pinned copy, or (ring) a staging buffer the
        module's tensors were first copied into, as `CudaCopyEngine` does."""
        pinned = self.host.pinned(layout)
        if pinned is None and self.host.pin == "all":
            self.host.pin_all([layout])
            pinned = self.host.pinned(layout)
        if pinned is None:
            index = self._next_staging
            self._next_staging = (index + 1) % self.host.staging_count
            if not self.host.has_staging(layout.nbytes):
                self.host.reserve(layout.nbytes)
            pinned = self.host.staging(index, layout.nbytes)
            layout.copy_into(pinned)
        return [(pinned, 0)]

    def _paced_copy(self, layout: BlockLayout, slot: torch.Tensor, sources=None) -> None:
        start = time.perf_counter()
        done = 0
        for tensor, offset in (layout.sources if sources is None else sources):
            src = byte_view(tensor)
            for lo in range(0, src.numel(), self.chunk_bytes):
                piece = src[lo:lo + self.chunk_bytes]
                slot[offset + lo:offset + lo + piece.numel()].copy_(piece)
                done += piece.numel()
                if self.bandwidth:
                    delay = start + done / self.bandwidth - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
        self.bytes_copied += done
        self.busy_s += time.perf_counter() - start

    def submit(self, layout: BlockLayout, slot: torch.Tensor, slot_id: int) -> _Ticket:
        ticket = _Ticket()

        def job() -> None:
            try:  # resident modules (`onload`, slot -1) are copied from their own tensors, as on a GPU
                self._paced_copy(layout, slot, None if self.host is None or slot_id < 0 else self._host_sources(layout))
            except BaseException as exc:  # reported to the waiting compute thread
                ticket.error = exc
            finally:
                ticket.done.set()

        self._worker.put(job)
        return ticket

    def wait(self, ticket: _Ticket) -> None:
        ticket.done.wait()
        if ticket.error is not None:
            raise RuntimeError("streamed copy failed") from ticket.error

    def onload(self, layout: BlockLayout) -> torch.Tensor:
        buffer = self.allocate(layout.nbytes)
        self.wait(self.submit(layout, buffer, -1))
        return buffer

    def close(self) -> None:
        try:
            self._worker.stop()
        finally:
            if self.host is not None:
                self.host.close()


class CudaCopyEngine(CopyEngine):
    """Host->GPU copies on a side CUDA stream, ordered against the compute stream with events.

    pin="all": each streamed module's bytes are copied once into one pinned arena (host RAM = streamed bytes)
    and every later copy is one DMA. pin="ring": `staging` pinned buffers (one arena) are reused; a worker thread
    memcpys the (memory-mapped) host tensors into a free staging buffer, then issues the DMA. Pinned memory is
    `pinned.PinnedArena`s (exact sizes, `cudaHostRegister`, every call checked), returned by `close()`.
    """

    def __init__(self, device: torch.device | str = "cuda", pin: str = "ring", staging: int = 2,
                 registrar=None) -> None:
        if pin not in ("all", "ring"):
            raise ValueError(f"pin must be 'all' or 'ring', got {pin!r}")
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"CudaCopyEngine needs a CUDA device, got {self.device}")
        self.pin = pin
        self.stream = torch.cuda.Stream(device=self.device)
        self.host = PinnedHostCopies(pin, staging, registrar if registrar is not None
                                     else CheckedRegistrar(CudaHostRegistrar()))
        self._release: Dict[int, Any] = {}
        self._staging_events: List[Any] = [None] * self.host.staging_count
        self._next_staging = 0
        self._worker = _Worker("mova-cuda-copy")

    @property
    def pinned_bytes(self) -> int:
        return self.host.pinned_bytes

    def register_all(self, layouts: List[BlockLayout]) -> int:
        return self.host.pin_all(layouts)

    def reserve(self, slot_bytes: int) -> int:
        if self.pin != "ring":
            return 0
        torch.cuda.synchronize(self.device)  # older staging buffers may still be read by a DMA
        return self.host.reserve(slot_bytes)

    def _dma(self, src: torch.Tensor, slot: torch.Tensor, release_event: Any) -> Any:
        with torch.cuda.stream(self.stream):
            if release_event is not None:
                self.stream.wait_event(release_event)
            slot[:src.numel()].copy_(src, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return event

    def submit(self, layout: BlockLayout, slot: torch.Tensor, slot_id: int) -> _Ticket:
        ticket = _Ticket()
        release_event = self._release.pop(slot_id, None)
        pinned = self.host.pinned(layout)
        if pinned is None and self.pin == "all":  # a module the streamer did not register: pin it now
            self.host.pin_all([layout])
            pinned = self.host.pinned(layout)
        if pinned is not None:
            ticket.cuda_event = self._dma(pinned, slot, release_event)
            ticket.done.set()
            return ticket
        if not self.host.has_staging(layout.nbytes):
            self.reserve(layout.nbytes)

        def job() -> None:
            try:
                index = self._next_staging
                self._next_staging = (index + 1) % self.host.staging_count
                previous = self._staging_events[index]
                if previous is not None:
                    previous.synchronize()  # the staging buffer's last DMA has finished
                staging = self.host.staging(index, layout.nbytes)
                layout.copy_into(staging)
                ticket.cuda_event = self._dma(staging, slot, release_event)
                self._staging_events[index] = ticket.cuda_event
            except BaseException as exc:
                ticket.error = exc
            finally:
                ticket.done.set()

        self._worker.put(job)
        return ticket

    def wait(self, ticket: _Ticket) -> None:
        ticket.done.wait()
        if ticket.error is not None:
            raise RuntimeError("streamed copy failed") from ticket.error
        torch.cuda.current_stream(self.device).wait_event(ticket.cuda_event)

    def release(self, slot_id: int) -> None:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self._release[slot_id] = event

    def close(self) -> None:
        try:
            if self._worker is not None:
                self._worker.stop()
            torch.cuda.synchronize(self.device)  # no DMA reads the pinned memory any more
        finally:
            self.host.close()
            self._staging_events = [None] * self.host.staging_count
            self._release.clear()
