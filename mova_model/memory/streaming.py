"""Block streaming: DiT blocks and bridge conditioners are copied to the compute device just ahead of use.

`BlockStreamer` is the `executor(module, *args)` of `mova_model.network.denoiser.joint_forward`. It is built from the
call order (`denoiser.execution_order`), the modules that stay resident, a prefetch depth and a copy engine:

* Every streamed module gets a `BlockLayout`: its parameters and buffers packed into one flat byte range
  (256-byte aligned offsets). A device *slot* is one flat uint8 buffer as large as the largest streamed
  module; there are `prefetch_depth + 1` slots (one computing, `prefetch_depth` in flight), so the device
  memory spent on streaming is exactly `(prefetch_depth + 1) × max streamed module bytes` (the planner
  uses the same formula).
* When module *i* is called, the copies of the next `prefetch_depth` streamed modules (cyclically, so the end
  of one pass prefetches the start of the next) are issued to the copy engine; the call waits only for its
  own copy, binds its parameters to views of the slot (the bytes are the stored ones, so results are
  bit-identical to a resident run in the same dtype), runs, restores the host tensors and frees the slot.
* A module called out of the expected order (for instance when a bridge direction is switched off) still
  works: stale prefetches are drained and the module is copied on demand.
* Resident modules (listed in `resident`, inside or outside the order, e.g. the embeddings and heads) are
  copied once by `prepare()` and stay until `release()`.

Copy engines: `CudaCopyEngine` copies from pinned host memory on a side CUDA stream, ordered with events
(a slot is only overwritten after the compute stream has finished with it). `ThrottledCopyEngine` is the CPU
simulation used by tests and `bench/overlap.py`: a worker thread performs a real memcpy into separate
"device" buffers, paced to a set bandwidth. Both are driven by the same `BlockStreamer` logic.

`MaterializationCounter` records every copy of a module onto the compute device (and every fp8 conversion,
see `fp8.quantize_module_`), tagged with the module's name, so tests can count that the low-noise expert is
never touched before the expert boundary.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

from .copy_engines import CopyEngine, CudaCopyEngine, ThrottledCopyEngine  # noqa: F401
from .fp8 import FP8_COMPONENTS, quantize_module_
from .layout import BlockLayout


# --------------------------------------------------------------------------------------------------------------
# counting


@dataclass(frozen=True)
class MaterializationEvent:
    """One copy (`onload`, `pin`) or conversion (`convert`) of a module's tensors; `nbytes` in bytes."""

    tag: str
    nbytes: int
    kind: str
    device: str


