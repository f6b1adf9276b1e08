"""Speed options of a sampling run (chosen in the MOVA Loader) and the context that applies them.

Every option is off by default and the default run is the plain one: SDPA attention, eager blocks, one joint
pass per guidance branch, fp8 weights dequantized before each matmul.

* `attention`: "sdpa" | "flash" | "sage" | "auto" (`network/attention.py`).
* `compile_blocks`: `torch.compile` of the video/audio blocks and bridge conditioners (`network/compiled_blocks.py`).
* `batch_guidance`: "off" | "auto" | "on" — the guidance branches of a step in one batch
  (`branch_runner.py`). "auto": on a GPU when the memory plan with the batched activations fits; on the CPU
  per `BATCH_GUIDANCE_ON_CPU` (measured by `bench/speed.py`). "on": whenever the plan allows it.
* `fp8_matmul`: `torch._scaled_mm` for fp8 weights on GPUs of compute capability ≥ 8.9 (`network/fp8_matmul.py`).

The step cache is not here: it is a per-generation choice (the MOVA Step Cache node feeds the sampler).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import nn

from ..network.attention import ATTENTION_BACKENDS, resolve_backend, use_attention_backend
from ..network.compiled_blocks import CompileTimer, compile_blocks, uncompile_blocks
from ..network.fp8_matmul import use_fp8_matmul

logger = logging.getLogger(__name__)

BATCH_GUIDANCE_MODES = ("off", "auto", "on")
BATCH_GUIDANCE_ON_CPU = False
"""`auto` on the CPU: separate passes. bench/speed.py on the 2-core CPU box measured batched guidance at 1.05x
(110.5 s vs 115.7 s per 2-pass step, within the noise of that shared machine) for twice the activation memory;
see README "Speed options"."""
COMPILED_COMPONENTS = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")


@dataclass(frozen=True)
class SpeedOptions:
    """What the user chose in the Loader (see the module docstring)."""

    attention: str = "sdpa"
    compile_blocks: bool = False
    batch_guidance: str = "off"
    fp8_matmul: bool = False

    def validate(self) -> None:
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_BACKENDS)}, got {self.attention!r}")
        if self.batch_guidance not in BATCH_GUIDANCE_MODES:
            raise ValueError(f"batch_guidance must be one of {', '.join(BATCH_GUIDANCE_MODES)}, got {self.batch_guidance!r}")

    def check_device(self, device: torch.device | str) -> str:
        """The concrete attention backend on `device`; raises `AttentionBackendError` (package / device) early."""
        self.validate()
        return resolve_backend(self.attention, device)


def choose_batch_guidance(choice: str, device: torch.device | str, passes: int,
                          plan_for: Optional[Callable[[int], object]] = None) -> Tuple[bool, str]:
    """(batch the guidance branches?, why). plan_for(guidance_batch) -> a `MemoryPlan` (or None: no plan applies).

    "off" or a single pass: never. CPU: "on" batches, "auto" follows `BATCH_GUIDANCE_ON_CPU`. GPU: batches when
    the plan with `passes` rows per pass fits ("on" and "auto" alike; a plan that does not fit falls back to
    separate passes instead of failing).
    """
    if choice == "off" or passes < 2:
        return False, "off" if choice == "off" else "one pass per step"
    device = torch.device(device)
    if device.type != "cuda":
        if choice == "on" or BATCH_GUIDANCE_ON_CPU:
            return True, f"{passes} branches in one batch"
        return False, "auto: separate passes on the CPU (measured faster or equal; bench/speed.py)"
    plan = plan_for(passes) if plan_for is not None else None
    if plan is not None and not getattr(plan, "fits", True):
        return False, f"the memory plan with {passes} batched branches does not fit; separate passes"
    return True, f"{passes} branches in one batch" + (" (memory plan fits)" if plan is not None else "")


class CompilingModels:
    """A `sampler.DenoiserModels` wrapper that compiles the blocks of every DiT component it hands out."""

    def __init__(self, models, timer: CompileTimer) -> None:
        self.models = models
        self.timer = timer
        self.compiled: Dict[str, nn.Module] = {}

    def module(self, name: str) -> nn.Module:
        module = self.models.module(name)
        if name in COMPILED_COMPONENTS and self.compiled.get(name) is not module:
            count = compile_blocks([module], self.timer)
            if count:
                logger.info("torch.compile: %d blocks of %s set up (compiled on first use)", count, name)
            self.compiled[name] = module
        return module

    def release(self, name: str) -> None:
        module = self.compiled.pop(name, None)
        if module is not None:
            uncompile_blocks([module])
        self.models.release(name)

    def executor(self, name: str):
        return self.models.executor(name)

    def finish(self) -> None:
        """Return every compiled module to eager (cached modules are shared with later runs)."""
        uncompile_blocks(list(self.compiled.values()))
        self.compiled.clear()


@dataclass
class SpeedRun:
    """What one run applied: concrete attention backend, fp8 matmul on/off, compile timer."""

    attention: str = "sdpa"
    fp8_matmul: bool = False
    timer: CompileTimer = field(default_factory=CompileTimer)
    compiling: Optional[CompilingModels] = None

    def models(self, models):
        """The models the sampler should use (compiling wrapper when compile_blocks is on)."""
        return self.compiling or models


@contextlib.contextmanager
def speed_run(options: SpeedOptions, device: torch.device | str, models) -> Iterator[SpeedRun]:
    """Apply `options` for one sampling run on `device` (attention backend, fp8 matmul, compiled blocks)."""
    options.validate()
    run = SpeedRun()
    with use_attention_backend(options.attention, device) as backend, \
            use_fp8_matmul(options.fp8_matmul, device) as fp8_on:
        run.attention, run.fp8_matmul = backend, fp8_on
        if options.compile_blocks:
            run.compiling = CompilingModels(models, run.timer)
        try:
            yield run
        finally:
            if run.compiling is not None:
                run.compiling.finish()
                logger.info("torch.compile: %d compilation(s), %.1f s in this run", run.timer.compiles,
                            run.timer.total_s)
