"""A joint step cache for the video+audio denoiser: skip a guidance pass when its output is predicted to barely
change, reusing that pass's last velocities (the idea of EasyCache, Zhou et al. 2025, as in ComfyUI core's
EasyCache node; written here for two coupled towers).

Per guidance branch (full / text_off / both_off) the cache keeps the input and the video and audio velocities
of the last *computed* pass, and a transformation rate `k` measured between the last two computed passes:

    k = (|v_i − v_j| / |v_j|) / (|x_i − x_j| / |x_j|)        (relative output change per relative input change)

Before running a pass at step n the predicted relative output change since the last computed pass is
`k · |x_n − x_last| / |x_last|`; below `threshold` the pass is skipped and both towers' velocities of that
branch are reused. The decision comes from the video tower (its latent is by far the larger stream and the
bridge couples the towers, so both are skipped or run together and stay in step); the audio tower keeps its
own cached estimate (its last velocity for that branch), never one derived from the video. When the video
stream is held (V2A, its input does not move) the audio stream decides.

Never skipped: the first step, the last step, steps before `start_percent` of the run, and the first two
computed passes after a reset (`k` is unknown). `reset()` is called at the expert switch: the low-noise expert
never reuses the high-noise expert's outputs. Threshold 0 means no cache at all (`enabled` is False and the
sampler does exactly what it does without one).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Dict, Hashable, Optional, Tuple

import torch

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
"""Default of the MOVA Step Cache node: the largest threshold of `bench/speed.py`'s table whose final-latent error
stays within 10 % relative L2 (video and audio) on the tiny random-weight checkpoint (20 steps, text CFG: 4 of 40
passes skipped, 8.2 % / 6.4 %). UNVERIFIED on the released weights (none were available): their transformation
rate differs from a random model's, so measure with `bench.speed --checkpoint` before relying on it."""
MAX_DEFAULT_ERROR = 0.10
"""The error bound of the rule above (`bench.speed` prints the threshold it picks)."""


@dataclass(frozen=True)
class StepCacheConfig:
    """threshold: largest predicted relative change of a skipped pass (0 = off); start_percent: fraction of the
    steps (0..1) that always run before any skip (EasyCache's `start_percent`)."""

    threshold: float = 0.0
    start_percent: float = 0.15

    def validate(self) -> None:
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError(f"step cache threshold must be a number >= 0, got {self.threshold!r}")
        if not (0.0 <= self.start_percent <= 1.0):
            raise ValueError(f"step cache start_percent must be between 0 and 1, got {self.start_percent!r}")

    @property
    def enabled(self) -> bool:
        return self.threshold > 0


def _relative_change(new: torch.Tensor, old: torch.Tensor) -> float:
    """|new − old| / |old| (L2 over all elements, float64); 0 when both are 0, inf when only old is."""
    diff = (new.double() - old.double()).norm().item()
    base = old.double().norm().item()
    if base == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / base


@dataclass
class _BranchState:
    """The last computed pass of one branch and the measured transformation rate."""

    decide_in: Optional[torch.Tensor] = None
    decide_out: Optional[torch.Tensor] = None
    video: Optional[torch.Tensor] = None
    audio: Optional[torch.Tensor] = None
    rate: Optional[float] = None


@dataclass
class StepCacheStats:
    """skipped / computed: passes (a pass = one branch at one step); skipped_steps: step indices with a skip."""

    skipped: int = 0
    computed: int = 0
    skipped_steps: list = field(default_factory=list)


class JointStepCache:
    """One sampling run's cache (create a new one per run). Use:

        if cache.should_skip(branch, index, decide_input):
            video_pred, audio_pred = cache.reuse(branch)
        else:
            ... run the pass ...
            cache.store(branch, decide_input, video_pred, audio_pred)

    `decide_input` is the deciding tower's noisy input at this step (video `[1, z, T', H', W']` float32, or the
    audio latents when the video is held). `num_steps` is the run's step count.
    """

    def __init__(self, config: StepCacheConfig, num_steps: int) -> None:
        config.validate()
        self.config = config
        self.num_steps = int(num_steps)
        self.first_skippable = max(1, math.ceil(config.start_percent * num_steps))
        self.states: Dict[Hashable, _BranchState] = {}
        self.stats = StepCacheStats()

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def reset(self) -> None:
        """Forget every branch (the expert switch): the next passes are computed."""
        self.states.clear()

    def predicted_change(self, branch: Hashable, decide_input: torch.Tensor) -> Optional[float]:
        """Predicted relative output change of `branch` since its last computed pass (None: unknown)."""
        state = self.states.get(branch)
        if state is None or state.rate is None or state.decide_in is None:
            return None
        return state.rate * _relative_change(decide_input, state.decide_in)

    def should_skip(self, branch: Hashable, index: int, decide_input: torch.Tensor) -> bool:
        """True when the pass of `branch` at step `index` may reuse its cached velocities."""
        if not self.enabled or index < self.first_skippable or index >= self.num_steps - 1:
            return False
        predicted = self.predicted_change(branch, decide_input)
        skip = predicted is not None and predicted < self.config.threshold
        if skip:
            self.stats.skipped += 1
            if not self.stats.skipped_steps or self.stats.skipped_steps[-1] != index:
                self.stats.skipped_steps.append(index)
        return skip

    def reuse(self, branch: Hashable) -> Tuple[torch.Tensor, torch.Tensor]:
        """(video velocity, audio velocity) of the branch's last computed pass."""
        state = self.states[branch]
        return state.video, state.audio  # type: ignore[return-value]

    def store(self, branch: Hashable, decide_input: torch.Tensor, video_pred: torch.Tensor,
              audio_pred: torch.Tensor, decide_pred: Optional[torch.Tensor] = None) -> None:
        """Record a computed pass. `decide_pred`: the deciding tower's output (default: the video velocity)."""
        if not self.enabled:
            return
        self.stats.computed += 1
        decide_pred = video_pred if decide_pred is None else decide_pred
        state = self.states.setdefault(branch, _BranchState())
        if state.decide_in is not None and state.decide_out is not None:
            moved = _relative_change(decide_input, state.decide_in)
            changed = _relative_change(decide_pred, state.decide_out)
            state.rate = changed / moved if moved > 0 and math.isfinite(changed) else None
        state.decide_in = decide_input.detach().clone()
        state.decide_out = decide_pred.detach().clone()
        state.video, state.audio = video_pred, audio_pred