class MaterializationCounter:
    """Thread-safe log of materializations, queried by tag prefix (`"video_dit_2"` matches `video_dit_2.blocks.3`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: List[MaterializationEvent] = []

    def record(self, tag: str, nbytes: int, kind: str = "onload", device: Any = "") -> None:
        with self._lock:
            self.events.append(MaterializationEvent(tag, int(nbytes), kind, str(device)))

    def _select(self, prefix: Optional[str], kind: Optional[str]) -> List[MaterializationEvent]:
        with self._lock:
            events = list(self.events)
        return [e for e in events
                if (prefix is None or e.tag == prefix or e.tag.startswith(prefix + "."))
                and (kind is None or e.kind == kind)]

    def count(self, prefix: Optional[str] = None, kind: Optional[str] = None) -> int:
        """Number of events whose tag is `prefix` or lies under it (all events when None)."""
        return len(self._select(prefix, kind))

    def nbytes(self, prefix: Optional[str] = None, kind: Optional[str] = None) -> int:
        """Bytes materialized under `prefix`."""
        return sum(e.nbytes for e in self._select(prefix, kind))

    def reset(self) -> None:
        with self._lock:
            self.events.clear()


def module_tags(**roots: Optional[nn.Module]) -> Dict[nn.Module, str]:
    """Map every submodule of the given roots to `root_name.path` (e.g. `video_dit.blocks.3`)."""
    tags: Dict[nn.Module, str] = {}
    for root_name, root in roots.items():
        if root is None:
            continue
        for path, sub in root.named_modules():
            tags.setdefault(sub, f"{root_name}.{path}" if path else root_name)
    return tags


# --------------------------------------------------------------------------------------------------------------
# the executor


@dataclass
class StreamStats:
    """What a streamer did: modules copied, bytes moved, seconds the compute waited for copies."""

    onloads: int = 0
    bytes_moved: int = 0
    wait_s: float = 0.0
    resident_bytes: int = 0
    slot_bytes: int = 0
    pinned_bytes: int = 0


class BlockStreamer:
    """Executor for `joint_forward`: makes a module's weights present on the compute device before it runs.

    order: the modules in call order (`denoiser.execution_order`); device: the compute device;
    prefetch_depth: streamed modules copied ahead of the running one (0 = copy on demand, no overlap);
    resident: modules copied once and kept (from the order, or not in it, e.g. embeddings and heads);
    copy_engine: `CudaCopyEngine` (default on CUDA) or `ThrottledCopyEngine` (CPU simulation);
    counter: optional `MaterializationCounter`; tags: module -> name for the counter (`module_tags`).
    """

    def __init__(self, order: Sequence[nn.Module], device: torch.device | str, prefetch_depth: int = 2,
                 resident: Iterable[nn.Module] = (), copy_engine: Optional[CopyEngine] = None,
                 counter: Optional[MaterializationCounter] = None,
                 tags: Optional[Mapping[nn.Module, str]] = None) -> None:
        if prefetch_depth < 0:
            raise ValueError(f"prefetch_depth must be >= 0, got {prefetch_depth}")
        self.device = torch.device(device)
        if copy_engine is None:
            copy_engine = CudaCopyEngine(self.device) if self.device.type == "cuda" else ThrottledCopyEngine()
        self.engine = copy_engine
        self.depth = int(prefetch_depth)
        self.counter = counter
        self.tags: Dict[nn.Module, str] = dict(tags or {})
        self.order = list(order)
        self.resident: List[nn.Module] = list(dict.fromkeys(resident))
        resident_set = set(self.resident)
        self.streamed: List[nn.Module] = [m for m in dict.fromkeys(self.order) if m not in resident_set]
        self._index: Dict[nn.Module, int] = {m: i for i, m in enumerate(self.streamed)}
        self._layouts: Dict[nn.Module, BlockLayout] = {}
        self._resident_buffers: Dict[nn.Module, torch.Tensor] = {}
        self._slots: List[torch.Tensor] = []
        self._free: List[int] = []
        self._inflight: Dict[int, Tuple[int, Any]] = {}
        self._prepared = False
        self._hooks: List[Any] = []
        self.stats = StreamStats()

    # -- naming and sizes --------------------------------------------------------------------------------------
    def tag(self, module: nn.Module) -> str:
        if module not in self.tags:
            self.tags[module] = f"{type(module).__name__}@{id(module):x}"
        return self.tags[module]

    def layout(self, module: nn.Module) -> BlockLayout:
        if module not in self._layouts:
            self._layouts[module] = BlockLayout(module, self.tag(module))
        return self._layouts[module]

    @property
    def slot_bytes(self) -> int:
        """Size of one slot: the largest streamed module, in bytes."""
        return max((self.layout(m).nbytes for m in self.streamed), default=0)

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def prepare(self) -> "BlockStreamer":
        """Copy the resident modules to the device and allocate the slots (idempotent)."""
        if self._prepared:
            return self
        try:
            self._prepare()
        except BaseException:
            self.release()  # a failed start must not keep device buffers or the copy worker thread
            raise
        return self

    def _prepare(self) -> None:
        for module in self.resident:
            layout = self.layout(module)
            buffer = self.engine.onload(layout)
            layout.bind(buffer)
            self._resident_buffers[module] = buffer
            self.stats.resident_bytes += layout.nbytes
            self._count(layout)
        if self.streamed:
            size = self.slot_bytes
            self._slots = [self.engine.allocate(size) for _ in range(self.depth + 1)]
            self._free = list(range(len(self._slots)))
            self.stats.slot_bytes = size * len(self._slots)
            self.stats.pinned_bytes += self.engine.reserve(size)
            self.stats.pinned_bytes += self.engine.register_all([self.layout(m) for m in self.streamed])
        self._prepared = True
        logger.info("streamer on %s: %d resident modules (%.2f GB), %d streamed, %d slots of %.3f GB, prefetch %d",
                    self.device, len(self.resident), self.stats.resident_bytes / 1e9, len(self.streamed),
                    len(self._slots), self.slot_bytes / 1e9, self.depth)

    def release(self) -> None:
        """Free every device copy (slots and resident modules), restore the host tensors and end the copy
        engine's worker; also after a failed copy (its error was raised where the copy was waited for)."""
        self.detach()
        try:
            for stream_index in list(self._inflight):
                try:
                    self._drop(stream_index)
                except Exception:  # a failed copy: reported by `enter`, nothing to wait for here
                    logger.debug("dropping a failed copy while releasing", exc_info=True)
            for module in self._resident_buffers:
                self.layout(module).unbind()
            for layout in self._layouts.values():
                if layout.bound:
                    layout.unbind()
            self._resident_buffers.clear()
            self._slots, self._free = [], []
        finally:
            self._inflight.clear()
            self.engine.close()
        self._prepared = False
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        logger.info("streamer on %s released its device memory", self.device)

    def __enter__(self) -> "BlockStreamer":
        return self.prepare()

    def __exit__(self, *exc_info) -> None:
        self.release()

    # -- execution -----------------------------------------------------------------------------------------------
    def __call__(self, module: nn.Module, *args, **kwargs):
        """Run `module(*args, **kwargs)` with its weights on the device (the `joint_forward` executor)."""
        token = self.enter(module)
        try:
            return module(*args, **kwargs)
        finally:
            self.exit(module, token)

    def enter(self, module: nn.Module) -> Optional[int]:
        """Make `module`'s weights present on the device; returns a token for `exit` (None: nothing bound)."""
        self.prepare()
        index = self._index.get(module)
        if index is None:
            return None
        window = self._window(index)
        for stale in [i for i in self._inflight if i not in window]:
            self._drop(stale)
        if index not in self._inflight:
            self._issue(index)
        self._prefetch(window)
        slot_id, ticket = self._inflight.pop(index)
        started = time.perf_counter()
        self.engine.wait(ticket)
        self.stats.wait_s += time.perf_counter() - started
        self.layout(module).bind(self._slots[slot_id])
        return slot_id

    def exit(self, module: nn.Module, token: Optional[int]) -> None:
        """After the module's computation was issued: restore its host tensors, free its slot, prefetch on."""
        if token is None:
            return
        self.layout(module).unbind()
        self.engine.release(token)
        self._free.append(token)
        self._prefetch(self._window(self._index[module])[1:])

    def attach(self) -> "BlockStreamer":
        """Stream through forward hooks instead of the executor call: for modules whose caller cannot pass an
        executor (e.g. the UMT5 encoder's `encoder.block[i]`). `detach()` removes the hooks."""
        self.detach()
        tokens: Dict[nn.Module, Optional[int]] = {}

        def pre(module, _args):
            tokens[module] = self.enter(module)

        def post(module, _args, _out):
            self.exit(module, tokens.pop(module, None))

        for module in self.streamed:
            self._hooks.append(module.register_forward_pre_hook(pre))
            self._hooks.append(module.register_forward_hook(post))
        return self

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _window(self, index: int) -> List[int]:
        count = len(self.streamed)
        return list(dict.fromkeys((index + k) % count for k in range(min(self.depth + 1, count))))

    def _prefetch(self, indices: Sequence[int]) -> None:
        for i in indices:
            if i in self._inflight:
                continue
            if not self._free:
                return
            self._issue(i)

    def _issue(self, index: int) -> None:
        module = self.streamed[index]
        layout = self.layout(module)
        if layout.nbytes > self._slots[0].numel():
            raise RuntimeError(f"{layout.tag} ({layout.nbytes} bytes) does not fit a streaming slot")
        slot_id = self._free.pop(0)
        self._inflight[index] = (slot_id, self.engine.submit(layout, self._slots[slot_id], slot_id))
        self._count(layout)

    def _drop(self, index: int) -> None:
        slot_id, ticket = self._inflight.pop(index)
        self.engine.wait(ticket)
        self.engine.release(slot_id)
        self._free.append(slot_id)

    def _count(self, layout: BlockLayout) -> None:
        self.stats.onloads += 1
        self.stats.bytes_moved += layout.nbytes
        if self.counter is not None:
            self.counter.record(layout.tag, layout.nbytes, "onload", self.device)


