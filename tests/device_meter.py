"""Device memory on the CPU: what a GPU run would hold, counted exactly while the code runs on the CPU.

`DeviceMeter` is the CPU's `torch.cuda.memory_allocated()` / `max_memory_allocated()`: a dispatch mode that sees
every tensor a torch op creates, counts the bytes of each new storage while it is alive (a weak reference per
storage says when it is freed) and keeps the peak. Views and in-place results share an input's storage and are
not counted again; storages made while the meter is paused (host-side work) or made outside torch ops
(memory-mapped weights) are never counted. Allocator rounding and fragmentation are not modelled: that is what
a plan's reserve is for. Thread-local, like the dispatch modes it is built on: the block streamer's copy
worker only writes into buffers made (and counted) on the metered thread.

`simulate_device(cache_class)` makes the pipeline's CPU run hold weights the way device memory would: a module
the cache builds *resident* becomes an anonymous, counted copy (what `.to("cuda")` makes), a module kept on the
host for the block streamer stays memory-mapped and uncounted (the streamer's slots and resident copies are
made by `CopyEngine.allocate`, so they are counted like device buffers).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Dict, Iterator, List, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class DeviceMeter(TorchDispatchMode):
    """Live bytes of the storages torch ops create on the metered thread (`current`, `peak`), by phase."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._mark_peak = 0
        self._live: Dict[int, "weakref.ref"] = {}
        self._lock = threading.Lock()
        self._paused = 0
        self.marks: List[tuple] = []

    def _freed(self, key: int, nbytes: int) -> None:
        with self._lock:
            if self._live.pop(key, None) is not None:
                self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self._paused:
            return out
        inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key = id(storage)
            if key in inputs or key in self._live:
                continue
            nbytes = storage.nbytes()
            with self._lock:
                self._live[key] = weakref.ref(storage, lambda _ref, key=key, nbytes=nbytes: self._freed(key, nbytes))
                self.current += nbytes
                self.peak = max(self.peak, self.current)
                self._mark_peak = max(self._mark_peak, self.current)
        return out

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Ops inside are not counted (host-side work: building a module from its memory-mapped files)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def mark(self, label: str) -> int:
        """The peak since the previous mark, recorded under `label`; the next interval starts at `current`."""
        with self._lock:
            peak, self._mark_peak = self._mark_peak, self.current
            self.marks.append((label, peak, self.current))
        return peak

    def peaks(self) -> Dict[str, int]:
        """Largest peak recorded per label."""
        out: Dict[str, int] = {}
        for label, peak, _current in self.marks:
            out[label] = max(out.get(label, 0), peak)
        return out


def device_copy_(module: nn.Module) -> int:
    """Replace every parameter and buffer of `module` by a fresh copy (counted when a meter runs): the anonymous
    copy `.to(device)` would make. Shared tensors stay shared. Returns the bytes copied."""
    copies: Dict[int, torch.Tensor] = {}
    total = 0
    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for name, tensor in table.items():
                if tensor is None:
                    continue
                if id(tensor) not in copies:
                    fresh = tensor.detach().clone()
                    if isinstance(tensor, nn.Parameter):
                        fresh = nn.Parameter(fresh, requires_grad=tensor.requires_grad)
                    copies[id(tensor)] = fresh
                    total += fresh.numel() * fresh.element_size()
                table[name] = copies[id(tensor)]
    return total


@contextlib.contextmanager
def simulate_device(meter: DeviceMeter, cache_class) -> Iterator[None]:
    """Patch `cache_class.get` (`memory.model_store.ComponentCache`): builds are host work (not counted); a module
    asked for resident is then replaced by a counted device copy; a module kept for streaming stays as built."""
    real_get = cache_class.get

    def get(self, name: str, dtype: Optional[torch.dtype] = None, resident: bool = True):
        fresh = name not in self.modules
        with meter.paused():
            module = real_get(self, name, dtype=dtype, resident=resident)
        if fresh and name in self.modules and resident:
            device_copy_(module)
        return module

    cache_class.get = get
    try:
        yield
    finally:
        cache_class.get = real_get
