"""AdamW, gradient clipping and the learning-rate schedule of the official MOVA LoRA trainer.

Mirrors `AccelerateTrainer` (`mova/engine/trainer/accelerate/accelerate_trainer.py`, config
`mova_train_accelerate.py`): `torch.optim.AdamW(lr 1e-4, betas (0.9, 0.999), weight_decay 0.01, eps 1e-8)`
over every LoRA parameter (parameters without a gradient in a step are skipped by AdamW), total-norm
gradient clipping at 1.0 before the step, and `SequentialLR(LinearLR(start_factor 0.01 → 1 over
warmup_steps), CosineAnnealingLR(T_max = max_steps − warmup_steps, eta_min = min_lr))` stepped once per
optimizer step. The torch classes are used as they are, so the values equal the official ones exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, List, Tuple

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR


@dataclass(frozen=True)
class OptimizerSettings:
    """Official defaults. warmup_steps/max_steps count optimizer steps; clip_norm <= 0 disables clipping."""

    lr: float = 1e-4
    betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    clip_norm: float = 1.0
    warmup_steps: int = 500
    max_steps: int = 50000
    min_lr: float = 1e-6
    warmup_start_factor: float = 0.01

    def validate(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if not 0 <= self.warmup_steps < self.max_steps:
            raise ValueError(f"warmup_steps must be in [0, max_steps), got {self.warmup_steps} for max_steps {self.max_steps}")

    def as_dict(self) -> dict:
        return asdict(self)


def build_optimizer(params: Iterable[nn.Parameter], settings: OptimizerSettings) -> Tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over `params` and its warm-up + cosine schedule (official `_build_lr_scheduler`, type "cosine")."""
    settings.validate()
    optimizer = torch.optim.AdamW(list(params), lr=settings.lr, betas=tuple(settings.betas),
                                  weight_decay=settings.weight_decay, eps=settings.eps)
    if settings.warmup_steps == 0:
        cosine = CosineAnnealingLR(optimizer, T_max=settings.max_steps, eta_min=settings.min_lr)
        return optimizer, cosine
    warmup = LinearLR(optimizer, start_factor=settings.warmup_start_factor, end_factor=1.0,
                      total_iters=settings.warmup_steps)
    cosine = CosineAnnealingLR(optimizer, T_max=settings.max_steps - settings.warmup_steps, eta_min=settings.min_lr)
    schedule = SequentialLR(optimizer, schedulers=[warmup, cosine], milestones=[settings.warmup_steps])
    return optimizer, schedule


def clip_and_step(optimizer: torch.optim.Optimizer, schedule, params: List[nn.Parameter], clip_norm: float) -> float:
    """Clip the total gradient norm (official `clip_grad_norm_`), step AdamW and the schedule, clear grads.

    Returns the total norm before clipping (0.0 when no parameter has a gradient).
    """
    with_grad = [p for p in params if p.grad is not None]
    norm = 0.0
    if with_grad:
        if clip_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(with_grad, clip_norm))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in with_grad])))
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return norm
