"""Training timesteps of MOVA: the 1000-entry table, the expert index ranges and the timestep draw.

Mirrors `MOVATrain.training_step` + `_sample_timestep_id` + `compute_density_for_timestep_sampling`
(`mova/diffusion/pipelines/mova_train.py`):
- the table is the scheduler's `set_timesteps(1000, training=True)`, here `FlowMatchPairScheduler.train_timesteps`;
- the expert boundary as an index fraction `b = #(table >= boundary_ratio·1000) / 1000`;
- high-noise expert (`video_dit`, even global steps): u in [0, b); low-noise (`video_dit_2`, odd): [b, 1);
- uniform: `u = lo + rand(1)·(hi − lo)` (float32), index `floor(u·1000)`, clamped into `[int(lo·1000), int(hi·1000) − 1]`;
- the same timestep for both towers; noising `(1 − σ)·x + σ·ε` with σ looked up by nearest table entry.
Logit-normal sampling is an option beyond the official default (the official trainer hard-codes uniform).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..sampling.scheduler import FlowMatchPairScheduler

HIGH_NOISE_EXPERT = "video_dit"
LOW_NOISE_EXPERT = "video_dit_2"


def expert_for_step(global_step: int, experts: str = "both") -> str:
    """The video expert trained at micro-step `global_step`: `both` alternates as the official (even: high)."""
    if experts == "high":
        return HIGH_NOISE_EXPERT
    if experts == "low":
        return LOW_NOISE_EXPERT
    if experts != "both":
        raise ValueError(f"experts must be 'high', 'low' or 'both', got {experts!r}")
    return HIGH_NOISE_EXPERT if global_step % 2 == 0 else LOW_NOISE_EXPERT


@dataclass
class TrainingTimesteps:
    """The training table and the expert boundary. timesteps, sigmas: [N] float32 (0..1000 and 0..1)."""

    timesteps: torch.Tensor
    sigmas: torch.Tensor
    boundary_ratio: float

    @classmethod
    def from_scheduler(cls, scheduler: FlowMatchPairScheduler, boundary_ratio: float) -> "TrainingTimesteps":
        return cls(scheduler.train_timesteps, scheduler.train_sigmas, float(boundary_ratio))

    @property
    def count(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def boundary_fraction(self) -> float:
        """Fraction of table entries at or above the boundary timestep (official `boundary`)."""
        return (self.timesteps >= self.boundary_ratio * self.count).sum().item() / self.count

    def index_range(self, expert: str) -> Tuple[float, float]:
        """(lo, hi) fractions of the table the expert trains on."""
        b = self.boundary_fraction
        if expert == HIGH_NOISE_EXPERT:
            return 0.0, b
        if expert == LOW_NOISE_EXPERT:
            return b, 1.0
        raise ValueError(f"unknown video expert {expert!r}")

    def draw_index(self, expert: str, generator: Optional[torch.Generator] = None, sampling: str = "uniform",
                   logit_mean: float = 0.0, logit_std: float = 1.0) -> torch.Tensor:
        """Timestep index [1] int64; consumes exactly one `rand(1)` (uniform) or one `randn(1)` (logit-normal)."""
        lo, hi = self.index_range(expert)
        if sampling == "uniform":
            u = torch.rand(1, generator=generator)
            u = lo + (u * (hi - lo))
        elif sampling == "logit_normal":
            u = torch.sigmoid(torch.randn(1, generator=generator) * logit_std + logit_mean)
            u = lo + (u * (hi - lo))
        else:
            raise ValueError(f"timestep sampling must be 'uniform' or 'logit_normal', got {sampling!r}")
        index = torch.floor(u * self.count).to(dtype=torch.long)
        lo_i, hi_i = int(lo * self.count), int(hi * self.count)
        if hi_i <= lo_i:
            raise ValueError(f"the {expert} expert has an empty timestep range [{lo}, {hi}) with boundary_ratio {self.boundary_ratio}")
        return torch.clamp(index, min=lo_i, max=hi_i - 1)

    def timestep(self, index: torch.Tensor) -> torch.Tensor:
        """Timestep [1] float32 of an index [1]."""
        return self.timesteps[index]

    def sigma_of(self, timestep: torch.Tensor) -> torch.Tensor:
        """σ (0-d float32) of the nearest table timestep (first on ties), as the official `add_noise`."""
        return self.sigmas[torch.argmin((self.timesteps - timestep.cpu()).abs())]

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Flow-matching noising `(1 − σ)·clean + σ·noise`, any shape."""
        sigma = self.sigma_of(timestep).to(clean.device)
        return (1 - sigma) * clean + sigma * noise