def release_on_error(*streamers: BlockStreamer):
    """Context manager: release the streamers' device memory if the body raises (interrupt or error)."""

    class _Guard:
        def __enter__(self_inner):
            return streamers

        def __exit__(self_inner, exc_type, exc, tb):
            if exc_type is not None:
                for streamer in streamers:
                    try:
                        streamer.release()
                    except Exception:  # keep the original error
                        logger.exception("while releasing a streamer after an error")
            return False

    return _Guard()


def streamer_from_plan(plan, video_dit: nn.Module, audio_dit: nn.Module, bridge: Optional[nn.Module],
                       device: torch.device | str, order: Sequence[nn.Module],
                       counter: Optional[MaterializationCounter] = None, expert_name: str = "video_dit",
                       copy_engine: Optional[CopyEngine] = None) -> BlockStreamer:
    """A `BlockStreamer` for the active expert as a `planner.MemoryPlan` decided it.

    order: `denoiser.execution_order(video_dit, audio_dit, bridge, scales)`; expert_name: the expert's
    component name (`video_dit` or `video_dit_2`), used for the counter's tags. Everything outside the blocks and
    conditioners (embeddings, heads, RoPE buffers) is resident; blocks and conditioners follow
    `plan.resident_modules`.
    On CUDA the copy engine pins per the plan (`plan.pin`).
    """
    device = torch.device(device)
    resident = set(plan.resident_modules(video_dit, audio_dit, bridge))
    for tower in (video_dit, audio_dit):
        resident.update(outside_blocks(tower, list(tower.blocks)))
    if bridge is not None:
        conditioners = list(bridge.audio_to_video_conditioners.values()) + list(bridge.video_to_audio_conditioners.values())
        resident.update(outside_blocks(bridge, conditioners))
    if copy_engine is None and device.type == "cuda":
        copy_engine = CudaCopyEngine(device, pin="all" if plan.pin == "all" else "ring")
    tags = module_tags(**{expert_name: video_dit, "audio_dit": audio_dit, "dual_tower_bridge": bridge})
    return BlockStreamer(order, device, prefetch_depth=plan.prefetch_depth, resident=resident,
                         copy_engine=copy_engine, counter=counter, tags=tags)


