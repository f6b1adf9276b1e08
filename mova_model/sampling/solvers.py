"""Flow-matching ODE solvers, one state per stream: `make_solver(name, schedule)` then `step(velocity, sample)`
once per step, in order. The joint sampler keeps one solver for the video and one for the audio stream (a
multistep solver's history belongs to its stream), and never steps a held stream.

- `euler`: MOVA's official update `x + v·(σ_next − σ)` (`FlowMatchPairScheduler.step_from_to`), with the sigmas of
  the stream's schedule (for the default schedule: the training-grid lookups the official loop does), so the
  official path is unchanged bit for bit.
- `unipc`: Wan 2.2's `FlowUniPCMultistepScheduler` with the options `wan/image2video.py` uses (order 2, `bh2`,
  predicting x0, lower order at the final steps, final sigma 0). The stepping is diffusers'
  `UniPCMultistepScheduler` in flow mode (`prediction_type="flow_prediction"`, `use_flow_sigmas=True`: α = 1 − σ,
  x0 = x − σ·v), the class Wan's copy was made from, given the Wan sigma table (`schedules.unipc_schedule`)
  explicitly. Measured on `../shared/parity-solvers`: equal to the official trajectories (max |diff| 0 on CPU fp32);
  diffusers' own flow table instead (`flow_shift`) is 1e-6 off, because it builds the sigmas another way.
- `dpm++`: Wan 2.2's `FlowDPMSolverMultistepScheduler` (DPM-Solver++ 2M, midpoint, lower order at the final
  step, final sigma 0) as driven with `get_sampling_sigmas`. The stepping is diffusers'
  `DPMSolverMultistepScheduler` in flow mode given the Wan sigma table (`schedules.dpmpp_schedule`); measured
  equal to the official trajectories (max |diff| 0). Its own flow table (`linspace(1, 1/T)`) is not Wan's
  (3e-4 off on the parity set), hence the explicit table.

The diffusers schedulers are given their table through `sigmas`/`timesteps` after `set_timesteps` and start at
index 0 (`set_begin_index`); their other state (history, orders, step index) is theirs. The parity suite replays
the official trajectories through `make_solver` (kind `solver_trajectory`), so a diffusers release that changed
this behaviour would fail it.
"""

from __future__ import annotations

import logging
import warnings
from typing import Optional

import torch

from .schedules import SOLVERS, StreamSchedule, check_solver

logger = logging.getLogger(__name__)


class Solver:
    """One stream's solver state over a `StreamSchedule`; `step` is called once per step, in order."""

    name = ""

    def __init__(self, schedule: StreamSchedule) -> None:
        self.schedule = schedule
        self.index = 0

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    def _advance(self) -> int:
        if self.index >= self.num_steps:
            raise RuntimeError(f"{self.name} solver: all {self.num_steps} steps are done")
        index = self.index
        self.index += 1
        return index

    def step(self, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The sample at the next sigma from the velocity predicted at the current one (same shape, e.g. video
        `[B, C, T, H, W]` or audio `[B, C, L]`)."""
        raise NotImplementedError


class EulerSolver(Solver):
    """`x + v·(σ[i+1] − σ[i])`: the official MOVA step, the σ difference a 0-d float32 tensor as there."""

    name = "euler"

    def step(self, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        i = self._advance()
        sigmas = self.schedule.sigmas
        delta = (sigmas[i + 1] - sigmas[i]).to(device=velocity.device)
        return sample + velocity * delta


class DiffusersFlowSolver(Solver):
    """A diffusers multistep scheduler in flow mode, stepping along the given sigma table (module docstring)."""

    def __init__(self, schedule: StreamSchedule, num_train_timesteps: int = 1000) -> None:
        super().__init__(schedule)
        with warnings.catch_warnings():  # diffusers' own table build trips numpy 2's `__array__(copy=)` deprecation
            warnings.simplefilter("ignore", DeprecationWarning)
            self.scheduler = self._build(int(num_train_timesteps))
            self.scheduler.set_timesteps(schedule.num_steps)
        self.scheduler.sigmas = schedule.sigmas.detach().to("cpu", torch.float32).clone()
        self.scheduler.timesteps = schedule.timesteps.detach().cpu().to(torch.int64)
        self.scheduler.set_begin_index(0)

    def _build(self, num_train_timesteps: int):
        raise NotImplementedError

    def step(self, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        i = self._advance()
        return self.scheduler.step(velocity, self.scheduler.timesteps[i], sample).prev_sample


class UniPCSolver(DiffusersFlowSolver):
    """Wan 2.2 `FlowUniPCMultistepScheduler` defaults: order 2, bh2, predict x0, lower_order_final, final σ 0."""

    name = "unipc"

    def _build(self, num_train_timesteps: int):
        from diffusers import UniPCMultistepScheduler

        return UniPCMultistepScheduler(num_train_timesteps=num_train_timesteps, solver_order=2,
                                       prediction_type="flow_prediction", use_flow_sigmas=True, predict_x0=True,
                                       solver_type="bh2", lower_order_final=True, final_sigmas_type="zero")


class DPMPlusPlusSolver(DiffusersFlowSolver):
    """Wan 2.2 `FlowDPMSolverMultistepScheduler` defaults: dpmsolver++, order 2, midpoint, lower_order_final,
    final σ 0."""

    name = "dpm++"

    def _build(self, num_train_timesteps: int):
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler(num_train_timesteps=num_train_timesteps, solver_order=2,
                                           prediction_type="flow_prediction", use_flow_sigmas=True,
                                           algorithm_type="dpmsolver++", solver_type="midpoint",
                                           lower_order_final=True, final_sigmas_type="zero")


_CLASSES = {"euler": EulerSolver, "unipc": UniPCSolver, "dpm++": DPMPlusPlusSolver}
assert tuple(_CLASSES) == SOLVERS


def make_solver(name: str, schedule: StreamSchedule, num_train_timesteps: Optional[int] = 1000) -> Solver:
    """A fresh solver state for one stream (`name` one of `schedules.SOLVERS`)."""
    cls = _CLASSES[check_solver(name)]
    if cls is EulerSolver:
        return EulerSolver(schedule)
    return cls(schedule, num_train_timesteps=int(num_train_timesteps or 1000))
