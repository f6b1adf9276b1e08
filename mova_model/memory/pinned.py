"""Page-locked ("pinned") host memory of exactly the size a memory plan counts, returned when a run ends.

Why not `torch.empty(n, pin_memory=True)`: PyTorch's caching host allocator rounds every pinned block up to a
power of two (a 703 MB block takes 1 GiB) and keeps freed blocks cached for reuse; nothing in a run empties
that cache, so after a streamed run tens of GB of page-locked RAM can stay in the ComfyUI process, and a plan
that counts the bytes it asked for undercounts what is locked. Here a `PinnedArena` is ordinary host memory
(the CPU allocator: the size asked for, rounded to whole pages) that is page-locked in place with
`cudaHostRegister` and unlocked with `cudaHostUnregister` by `close()`, after which the memory is freed.
A `BlockStreamer` run pins one arena for every module it keeps pinned (`pin="all"`) or one for its staging
buffers (`pin="ring"`); the planner counts exactly those bytes (`planner._host_side`).

The registration goes through a `HostRegistrar`: `CudaHostRegistrar` on a GPU. `CheckedRegistrar` enforces on
any machine what the CUDA calls demand and a CPU would not complain about: a range is registered once and
never overlaps another, and is unregistered by its base address, once; the copy engines wrap the CUDA
registrar in it, and the CPU tests use it alone (then checking that nothing stays registered after a run).
"""

from __future__ import annotations

import mmap
import threading
from typing import Dict, Optional, Protocol

import torch

PAGE_BYTES = mmap.PAGESIZE
PIECE_ALIGN = 256
"""Offsets of the pieces handed out by an arena (a streaming layout's own alignment, `layout.ALIGN_BYTES`)."""


class HostRegistrar(Protocol):
    """Page-locks and unlocks host ranges (`cudaHostRegister` / `cudaHostUnregister`)."""

    def register(self, ptr: int, nbytes: int) -> None: ...

    def unregister(self, ptr: int) -> None: ...


class CudaHostRegistrar:
    """`cudaHostRegister(ptr, nbytes, cudaHostRegisterDefault)` / `cudaHostUnregister(ptr)` via `torch.cuda.cudart()`;
    a CUDA error is raised as `RuntimeError` naming the call and the size."""

    def __init__(self) -> None:
        self._cudart = torch.cuda.cudart()

    def _check(self, code, what: str) -> None:
        value = int(getattr(code, "value", code))
        if value != 0:
            raise RuntimeError(f"{what} failed with CUDA error {value} ({code})")

    def register(self, ptr: int, nbytes: int) -> None:
        self._check(self._cudart.cudaHostRegister(ptr, nbytes, 0), f"cudaHostRegister of {nbytes / 1e9:.2f} GB")

    def unregister(self, ptr: int) -> None:
        self._check(self._cudart.cudaHostUnregister(ptr), "cudaHostUnregister")


class CheckedRegistrar:
    """A registrar that checks every call against CUDA's rules and keeps what is registered (`registered`,
    `pinned_bytes`, `calls`). It locks nothing: the CPU tests use it alone, and `inner` (the CUDA registrar) can
    be wrapped to check a GPU run the same way."""

    def __init__(self, inner: Optional[HostRegistrar] = None) -> None:
        self.inner = inner
        self.registered: Dict[int, int] = {}
        self.calls: list = []
        self._lock = threading.Lock()

    @property
    def pinned_bytes(self) -> int:
        return sum(self.registered.values())

    def register(self, ptr: int, nbytes: int) -> None:
        with self._lock:
            if nbytes <= 0:
                raise ValueError(f"cudaHostRegister of {nbytes} bytes")
            for base, size in self.registered.items():
                if ptr < base + size and base < ptr + nbytes:
                    raise RuntimeError(f"cudaHostRegister: [{ptr:#x}, +{nbytes}) overlaps the registered range "
                                       f"[{base:#x}, +{size}) (cudaErrorHostMemoryAlreadyRegistered)")
            self.registered[ptr] = nbytes
            self.calls.append(("register", ptr, nbytes))
        if self.inner is not None:
            self.inner.register(ptr, nbytes)

    def unregister(self, ptr: int) -> None:
        with self._lock:
            if ptr not in self.registered:
                raise RuntimeError(f"cudaHostUnregister of {ptr:#x}, which is not the base of a registered range "
                                   "(cudaErrorHostMemoryNotRegistered)")
            nbytes = self.registered.pop(ptr)
            self.calls.append(("unregister", ptr, nbytes))
        if self.inner is not None:
            self.inner.unregister(ptr)