def outside_blocks(root: nn.Module, blocks: Sequence[nn.Module]) -> List[nn.Module]:
    """The largest submodules of `root` that contain none of `blocks` (to make resident next to streamed blocks).

    Raises if a module that contains blocks also holds tensors of its own (they would belong to no layout).
    """
    block_set = set(blocks)
    inside: Dict[nn.Module, bool] = {}

    def holds_block(module: nn.Module) -> bool:
        if module not in inside:
            inside[module] = module in block_set or any(holds_block(c) for c in module.children())
        return inside[module]

    out: List[nn.Module] = []

    def visit(module: nn.Module) -> None:
        if module in block_set:
            return
        if not holds_block(module):
            out.append(module)
            return
        own = [n for n, t in list(module._parameters.items()) + list(module._buffers.items()) if t is not None]
        if own:
            raise ValueError(f"{type(module).__name__} holds blocks and its own tensors {own}; cannot stream it")
        for child in module.children():
            visit(child)

    visit(root)
    return out


def stack_streamer(root: nn.Module, blocks: Sequence[nn.Module], device: torch.device | str, prefetch_depth: int = 1,
                   copy_engine: Optional[CopyEngine] = None, counter: Optional[MaterializationCounter] = None,
                   tag: str = "text_encoder") -> BlockStreamer:
    """A hook-driven streamer for a module whose forward we do not control (e.g. the UMT5 encoder:
    `stack_streamer(te, te.encoder.block, "cuda")`): the blocks stream in order, everything else is resident.
    Use as `with stack_streamer(...) as s: s.attach(); out = root(...)`; leaving the block releases it all."""
    return BlockStreamer(list(blocks), device, prefetch_depth=prefetch_depth, resident=outside_blocks(root, blocks),
                         copy_engine=copy_engine, counter=counter, tags=module_tags(**{tag: root}))


