"""The frozen DiTs of a training run, built through the sampling `ComponentCache`, with the trainable LoRA
attached, and the executor each step runs its blocks through.

- Base weights stay frozen in the storage chosen (`as stored`, `fp32`, `bf16`, or `fp8` = the existing e4m3fn
  per-tensor storage of `memory.fp8`, computed in bf16); the LoRA and the optimizer state stay fp32.
- Only the experts being trained are built (`experts="high"` never materializes `video_dit_2`).
- Gradient checkpointing per block (`step.checkpointed`): each DiT block and bridge conditioner keeps only
  its input and is recomputed in the backward pass.
- With a VRAM budget on a GPU the blocks are streamed by the existing `BlockStreamer` (`training_streamers`),
  in the forward pass and again in the backward recompute.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional

import torch
from torch import nn

from ..checkpoint.folder import MovaCheckpoint
from ..memory.model_store import ComponentCache
from .step import EncodedClip, StepDraw, StepOptions, StepResult, checkpointed, compute_step
from .timesteps import TrainingTimesteps
from .trainable_lora import TrainableLora

logger = logging.getLogger(__name__)

STORAGE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": torch.bfloat16}


def training_plan(checkpoint: MovaCheckpoint, vram_bytes: float, clip_size: tuple, weights: str = "as stored",
                  experts: str = "both", gradient_checkpointing: bool = True, prefetch_depth: int = 1,
                  ram_bytes: Optional[float] = None, rank: int = 16, targets: str = "official", mode: str = "budget"):
    """The `TrainingPlan` of a step of this checkpoint at `clip_size` = (width, height, frames, fps) against
    `vram_bytes` (`python -m mova_model plan --train` for this checkpoint). Host RAM: `ram_bytes`, else what the OS
    reports available. mode "resident" keeps every block on the device (or reports that it does not fit)."""
    from ..memory.planner import available_ram_bytes
    from ..memory.quantize import stored_format
    from ..memory.sizes import Architecture, PlanInputs
    from ..memory.training_plan import plan_training

    width, height, frames, fps = clip_size
    ram = ram_bytes if ram_bytes is not None else (available_ram_bytes() or float("inf"))
    stored = stored_format(checkpoint.root)
    inputs = PlanInputs(vram_bytes=max(float(vram_bytes), 1.0), ram_bytes=max(float(ram), 1.0), width=width,
                        height=height, frames=frames, fps=fps, cfg_passes=1,
                        weights="fp8" if weights == "fp8" or stored == "fp8" else "bf16", stored=stored,
                        mode="resident" if mode == "resident" else "budget")
    plan = plan_training(inputs, Architecture.from_configs(checkpoint.configs), rank=rank, experts=experts,
                         targets=targets if targets in ("official", "attention") else "official",
                         prefetch_depth=prefetch_depth, gradient_checkpointing=gradient_checkpointing)
    logger.info("training plan:\n%s", plan.format())
    return plan


class TrainingModels:
    """Lazily built DiTs + the attached LoRA. `step(expert, clip, draw, ...)` runs one loss evaluation."""

    def __init__(self, checkpoint: MovaCheckpoint, device: str | torch.device = "cpu", weights: str = "as stored",
                 gradient_checkpointing: bool = True, vram_budget_gb: Optional[float] = None,
                 stream: Optional[bool] = None, prefetch_depth: int = 1, copy_engine_factory=None,
                 compute_dtype: Optional[torch.dtype] = None, clip_size: Optional[tuple] = None,
                 experts: str = "both", plan=None) -> None:
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.weights = weights
        self.dtype = STORAGE_DTYPES.get(weights)
        self.cache = ComponentCache(checkpoint, self.device, self.dtype or torch.float32, fp8=weights == "fp8")
        self.gradient_checkpointing = gradient_checkpointing
        if plan is None and stream is None and vram_budget_gb is not None and clip_size is not None:
            plan = training_plan(checkpoint, vram_budget_gb * 1e9, clip_size, weights, experts, gradient_checkpointing,
                                 prefetch_depth)
        self.plan = plan
        """The `memory.training_plan.TrainingPlan` this run follows (None: no device plan, everything resident)."""
        if stream is None:
            stream = plan is not None and plan.mode == "streamed"
        self.stream = stream
        self.prefetch_depth = int(prefetch_depth)
        self.copy_engine_factory = copy_engine_factory
        self.compute_dtype = compute_dtype  # None: that of the stored expert weights (bf16 for bf16/fp8)
        self.lora: Optional[TrainableLora] = None
        self.built: Dict[str, nn.Module] = {}
        self.streamers: Dict[str, object] = {}

    def attach(self, lora: TrainableLora) -> None:
        self.lora = lora

    def streamed(self) -> bool:
        """Blocks streamed (always with per-block checkpointing): when the training plan says so (a VRAM budget
        the blocks do not fit all at once; on the CPU the `ThrottledCopyEngine` simulates the device), or when
        asked (`stream=True`)."""
        return bool(self.stream)

    def copy_engines(self):
        """(forward, backward) copy engines; None lets the streamer choose (CUDA engine on a GPU)."""
        if self.copy_engine_factory is None:
            return None, None
        return self.copy_engine_factory(), self.copy_engine_factory()

    def module(self, name: str) -> nn.Module:
        if name not in self.built:
            module = self.cache.get(name, dtype=self.dtype, resident=not self.streamed())
            module.requires_grad_(False)
            if self.lora is not None:
                count = self.lora.attach(name, module)
                logger.info("training LoRA on %d layers of %s", count, name)
            self.built[name] = module
        return self.built[name]

    def executor(self, expert: str):
        if self.streamed():  # streaming implies per-block checkpointing (`StreamedBlock`)
            if expert not in self.streamers:
                from .streaming import training_streamer

                for other in list(self.streamers):  # one expert's streamer at a time (they share the stems)
                    self.streamers.pop(other).release()
                self.streamers[expert] = training_streamer(self, expert)
            return self.streamers[expert]
        return checkpointed(None) if self.gradient_checkpointing else None

    def step(self, expert: str, clip: EncodedClip, draw: StepDraw, timesteps: TrainingTimesteps,
             options: StepOptions, grad: bool = True) -> StepResult:
        """One loss evaluation on `clip` with the `expert` (`video_dit` / `video_dit_2`)."""
        video, audio, bridge = self.module(expert), self.module("audio_dit"), self.module("dual_tower_bridge")
        with torch.set_grad_enabled(grad):
            return compute_step(video, audio, bridge, clip, draw, timesteps, options,
                                executor=self.executor(expert), dtype=self.compute_dtype, device=self.device)

    def release(self) -> None:
        for streamer in self.streamers.values():
            streamer.release()  # type: ignore[attr-defined]
        self.streamers.clear()
        for name, module in self.built.items():
            if self.lora is not None:
                self.lora.detach_from(module)
        self.built.clear()
        self.cache.release_all()
