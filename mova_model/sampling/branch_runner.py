"""Running one step's guidance branches: one joint pass each (the official way), or all in one batch, with an
optional joint step cache deciding which passes are skipped.

Batched guidance stacks the branches' text contexts along the batch axis and runs `joint_forward` once on
`[n, ...]` inputs. Branches that differ in the bridge (dual CFG: `both_off` has no bridge, the others do) run
with the bridge on and an executor that zeroes the bridge conditioners' output on the bridge-off rows, so those
rows get `x + 0·scale = x`, exactly what skipping the bridge gives. Every other operation is row-wise, so the
batched result equals the separate passes up to the floating-point blocking of the batched kernels
(`tests/mova_model/sampling/test_branch_runner.py` measures it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..network.bridge import BridgeConditioner
from ..network.denoiser import BridgeScales, joint_forward
from .guidance import Branch
from .step_cache import JointStepCache

logger = logging.getLogger(__name__)


@dataclass
class JointModels:
    """The modules of one step: the active video expert, the audio DiT, the bridge and the executor (or None)."""

    expert: nn.Module
    audio_dit: nn.Module
    bridge: Optional[nn.Module]
    executor: Optional[Callable] = None


@dataclass
class StepInputs:
    """One step's inputs shared by all branches. video_input `[1, 36, T', H', W']`, audio `[1, C, L]`,
    timesteps `[1]` (0..1000), contexts: text flag (True = prompt, False = negative) -> `[1, 512, text_dim]`."""

    video_input: torch.Tensor
    audio: torch.Tensor
    contexts: Mapping[bool, torch.Tensor]
    video_timestep: torch.Tensor
    audio_timestep: torch.Tensor
    video_fps: float
    bridge_on: BridgeScales
    bridge_off: BridgeScales


def _plain(module: nn.Module, *args) -> torch.Tensor:
    return module(*args)


def _row_masked(executor: Optional[Callable], bridge_rows: torch.Tensor) -> Callable:
    """An executor that zeroes the bridge conditioners' output on rows whose mask is False ([n, 1, 1] bool)."""
    run = executor or _plain

    def masked(module: nn.Module, *args):
        out = run(module, *args)
        if isinstance(module, BridgeConditioner):
            out = torch.where(bridge_rows, out, torch.zeros((), dtype=out.dtype, device=out.device))
        return out

    return masked


def _one_pass(models: JointModels, step: StepInputs, branch: Branch) -> Tuple[torch.Tensor, torch.Tensor]:
    video, audio = joint_forward(
        models.expert, models.audio_dit, models.bridge, step.video_input, step.audio, step.contexts[branch.text],
        step.video_timestep, step.audio_timestep, step.video_fps,
        scales=step.bridge_on if branch.bridge else step.bridge_off, executor=models.executor)
    return video.float(), audio.float()


def batched_pass(models: JointModels, step: StepInputs,
                 branches: Sequence[Branch]) -> Dict[Branch, Tuple[torch.Tensor, torch.Tensor]]:
    """All `branches` in one joint pass of batch len(branches); returns branch -> (video [1, ...], audio [1, ...])."""
    rows = len(branches)
    context = torch.cat([step.contexts[b.text] for b in branches], dim=0)
    executor = models.executor
    with_bridge = [b.bridge for b in branches]
    scales = step.bridge_on if any(with_bridge) else step.bridge_off
    if any(with_bridge) and not all(with_bridge):
        mask = torch.tensor(with_bridge, device=step.audio.device).view(rows, 1, 1)
        executor = _row_masked(executor, mask)
    video, audio = joint_forward(
        models.expert, models.audio_dit, models.bridge,
        step.video_input.expand(rows, *step.video_input.shape[1:]), step.audio.expand(rows, *step.audio.shape[1:]),
        context, step.video_timestep, step.audio_timestep, step.video_fps, scales=scales, executor=executor)
    return {b: (video[i:i + 1].float(), audio[i:i + 1].float()) for i, b in enumerate(branches)}


def run_branches(models: JointModels, step: StepInputs, branches: Sequence[Branch], batch: bool = False,
                 cache: Optional[JointStepCache] = None, index: int = 0,
                 decide: Optional[Tuple[torch.Tensor, str]] = None
                 ) -> Tuple[Dict[Branch, torch.Tensor], Dict[Branch, torch.Tensor], int]:
    """Velocities of every branch of one step: (video preds, audio preds, number of passes skipped).

    batch: run the computed branches as one batch. cache/index/decide: the step cache, the step index and
    (the deciding tower's input, "video" or "audio"); without a cache every branch runs, in order.
    """
    use_cache = cache is not None and cache.enabled and decide is not None
    results: Dict[Branch, Tuple[torch.Tensor, torch.Tensor]] = {}
    to_run = []
    for branch in branches:
        if use_cache and cache.should_skip(branch, index, decide[0]):
            results[branch] = cache.reuse(branch)
        else:
            to_run.append(branch)
    if batch and len(to_run) > 1:
        computed = batched_pass(models, step, to_run)
    else:
        computed = {branch: _one_pass(models, step, branch) for branch in to_run}
    for branch, (video, audio) in computed.items():
        if use_cache:
            cache.store(branch, decide[0], video, audio, decide_pred=video if decide[1] == "video" else audio)
        results[branch] = (video, audio)
    videos = {b: results[b][0] for b in branches}
    audios = {b: results[b][1] for b in branches}
    return videos, audios, len(branches) - len(to_run)
