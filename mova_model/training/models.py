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


class TrainingModels:
    """Lazily built DiTs + the attached LoRA. `step(expert, clip, draw, ...)` runs one loss evaluation."""

    def __init__(self, checkpoint: MovaCheckpoint, device: str | torch.device = "cpu", weights: str = "as stored",
                 gradient_checkpointing: bool = True, vram_budget_gb: Optional[float] = None,
                 stream: Optional[bool] = None, prefetch_depth: int = 1, copy_engine_factory=None,
                 compute_dtype: Optional[torch.dtype] = None, clip_size: Optional[tuple] = None,
                 experts: str = "both") -> None:
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.weights = weights
        self.dtype = STORAGE_DTYPES.get(weights)
        self.cache = ComponentCache(checkpoint, self.device, self.dtype or torch.float32, fp8=weights == "fp8")
        self.gradient_checkpointing = gradient_checkpointing
        self.vram_budget_gb = vram_budget_gb
        if stream is None:
            stream = vram_budget_gb is not None and self.device.type == "cuda" and not self._fits_resident(clip_size, experts)
        self.stream = stream
        self.prefetch_depth = int(prefetch_depth)
        self.copy_engine_factory = copy_engine_factory
        self.compute_dtype = compute_dtype  # None: that of the stored expert weights (bf16 for bf16/fp8)
        self.lora: Optional[TrainableLora] = None
        self.built: Dict[str, nn.Module] = {}
        self.streamers: Dict[str, object] = {}

    def attach(self, lora: TrainableLora) -> None:
        self.lora = lora

    def _fits_resident(self, clip_size: Optional[tuple], experts: str) -> bool:
        """Whether the training plan puts every block of the step on the device within the VRAM budget.

        clip_size: (width, height, frames, fps); without it the blocks are streamed."""
        if clip_size is None:
            return False
        from ..memory.sizes import GB, Architecture, PlanInputs, execution_modules
        from ..memory.training_plan import plan_training

        width, height, frames, fps = clip_size
        inputs = PlanInputs(vram_bytes=self.vram_budget_gb * GB, ram_bytes=1e15, width=width, height=height,
                            frames=frames, fps=fps, cfg_passes=1, weights="fp8" if self.weights == "fp8" else "bf16",
                            mode="budget")
        arch = Architecture.from_configs(self.checkpoint.configs)
        plan = plan_training(inputs, arch, experts=experts)
        blocks = sum(m.nbytes for m in execution_modules(arch, inputs))
        resident_peak = plan.vram_peak - plan.vram["stream slots (2 passes)"] + blocks
        logger.info("training plan: all blocks resident needs %.2f GB of the %.2f GB budget",
                    resident_peak / GB, self.vram_budget_gb)
        return resident_peak <= inputs.vram_bytes

    def streamed(self) -> bool:
        """Blocks streamed (always with per-block checkpointing): with a VRAM budget on a GPU, or when asked
        (`stream=True`, e.g. on the CPU with the `ThrottledCopyEngine` simulation)."""
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
