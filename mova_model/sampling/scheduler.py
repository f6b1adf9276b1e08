"""Flow-matching schedule of MOVA: the (video, audio) timestep pairs, the sigma lookup and the Euler update.

Mirrors the official `FlowMatchScheduler` + `FlowMatchPairScheduler` (`mova/diffusion/schedulers/flow_match.py`,
`flow_match_pair.py`) as `MOVA.__call__` drives them:

- A schedule of N steps starts from N (or N+1 with `extra_one_step`, the last dropped) linearly spaced sigmas
  from `sigma_max` down to `sigma_min` (float32 `torch.linspace`), optionally flipped (`inverse_timesteps`),
  then warped: either the shift `s·σ/(1+(s−1)·σ)` or, with `exponential_shift`, `e^μ/(e^μ+(1/σ−1))`;
  optionally stretched so the last sigma equals `shift_terminal`; optionally mirrored (`reverse_sigmas`,
  σ → 1−σ). Timesteps are `σ·num_train_timesteps` (0..1000 scale).
- A 1000-point "training grid" is built once at construction with the config's settings. The update
  `x + v·(σ(t_to) − σ(t_from))` looks σ(t) up on that grid by nearest neighbour (first index on ties),
  not from the inference schedule; the last step goes to σ = 0 (1 when the schedule is inverted/reversed).
- The official `__call__` never passes a shift: the shift comes from `scheduler_config.json`. Its
  `dual_sigma_shift` pair post-process (separate video/audio shifts) is commented out upstream; here it is
  the opt-in `video_shift` / `audio_shift` arguments of `timesteps_for`.

All tensors here are float32 on the CPU, exactly as the official class keeps them.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from ..checkpoint.configs import ConfigError, SchedulerConfig

TimestepLike = Union[torch.Tensor, float, int]


class FlowMatchPairScheduler:
    """MOVA's flow-matching scheduler with (video, audio) timestep pairs.

    `config` is the parsed `scheduler/scheduler_config.json`. The object is immutable after construction:
    each `timesteps_for` call builds a fresh schedule, so one scheduler can serve several samplers.
    """

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.num_train_timesteps = int(config.num_train_timesteps)
        if config.exponential_shift and config.exponential_shift_mu is None:
            raise ConfigError(
                f"scheduler: exponential_shift is true but exponential_shift_mu is null in {config.source}; "
                "the official scheduler cannot build a schedule without it"
            )
        self.train_sigmas = self._sigmas(self.num_train_timesteps, config.shift, config.exponential_shift_mu)
        self.train_timesteps = self.train_sigmas * self.num_train_timesteps

    # ------------------------------------------------------------------ schedule construction

    @property
    def final_sigma(self) -> float:
        """σ after the last step: 0, or 1 when `inverse_timesteps` or `reverse_sigmas` is set (official rule)."""
        return 1.0 if (self.config.inverse_timesteps or self.config.reverse_sigmas) else 0.0

    def _sigmas(self, num_steps: int, shift: float, mu: Optional[float], denoising_strength: float = 1.0) -> torch.Tensor:
        """One column of sigmas [num_steps] (float32), in the official order of operations."""
        cfg = self.config
        if num_steps < 1:
            raise ValueError(f"the number of steps must be at least 1, got {num_steps}")
        if shift <= 0:
            raise ValueError(f"shift must be a positive number, got {shift}")
        if denoising_strength <= 0:
            raise ValueError(f"denoising_strength must be a positive number, got {denoising_strength}")
        start = cfg.sigma_min + (cfg.sigma_max - cfg.sigma_min) * denoising_strength
        if cfg.extra_one_step:
            base = torch.linspace(start, cfg.sigma_min, num_steps + 1, dtype=torch.float32)[:-1]
        else:
            base = torch.linspace(start, cfg.sigma_min, num_steps, dtype=torch.float32)
        if cfg.inverse_timesteps:
            base = torch.flip(base, dims=[0])
        if cfg.exponential_shift:
            exp_mu = math.exp(float(mu))  # type: ignore[arg-type]
            sigmas = exp_mu / (exp_mu + (1 / base - 1))
        else:
            sigmas = shift * base / (1 + (shift - 1) * base)
        if cfg.shift_terminal is not None:
            one_minus = 1 - sigmas
            stretch = one_minus[-1] / (1 - cfg.shift_terminal)
            sigmas = 1 - (one_minus / stretch)
        if cfg.reverse_sigmas:
            sigmas = 1 - sigmas
        return sigmas

    def sigmas_for(self, num_steps: int, video_shift: Optional[float] = None,
                   audio_shift: Optional[float] = None) -> torch.Tensor:
        """Inference sigmas as pairs [num_steps, 2] (video, audio), float32.

        Without `video_shift`/`audio_shift` both columns are the config schedule (what `MOVA.__call__`
        uses). Giving either one mirrors the official `dual_sigma_shift` pair post-process: each column is
        rebuilt with its own shift (the other one defaults to the config's shift).
        """
        if video_shift is None and audio_shift is None:
            column = self._sigmas(num_steps, self.config.shift, self.config.exponential_shift_mu)
            return torch.stack([column, column], dim=1)
        mu = self.config.exponential_shift_mu
        video = self._sigmas(num_steps, float(self.config.shift if video_shift is None else video_shift), mu)
        audio = self._sigmas(num_steps, float(self.config.shift if audio_shift is None else audio_shift), mu)
        return torch.stack([video, audio], dim=1)

    def timesteps_for(self, num_steps: int, video_shift: Optional[float] = None,
                      audio_shift: Optional[float] = None) -> torch.Tensor:
        """Timestep pairs [num_steps, 2] (video, audio) on the 0..1000 scale, float32.

        Mirrors `set_timesteps(num_steps)` + `get_pairs()`; the columns are identical unless a
        per-modality shift is given (see `sigmas_for`).
        """
        return self.sigmas_for(num_steps, video_shift, audio_shift) * self.num_train_timesteps

    # ------------------------------------------------------------------ stepping

    def sigma_of(self, timestep: TimestepLike) -> torch.Tensor:
        """σ for a timestep (scalar, 0..1000 scale): nearest point of the 1000-point training grid.

        Mirrors `FlowMatchPairScheduler.timestep_to_sigma`: the value is read as a Python float, compared in
        float32 with the grid's timesteps, and the first closest index wins. Returns a 0-d float32 tensor.
        """
        value = torch.tensor(float(timestep), dtype=torch.float32)
        index = torch.argmin((self.train_timesteps - value).abs())
        return self.train_sigmas[index]

    def step_sigmas(self, t_from: TimestepLike, t_to: Optional[TimestepLike]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(σ_from, σ_to) as used by `step_from_to`; `t_to=None` is the last step (σ_to = `final_sigma`)."""
        sigma_from = self.sigma_of(t_from)
        if t_to is None:
            sigma_to = torch.tensor(self.final_sigma, dtype=sigma_from.dtype)
        else:
            sigma_to = self.sigma_of(t_to)
        return sigma_from, sigma_to

    def step_from_to(self, pred: torch.Tensor, t_from: TimestepLike, t_to: Optional[TimestepLike],
                     sample: torch.Tensor) -> torch.Tensor:
        """One Euler step of the flow ODE: `sample + pred·(σ(t_to) − σ(t_from))`.

        pred, sample: same shape (video `[B, C, T, H, W]` or audio `[B, C, L]`), the velocity predicted at
        `t_from`. Mirrors `FlowMatchPairScheduler.step_from_to` (σ by the training-grid lookup; the 0-d σ
        difference is float32 and does not change the dtype of `pred`).
        """
        sigma_from, sigma_to = self.step_sigmas(t_from, t_to)
        delta = (sigma_to - sigma_from).to(device=pred.device)
        return sample + pred * delta

    # ------------------------------------------------------------------ expert switch

    @staticmethod
    def expert_switch_index(video_timesteps: torch.Tensor, boundary_timestep: float) -> int:
        """Index of the first step whose video timestep is strictly below `boundary_timestep`.

        The official loop switches from `video_dit` (high noise) to `video_dit_2` there and never switches
        back. Returns `len(video_timesteps)` when no step is below the boundary (the second expert never runs).
        video_timesteps: [N] (the first column of `timesteps_for`).
        """
        values = video_timesteps.reshape(-1).tolist()
        for index, value in enumerate(values):
            if value < boundary_timestep:
                return index
        return len(values)
