"""One training step of MOVA: draw (timestep, noises), noise both streams, run the joint denoiser with LoRA
and return the flow-matching losses.

Mirrors `MOVATrain.training_step` (`mova/diffusion/pipelines/mova_train.py`) from its step 5 on (steps 1–4,
the frozen encoders, are `encoding.encode_clip`, cached): random-number order after the seed is
`rand(1)` for the timestep index, then `randn` of the video latents' shape, then of the audio latents';
the same timestep for both towers; `noisy = (1 − σ)·x + σ·ε`; target `ε − x`;
`loss = mse(video_pred, target_v) + mse(audio_pred, target_a)`. Beyond the official: per-stream loss
weights (default 1, 1), logit-normal timestep sampling and caption dropout (each drawn after the noises so
the defaults keep the official order). The official forward casts activations to bf16 unconditionally; here
the compute dtype is that of the frozen expert's weights (bf16 for bf16/fp8 storage, fp32 for fp32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..network.denoiser import BridgeScales, Executor, joint_forward_with_grad
from .timesteps import TrainingTimesteps


@dataclass
class EncodedClip:
    """A clip as the DiTs see it (all float32, batch 1).

    context [1, 512, d_text]; video_latents [1, z, T', h, w] (normalized mode); condition [1, 4 + z, T', h, w]
    (first-frame mask + normalized first-frame clip latents); audio_latents [1, C_a, L] (DAC mode);
    empty_context: the embedding of "" for caption dropout (None when not cached).
    """

    context: torch.Tensor
    video_latents: torch.Tensor
    condition: torch.Tensor
    audio_latents: torch.Tensor
    video_fps: float
    empty_context: Optional[torch.Tensor] = None
    name: str = ""

    def to(self, device: torch.device | str) -> "EncodedClip":
        move = (lambda t: None if t is None else t.to(device))
        return EncodedClip(move(self.context), move(self.video_latents), move(self.condition),
                           move(self.audio_latents), self.video_fps, move(self.empty_context), self.name)


@dataclass(frozen=True)
class StepOptions:
    """Beyond-official options. loss_weights: (video, audio); timestep_sampling: "uniform" | "logit_normal";
    caption_dropout: probability of training on the empty caption instead."""

    loss_weights: Tuple[float, float] = (1.0, 1.0)
    timestep_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    caption_dropout: float = 0.0


@dataclass
class StepDraw:
    """The random part of a step: index [1] int64, timestep [1] float32, noises shaped like the latents."""

    expert: str
    timestep_id: torch.Tensor
    timestep: torch.Tensor
    video_noise: torch.Tensor
    audio_noise: torch.Tensor
    drop_caption: bool = False


@dataclass
class StepResult:
    noisy_video: torch.Tensor
    noisy_audio: torch.Tensor
    video_pred: torch.Tensor
    audio_pred: torch.Tensor
    video_loss: torch.Tensor
    audio_loss: torch.Tensor
    loss: torch.Tensor


def draw_step(timesteps: TrainingTimesteps, clip: EncodedClip, expert: str,
              generator: Optional[torch.Generator] = None, options: StepOptions = StepOptions()) -> StepDraw:
    """Draw in the official order: timestep index, video noise, audio noise (then the caption-dropout coin)."""
    index = timesteps.draw_index(expert, generator, options.timestep_sampling, options.logit_mean, options.logit_std)
    video_noise = torch.randn(clip.video_latents.shape, generator=generator, dtype=torch.float32)
    audio_noise = torch.randn(clip.audio_latents.shape, generator=generator, dtype=torch.float32)
    drop = False
    if options.caption_dropout > 0:
        drop = bool(torch.rand(1, generator=generator).item() < options.caption_dropout)
    return StepDraw(expert, index, timesteps.timestep(index), video_noise, audio_noise, drop)


def checkpointed(executor: Optional[Executor] = None) -> Executor:
    """An executor that recomputes each block in the backward pass (gradient checkpointing per block).

    Wraps `executor` (e.g. a `BlockStreamer`), so a streamed block is streamed in again for its recompute.
    """
    inner = executor or (lambda module, *args: module(*args))

    def run(module: nn.Module, *args) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return inner(module, *args)
        return checkpoint(inner, module, *args, use_reentrant=False)

    return run


def compute_step(expert_dit: nn.Module, audio_dit: nn.Module, bridge: Optional[nn.Module], clip: EncodedClip,
                 draw: StepDraw, timesteps: TrainingTimesteps, options: StepOptions = StepOptions(),
                 executor: Optional[Executor] = None, dtype: Optional[torch.dtype] = None,
                 device: Optional[torch.device] = None) -> StepResult:
    """Noise, predict and score one clip. Shapes as `EncodedClip`; the losses are 0-d float32 tensors.

    Gradients flow to whatever requires grad (the attached LoRA parameters); call `.backward()` on `loss`.
    """
    device = device or clip.video_latents.device
    x_v, x_a = clip.video_latents.to(device), clip.audio_latents.to(device)
    eps_v, eps_a = draw.video_noise.to(device), draw.audio_noise.to(device)
    timestep = draw.timestep.to(device)
    noisy_video = timesteps.add_noise(x_v, eps_v, draw.timestep)
    noisy_audio = timesteps.add_noise(x_a, eps_a, draw.timestep)
    context = clip.empty_context if (draw.drop_caption and clip.empty_context is not None) else clip.context
    video_input = torch.cat([noisy_video, clip.condition.to(device=device, dtype=noisy_video.dtype)], dim=1)
    video_pred, audio_pred = joint_forward_with_grad(
        expert_dit, audio_dit, bridge, video_input, noisy_audio, context.to(device), timestep, timestep,
        float(clip.video_fps), scales=BridgeScales(), executor=executor, dtype=dtype)
    video_loss = F.mse_loss(video_pred.float(), eps_v - x_v)
    audio_loss = F.mse_loss(audio_pred.float(), eps_a - x_a)
    w_v, w_a = options.loss_weights
    loss = video_loss + audio_loss if (w_v, w_a) == (1.0, 1.0) else w_v * video_loss + w_a * audio_loss
    return StepResult(noisy_video, noisy_audio, video_pred, audio_pred, video_loss, audio_loss, loss)
