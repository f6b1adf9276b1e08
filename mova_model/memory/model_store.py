"""Where a pipeline's modules live: built lazily from the checkpoint, placed per the memory plan.

- `MemoryOptions`: what the user chose (auto from free VRAM / a VRAM budget / all resident; weights as
  stored or fp8; prefetch depth). The planner (`memory.planner`) turns them into a `MemoryPlan`.
- `ComponentCache`: modules of one checkpoint, memory-mapped and built on first use, shared by every
  pipeline view of the checkpoint (LoRA copies included). A module is either *resident* (moved to the compute
  device whole) or *host* (kept in host memory; the block streamer copies blocks to the device ahead of use).
  `materialized` counts builds per component, so tests can check what was never loaded.
- `SamplingModels`: the `sampler.DenoiserModels` view of one sampling run: LoRA patches attached while it
  runs, and, when the plan streams, one `BlockStreamer` per expert as the denoiser's executor.
- `MemoryHost`: what a host application's memory manager offers MOVA (ComfyUI's adapter is
  `nodes/memory_host.py`): the VRAM MOVA may plan with, and room for a phase's planned figure; the host asks
  MOVA's modules back through `ComponentCache.resident_bytes` / `release_for_host`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Protocol

import torch
from torch import nn

from ..checkpoint.folder import MovaCheckpoint
from ..network.lora import LoraPatchSet, clear as clear_lora
from .layout import align_tensors_

logger = logging.getLogger(__name__)

EXPERTS = ("video_dit", "video_dit_2")
STREAMABLE = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")
MEMORY_MODES = ("auto", "budget", "resident")
WEIGHT_MODES = ("as stored", "fp8")


@dataclass(frozen=True)
class MemoryOptions:
    """mode: "auto" (plan against the free VRAM the host reports), "budget" (plan against `vram_budget_gb`),
    "resident" (everything on the device, or a clear error). weights: "as stored" or "fp8" (quantized on
    load). prefetch_depth: blocks copied ahead (None: the planner decides). ram_budget_gb: host RAM to plan
    against (None: what the OS reports available)."""

    mode: str = "auto"
    vram_budget_gb: Optional[float] = None
    ram_budget_gb: Optional[float] = None
    weights: str = "as stored"
    prefetch_depth: Optional[int] = None

    def validate(self) -> None:
        if self.mode not in MEMORY_MODES:
            raise ValueError(f"memory mode must be one of {', '.join(MEMORY_MODES)}, got {self.mode!r}")
        if self.mode == "budget" and not (self.vram_budget_gb and self.vram_budget_gb > 0):
            raise ValueError("memory mode 'budget' needs a VRAM budget in GB greater than 0")
        if self.weights not in WEIGHT_MODES:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_MODES)}, got {self.weights!r}")
        if self.prefetch_depth is not None and self.prefetch_depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {self.prefetch_depth}")


class MemoryHost(Protocol):
    """A host application's memory manager, as MOVA uses it (bytes throughout)."""

    def available_vram(self, device: torch.device) -> float:
        """The VRAM MOVA may plan with on `device`: free now, plus what the host could take back from its other
        models, plus what MOVA's own modules hold. Asks nothing of the host (no model is unloaded)."""
        ...

    def claim(self, device: torch.device, need_bytes: float) -> None:
        """Before a phase runs: make room so MOVA can hold `need_bytes` on `device` (its plan's figure for the
        phase, its resident modules included), unloading the host's other models only as far as that needs,
        and keep MOVA's modules registered so the host can ask them back later."""
        ...


