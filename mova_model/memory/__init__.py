"""Every memory decision of the MOVA pack, in one place.

- `planner`: from free VRAM, a host-RAM budget, the checkpoint's configs, dtype, resolution, frames and CFG
  passes, decide what stays resident, what streams, the prefetch depth, text-encoder placement and VAE tiling,
  and predict peak VRAM, host RAM, bytes moved and step-time overhead (`plan_memory` -> `MemoryPlan`).
- `streaming`: `BlockStreamer`, the executor `denoiser.joint_forward` calls for every DiT block and bridge
  conditioner; copies weights ahead of use (`CudaCopyEngine`, or `ThrottledCopyEngine` on the CPU) and counts
  every materialization (`MaterializationCounter`).
- `fp8`: e4m3fn storage with one scale per tensor; `quantize`: `python -m mova_model quantize SRC DST`.

The nodes pass budgets in and show the plan; nothing else in the pack decides residency.
"""

from .fp8 import dequantize_tensor, quantize_module_, quantize_tensor
from .planner import Architecture, MemoryPlan, PlanInputs, plan_cli, plan_memory
from .quantize import quantize_checkpoint, quantize_cli
from .streaming import (BlockStreamer, CudaCopyEngine, MaterializationCounter, ThrottledCopyEngine,
                                         module_tags, release_on_error, streamer_from_plan)

__all__ = [
    "Architecture", "BlockStreamer", "CudaCopyEngine", "MaterializationCounter", "MemoryPlan", "PlanInputs",
    "ThrottledCopyEngine", "dequantize_tensor", "module_tags", "plan_cli", "plan_memory", "quantize_checkpoint",
    "quantize_cli", "quantize_module_", "quantize_tensor", "release_on_error", "streamer_from_plan",
]