class PinnedArena:
    """`nbytes` (rounded up to whole pages) of page-locked host memory, handed out in 256-byte aligned pieces.

    The memory is a plain CPU tensor made outside inference mode (so a copy worker may write into it from any
    thread), page aligned, registered with `registrar` on creation and unregistered by `close()`; the caller
    makes sure no DMA still reads it (CUDA: synchronize first).
    """

    def __init__(self, nbytes: int, registrar: HostRegistrar) -> None:
        size = -(-max(int(nbytes), 1) // PAGE_BYTES) * PAGE_BYTES
        with torch.inference_mode(False):
            raw = torch.empty(size + PAGE_BYTES, dtype=torch.uint8)
        start = (-raw.data_ptr()) % PAGE_BYTES
        self._raw: Optional[torch.Tensor] = raw
        self.buffer: Optional[torch.Tensor] = raw[start:start + size]
        self.nbytes = size
        self.registrar = registrar
        self._cursor = 0
        self._ptr = self.buffer.data_ptr()
        registrar.register(self._ptr, size)

    def take(self, nbytes: int) -> torch.Tensor:
        """The next `nbytes` of the arena (a uint8 view) at a 256-byte aligned offset."""
        if self.buffer is None:
            raise RuntimeError("this pinned arena was closed")
        start = -(-self._cursor // PIECE_ALIGN) * PIECE_ALIGN
        if start + nbytes > self.nbytes:
            raise RuntimeError(f"pinned arena of {self.nbytes} bytes has {self.nbytes - start} left, {nbytes} asked")
        self._cursor = start + nbytes
        return self.buffer[start:start + nbytes]

    @property
    def closed(self) -> bool:
        return self.buffer is None

    def close(self) -> None:
        """Unlock and free the memory (idempotent). Views handed out must not be used afterwards."""
        if self.buffer is None:
            return
        try:
            self.registrar.unregister(self._ptr)
        finally:
            self.buffer = None
            self._raw = None


def arena_bytes(sizes) -> int:
    """Bytes an arena needs to hand out pieces of `sizes` (each at a 256-byte aligned offset), before page rounding."""
    total = 0
    for size in sizes:
        total = -(-total // PIECE_ALIGN) * PIECE_ALIGN + int(size)
    return total


class PinnedHostCopies:
    """The host side of a copy engine: what `CudaCopyEngine` copies from, testable on a CPU.

    pin="all": `pin_all(layouts)` copies every streamed module once into one arena (host RAM = the streamed
    bytes) and `pinned(layout)` returns its piece. pin="ring": `reserve(slot_bytes)` makes one arena of
    `staging_count` buffers a slot large, `staging(i, n)` returns buffer i's first n bytes. `pinned_bytes`:
    what is page-locked now; `close()` returns all of it.
    """

    def __init__(self, pin: str, staging_count: int = 2, registrar: Optional[HostRegistrar] = None) -> None:
        if pin not in ("all", "ring"):
            raise ValueError(f"pin must be 'all' or 'ring', got {pin!r}")
        self.pin = pin
        self.staging_count = max(1, int(staging_count))
        self.registrar = registrar if registrar is not None else CheckedRegistrar()
        self._arenas: list = []
        self._pinned: Dict[int, torch.Tensor] = {}
        self._staging: list = []
        self._staging_arena: Optional[PinnedArena] = None

    @property
    def pinned_bytes(self) -> int:
        return sum(arena.nbytes for arena in self._arenas if not arena.closed)

    def pin_all(self, layouts) -> int:
        """Copy the layouts not pinned yet into one new arena; returns the bytes page-locked for them."""
        if self.pin != "all":
            return 0
        new = [layout for layout in dict.fromkeys(layouts) if id(layout) not in self._pinned]
        if not new:
            return 0
        arena = PinnedArena(arena_bytes(layout.nbytes for layout in new), self.registrar)
        self._arenas.append(arena)
        for layout in new:
            piece = arena.take(layout.nbytes)
            layout.copy_into(piece)
            self._pinned[id(layout)] = piece
        return arena.nbytes

    def pinned(self, layout) -> Optional[torch.Tensor]:
        return self._pinned.get(id(layout))

    def reserve(self, slot_bytes: int) -> int:
        """`staging_count` staging buffers of `slot_bytes` in one arena (replacing smaller ones); returns the bytes
        page-locked for them (0 when the existing ones are large enough). The caller makes sure the old buffers
        are no longer read (CUDA: synchronize first)."""
        if self.pin != "ring" or self.has_staging(slot_bytes):
            return 0
        if self._staging_arena is not None:
            self._staging_arena.close()
            self._arenas.remove(self._staging_arena)
        size = -(-int(slot_bytes) // PIECE_ALIGN) * PIECE_ALIGN
        arena = PinnedArena(size * self.staging_count, self.registrar)
        self._arenas.append(arena)
        self._staging_arena = arena
        self._staging = [arena.take(size) for _ in range(self.staging_count)]
        return arena.nbytes

    def has_staging(self, nbytes: int) -> bool:
        return bool(self._staging) and self._staging[0].numel() >= nbytes

    def staging(self, index: int, nbytes: int) -> torch.Tensor:
        return self._staging[index][:nbytes]

    def close(self) -> None:
        """Unlock and free every arena (idempotent)."""
        self._pinned.clear()
        self._staging = []
        self._staging_arena = None
        arenas, self._arenas = self._arenas, []
        errors = []
        for arena in arenas:
            try:
                arena.close()
            except RuntimeError as exc:  # keep returning the others
                errors.append(exc)
        if errors:
            raise errors[0]
