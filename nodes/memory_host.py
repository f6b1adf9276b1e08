"""MOVA's memory, seen and managed by ComfyUI's model management (`comfy.model_management`), both ways.

ComfyUI knows a model's device memory through a `LoadedModel` entry in `current_loaded_models`, made by
`load_models_gpu([patcher])`; "Unload models", `POST /free` and `unload_all_models()` go through
`free_memory`, which calls the entry's `model_unload` -> the patcher's `partially_unload` / `detach`, and
every other model's loading frees room the same way. MOVA places and streams its modules itself (its memory
plan), so it registers a `MovaModules` object that answers those calls from the pipeline's
`ComponentCache`: its size is what MOVA holds on the device now, a partial unload releases the largest
resident modules first, a full one releases every module (they are rebuilt from the memory-mapped files on
next use).

The other way, `ComfyMemoryHost` is the pipeline's `memory_host` (`mova_model.memory.model_store.MemoryHost`):
plans are made against the VRAM MOVA could have (free, plus what ComfyUI's other models hold, plus MOVA's own
modules) without unloading anything, and each phase then claims its planned figure with `load_models_gpu`,
which unloads other models only as far as that figure needs and (re)registers MOVA.
"""
from __future__ import annotations

import logging
import weakref
from typing import Optional

import torch

from ..mova_model.memory.model_store import ComponentCache

logger = logging.getLogger(__name__)


def _concrete(device: torch.device) -> torch.device:
    """cuda -> cuda:N (ComfyUI compares devices with ==, and its own device always has an index)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class MovaModules:
    """The built modules of one MOVA checkpoint, as a ComfyUI `ModelPatcher` looks to model management.

    Implements what `LoadedModel`, `load_models_gpu` and `free_memory` call (ComfyUI 0.3.75). Holds the cache
    weakly (the cache holds this object: `ComponentCache.host_handle`), so it lives exactly as long as the
    MOVA_MODEL does."""

    def __init__(self, cache: ComponentCache, device: torch.device) -> None:
        self._cache = weakref.ref(cache)
        self.load_device = _concrete(device)
        self.offload_device = torch.device("cpu")
        self.parent = None

    @property
    def model(self) -> Optional[ComponentCache]:
        """What `LoadedModel` weakly refers to as the real model (its end removes ComfyUI's entry)."""
        return self._cache()

    # sizes: what MOVA holds on the device now; nothing is ever "offloaded" in ComfyUI's sense
    def loaded_size(self) -> int:
        cache = self._cache()
        return cache.resident_bytes() if cache is not None else 0

    def model_size(self) -> int:
        return self.loaded_size()

    def get_ram_usage(self) -> int:
        return self.loaded_size()

    def current_loaded_device(self) -> torch.device:
        return self.load_device

    def model_dtype(self):
        cache = self._cache()
        return cache.dtype if cache is not None else None

    def lowvram_patch_counter(self) -> int:
        return 0

    def model_patches_to(self, device) -> None:
        """MOVA's LoRA patches live in its own modules: nothing to move."""

    def model_patches_models(self) -> list:
        return []

    def is_clone(self, other) -> bool:
        return other is self

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False) -> int:
        """MOVA builds its modules itself, per its memory plan, when a phase needs them: nothing loaded here."""
        return 0

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False) -> int:
        """ComfyUI needs `memory_to_free` bytes: release MOVA's largest resident modules until that is freed."""
        cache = self._cache()
        freed = cache.release_for_host(float(memory_to_free)) if cache is not None else 0
        if freed:
            logger.info("MOVA: ComfyUI needed %.1f MB of %s: released %.1f MB of MOVA's modules",
                        memory_to_free / 1e6, self.load_device, freed / 1e6)
        return freed

    def detach(self, unpatch_all: bool = True):
        """unpatch_all: ComfyUI unloads the model (unload_all_models, /free): release every MOVA module."""
        cache = self._cache()
        if unpatch_all and cache is not None:
            held = cache.resident_bytes()
            cache.release_for_host(None)
            logger.info("MOVA: unloaded by ComfyUI (%.1f MB released on %s)", held / 1e6, self.load_device)
        return cache


class ComfyMemoryHost:
    """`MemoryHost` of a pipeline inside ComfyUI (see the module docstring)."""

    def __init__(self, cache: ComponentCache, device: torch.device) -> None:
        if not isinstance(cache.host_handle, MovaModules):
            cache.host_handle = MovaModules(cache, device)
        self.modules: MovaModules = cache.host_handle

    def available_vram(self, device: torch.device) -> float:
        import comfy.model_management as mm

        device = _concrete(device)
        others = 0.0
        for loaded in list(mm.current_loaded_models):
            patcher = loaded.model
            if loaded.device == device and patcher is not None and patcher is not self.modules:
                others += float(loaded.model_loaded_memory())
        own = float(self.modules.loaded_size())
        return max(0.0, float(mm.get_free_memory(device)) + others + own - float(mm.extra_reserved_memory()))

    def claim(self, device: torch.device, need_bytes: float) -> None:
        import comfy.model_management as mm

        extra = max(0.0, float(need_bytes) - self.modules.loaded_size())
        mm.load_models_gpu([self.modules], memory_required=extra)


def attach_memory_host(pipeline) -> None:
    """Make the pipeline's modules visible to ComfyUI and its plans ask ComfyUI for room (the Loader's call)."""
    pipeline.memory_host = ComfyMemoryHost(pipeline.cache, pipeline.device)