class StreamingModels:
    """A `sampler.DenoiserModels` that builds components on first use and streams the experts per a plan.

    build(name) -> module (e.g. `MovaCheckpoint.build`, memory-mapped); plan: `planner.MemoryPlan`;
    device: compute device; engine_factory() -> CopyEngine (default: CUDA engine per the plan, or an unpaced
    `ThrottledCopyEngine` on the CPU). Each build is recorded in `counter` as kind "build" (0 bytes), each copy
    to the device as "onload": before the expert boundary nothing is recorded under "video_dit_2".
    `release(name)` frees the expert's streamer (device copies) and drops the module; `finish()` frees all.
    fp8=True quantizes the DiTs and the bridge on first use (fp8 from bf16 files; "convert" events).
    """

    EXPERTS = ("video_dit", "video_dit_2")

    def __init__(self, build, plan, device: torch.device | str, counter: Optional[MaterializationCounter] = None,
                 engine_factory=None, fp8: bool = False) -> None:
        self.build, self.plan, self.device, self.fp8 = build, plan, torch.device(device), fp8
        self.counter = counter if counter is not None else MaterializationCounter()
        self.engine_factory = engine_factory
        self.modules: Dict[str, nn.Module] = {}
        self.streamers: Dict[str, BlockStreamer] = {}

    def module(self, name: str) -> nn.Module:
        if name not in self.modules:
            module = self.build(name)
            self.counter.record(name, 0, "build")
            if self.fp8 and name in FP8_COMPONENTS:
                quantize_module_(module, prefix=name, counter=self.counter)  # no-op on a pre-quantized folder
            self.modules[name] = module
        return self.modules[name]

    def executor(self, name: str) -> Optional[BlockStreamer]:
        if name not in self.EXPERTS:
            return None
        if name not in self.streamers:
            from ..network.denoiser import BridgeScales, execution_order

            expert, audio, bridge = self.module(name), self.module("audio_dit"), self.module("dual_tower_bridge")
            engine = self.engine_factory() if self.engine_factory else None
            if engine is None and self.device.type != "cuda":
                engine = ThrottledCopyEngine()
            order = execution_order(expert, audio, bridge, BridgeScales())
            self.streamers[name] = streamer_from_plan(self.plan, expert, audio, bridge, self.device, order,
                                                      self.counter, expert_name=name, copy_engine=engine).prepare()
        return self.streamers[name]

    def release(self, name: str) -> None:
        streamer = self.streamers.pop(name, None)
        if streamer is not None:
            streamer.release()
        if self.modules.pop(name, None) is not None:
            logger.info("released %s", name)

    def finish(self) -> None:
        for name in list(self.streamers):
            self.release(name)