class ComponentCache:
    """Built modules of one checkpoint (see the module docstring)."""

    def __init__(self, checkpoint: MovaCheckpoint, device: torch.device, dtype: torch.dtype, fp8: bool = False) -> None:
        self.checkpoint = checkpoint
        self.device = device
        self.dtype = dtype
        self.fp8 = fp8
        self.modules: Dict[str, nn.Module] = {}
        self.resident: Dict[str, bool] = {}
        self.materialized: Counter = Counter()
        self.host_handle: Optional[object] = None
        """The host's record of this cache (ComfyUI: its model-management entry), kept alive with the cache."""

    def verify_files(self, components=None) -> None:
        """Before a run: drop every module built from weight files that changed on disk since they were checked
        (its memory-mapped pages may be gone: touching them would kill the process with SIGBUS), then re-validate
        those files; raises the loader's `CheckpointError` when they are no longer usable."""
        for name in self.checkpoint.changed_components(components):
            self.release(name)
        self.checkpoint.recheck(components)

    def get(self, name: str, dtype: Optional[torch.dtype] = None, resident: bool = True) -> nn.Module:
        """The module, built if needed. `resident=False` keeps it in host memory (for the block streamer).
        A module whose files changed on disk since it was built is dropped and its files checked again."""
        resident = resident or self.device.type == "cpu"
        self.verify_files([name])
        if name in self.modules and self.resident[name] != resident:
            self.release(name)
        if name not in self.modules:
            module = self.checkpoint.build(name, dtype=dtype)
            if self.fp8 and name in STREAMABLE:
                from .fp8 import quantize_module_

                count = quantize_module_(module, prefix=name)
                logger.info("fp8: quantized %d matrices of %s", count, name)
            if resident and self.device.type != "cpu":
                module = module.to(self.device)
            elif self.device.type == "cpu":
                copied = align_tensors_(module)
                if copied:
                    logger.info("%s: copied %.1f MB of weights that the file leaves misaligned for CPU compute",
                                name, copied / 1e6)
            module.eval()
            self.modules[name] = module
            self.resident[name] = resident
            self.materialized[name] += 1
            logger.info("built %s (%s)", name, "on " + str(self.device) if resident else "in host memory, streamed")
        return self.modules[name]

    def release(self, name: str) -> None:
        self.resident.pop(name, None)
        if self.modules.pop(name, None) is not None:
            logger.info("released %s", name)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def release_all(self) -> None:
        for name in list(self.modules):
            self.release(name)

    def module_bytes(self, name: str) -> int:
        """Bytes of the parameters and buffers of built module `name` (0 when not built)."""
        module = self.modules.get(name)
        if module is None:
            return 0
        tensors = {t.data_ptr(): t for t in list(module.parameters()) + list(module.buffers()) if t.numel()}
        return int(sum(t.numel() * t.element_size() for t in tensors.values()))

    def resident_bytes(self) -> int:
        """Bytes of the modules held whole on the compute device (on the CPU: every built module)."""
        return sum(self.module_bytes(name) for name in self.modules
                   if self.resident.get(name) or self.device.type == "cpu")

    def release_for_host(self, nbytes: Optional[float] = None) -> int:
        """The host wants memory back: release resident modules, largest first, until at least `nbytes` are
        freed (None: every built module, resident or streamed). Returns the bytes of the resident modules
        released. A released module is built again, from its memory-mapped files, when next used."""
        order = sorted((name for name in self.modules if self.resident.get(name) or self.device.type == "cpu"),
                       key=self.module_bytes, reverse=True)
        freed, names = 0, []
        for name in order:
            if nbytes is not None and freed >= nbytes:
                break
            freed += self.module_bytes(name)
            names.append(name)
            self.release(name)
        if nbytes is None:
            names += list(self.modules)
            self.release_all()
        if names:
            logger.info("the host asked for memory back: released %s (%.1f MB on %s)", ", ".join(names), freed / 1e6,
                        self.device)
        return freed

    def keep_only(self, names) -> None:
        """Release every built module not in `names`: called as a phase starts (text encode, VAE encode, denoise,
        VAE decode, audio decode), so the device holds what that phase uses, as its memory plan counts."""
        for name in [n for n in self.modules if n not in set(names)]:
            self.release(name)


class SamplingModels:
    """`sampler.DenoiserModels` for one run: cache access, LoRA patches, and block streaming per the plan."""

    def __init__(self, cache: ComponentCache, patches: LoraPatchSet, plan=None) -> None:
        self.cache = cache
        self.patches = patches
        self.plan = plan if plan is not None and getattr(plan, "mode", "") == "streamed" else None
        self.patched: Dict[str, nn.Module] = {}
        self.streamers: Dict[str, object] = {}

    def module(self, name: str) -> nn.Module:
        module = self.cache.get(name, resident=self.plan is None or name not in STREAMABLE)
        if name not in self.patched:
            clear_lora(module)
            if self.patches:
                count = self.patches.apply(name, module)
                logger.info("LoRA: %d layers of %s patched", count, name)
            self.patched[name] = module
        return module

    def executor(self, name: str) -> Optional[Callable]:
        if self.plan is None or name not in EXPERTS:
            return None
        if name not in self.streamers:
            from ..network.denoiser import BridgeScales, execution_order
            from .streaming import streamer_from_plan

            expert, audio, bridge = self.module(name), self.module("audio_dit"), self.module("dual_tower_bridge")
            order = execution_order(expert, audio, bridge, BridgeScales())
            self.streamers[name] = streamer_from_plan(self.plan, expert, audio, bridge, self.cache.device, order,
                                                      expert_name=name).prepare()
        return self.streamers[name]

    def release(self, name: str) -> None:
        streamer = self.streamers.pop(name, None)
        if streamer is not None:
            streamer.release()
        module = self.patched.pop(name, None)
        if module is not None:
            clear_lora(module)
        self.cache.release(name)

    def finish(self) -> None:
        """End of a run: streamers and LoRA patches released, and the video expert dropped. The next run starts
        with the high-noise expert, and keeping the low-noise one until then would put two experts' weights on
        the device while that one is built (the plan counts one expert at a time)."""
        for name in list(self.streamers):
            self.streamers.pop(name).release()
        for module in self.patched.values():
            clear_lora(module)
        self.patched.clear()
        for name in EXPERTS:
            self.cache.release(name)
