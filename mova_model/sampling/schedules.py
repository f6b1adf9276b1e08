"""Sampling schedules per stream: the timesteps the model sees and the sigma table the solver steps along.

A `StreamSchedule` holds `timesteps` [N] (0..num_train_timesteps scale, float32) and `sigmas` [N + 1] (float32,
the last entry is the sigma after the last step). Each solver gets its schedule the way its official pipeline
builds it:

- `euler` (MOVA's official loop, `scheduler.FlowMatchPairScheduler`): timesteps from the checkpoint's scheduler
  config; the sigma of each step is looked up on the 1000-point training grid (nearest neighbour), the last
  one is the config's final sigma. A `shift` override builds the scheduler as if `scheduler_config.json` said
  that shift (schedule and training grid).
- `unipc` (Wan 2.2 `FlowUniPCMultistepScheduler` as `wan/image2video.py` drives it: built with shift 1, then
  `set_timesteps(steps, shift=shift)`): `linspace(σ_max, σ_min, steps + 1)[:-1]` in float64, where σ_max / σ_min
  are the float32 ends of the shift-1 training grid `1 − linspace(1, 1/T, T)[::-1]` (0.999 and 0), then
  `shift·σ / (1 + (shift − 1)·σ)`; timesteps are `σ·T` cast to int64 (truncated); sigmas float32 with a final 0.
- `dpm++` (Wan 2.2 `FlowDPMSolverMultistepScheduler` with `retrieve_timesteps(sigmas=get_sampling_sigmas(...))`):
  `linspace(1, 0, steps + 1)[:steps]` in float64, shifted the same way; timesteps `σ·T` to int64; final 0.
- a custom list (ComfyUI's SIGMAS, `--sigmas`): N + 1 sigmas in [0, 1], strictly decreasing, ending at 0, used
  as given. Timesteps are `σ·T`: float32 for euler (as MOVA's scheduler), truncated to int64 for unipc/dpm++
  (as the Wan `set_timesteps(sigmas=...)` path). float32 values are read as the shortest decimal that rounds to
  them (0.9f → 0.9), so a list typed in the CLI and the same list coming from a ComfyUI SIGMAS node give the
  same timesteps.

Denoise (ComfyUI's KSampler meaning): a strength d < 1 builds the schedule of `int(steps / d)` steps and keeps
its last `steps` steps (and last `steps + 1` sigmas), so sampling starts part-way down from a noised input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..checkpoint.configs import SchedulerConfig
from .scheduler import FlowMatchPairScheduler

SOLVERS = ("euler", "unipc", "dpm++")
"""Solver names, as in the official Wan 2.2 code (`--sample_solver unipc|dpm++`) plus MOVA's own `euler`."""
MAX_SCHEDULE_STEPS = 1_000_000
"""Largest full schedule a denoise strength may ask for (`int(steps / denoise)`)."""
PLAIN_DENOISE = 0.9999
"""Strengths above this sample the whole schedule (ComfyUI's KSampler uses the same cut)."""

SigmaList = Union[Sequence[float], torch.Tensor, np.ndarray]


class ScheduleError(ValueError):
    """A solver, shift, sigma list or denoise strength that cannot make a schedule; the message says what is allowed."""


@dataclass(frozen=True)
class StreamSchedule:
    """timesteps [N] float32 (what the model sees, 0..T scale); sigmas [N + 1] float32 (what the solver uses)."""

    timesteps: torch.Tensor
    sigmas: torch.Tensor

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def tail(self, steps: int) -> "StreamSchedule":
        """The last `steps` steps (denoise): their timesteps and the last `steps + 1` sigmas."""
        return StreamSchedule(self.timesteps[-steps:].clone(), self.sigmas[-(steps + 1):].clone())


@dataclass(frozen=True)
class ScheduleOptions:
    """How to build the schedules: solver (one of `SOLVERS`); shift (None: the checkpoint's scheduler config);
    sigmas (None, or a custom list of N + 1 sigmas ending at 0, which then sets the step count)."""

    solver: str = "euler"
    shift: Optional[float] = None
    sigmas: Optional[Tuple[float, ...]] = None

    def __post_init__(self) -> None:
        if self.sigmas is not None and not isinstance(self.sigmas, tuple):
            object.__setattr__(self, "sigmas", tuple(float(s) for s in read_sigmas(self.sigmas)))

    def validate(self) -> None:
        check_solver(self.solver)
        if self.shift is not None and not (isinstance(self.shift, (int, float)) and math.isfinite(self.shift)
                                           and self.shift > 0):
            raise ScheduleError(f"shift must be a number greater than 0, got {self.shift!r}")
        if self.sigmas is not None:
            check_sigmas(self.sigmas)

    @property
    def is_default(self) -> bool:
        return self.solver == "euler" and self.shift is None and self.sigmas is None

    def num_steps(self, steps: int) -> int:
        """The step count a run has: the custom list's length − 1, else `steps`."""
        return len(self.sigmas) - 1 if self.sigmas is not None else int(steps)


def check_solver(solver: str) -> str:
    if solver not in SOLVERS:
        raise ScheduleError(f"solver = {solver!r} is not known; choose one of: {', '.join(SOLVERS)}")
    return solver


def read_sigmas(values: SigmaList) -> np.ndarray:
    """A sigma list as float64 (a float32 tensor or array is read value by value as its shortest decimal)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype == torch.float32:
            return np.array([float(str(np.float32(v))) for v in values.reshape(-1).tolist()], dtype=np.float64)
        return values.reshape(-1).to(torch.float64).numpy()
    array = np.asarray(values)
    if array.dtype == np.float32:
        return np.array([float(str(v)) for v in array.reshape(-1)], dtype=np.float64)
    try:
        return np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ScheduleError(f"sigmas must be a list of numbers, got {values!r}") from None


def check_sigmas(sigmas: SigmaList) -> np.ndarray:
    """The list as float64 if it is a usable flow-matching schedule, else `ScheduleError` saying what is wrong:
    at least 2 values, all finite and in [0, 1], strictly decreasing, the last one 0."""
    values = read_sigmas(sigmas)
    if values.size < 2:
        raise ScheduleError(f"sigmas must hold at least 2 values (one step: start, 0), got {values.size}")
    if not np.all(np.isfinite(values)):
        raise ScheduleError("sigmas must be finite numbers, got " + _short(values))
    if values[0] > 1.0 or values.min() < 0.0:
        raise ScheduleError("sigmas of a flow-matching model lie between 1 (pure noise) and 0 (clean), got "
                            + _short(values))
    steps_up = np.nonzero(np.diff(values) >= 0)[0]
    if steps_up.size:
        i = int(steps_up[0])
        raise ScheduleError(f"sigmas must be strictly decreasing, but sigma[{i + 1}] = {values[i + 1]:g} is not below "
                            f"sigma[{i}] = {values[i]:g}: " + _short(values))
    if values[-1] != 0.0:
        raise ScheduleError(f"sigmas must end at 0 (the clean sample), the last one is {values[-1]:g}: " + _short(values))
    return values


def parse_sigmas(text: str) -> Tuple[float, ...]:
    """`"1,0.9,0.5,0"` (the CLI's `--sigmas`) -> a checked tuple of floats."""
    try:
        values = tuple(float(part) for part in text.replace(" ", "").split(",") if part != "")
    except ValueError:
        raise ScheduleError(f"sigmas must be numbers separated by commas (e.g. 1,0.94,0.83,0.62,0), got {text!r}") from None
    check_sigmas(values)
    return values


def _short(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:8])
    return f"[{shown}{', ...' if values.size > 8 else ''}]"


def check_denoise(name: str, value: float) -> float:
    """A denoise strength must be a number in [0, 1]."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ScheduleError(f"{name} must be between 0 and 1 (1: sample from pure noise, 0: keep the input), "
                            f"got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------- official tables

def _shifted(sigmas: np.ndarray, shift: float) -> np.ndarray:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _int_timesteps(sigmas: np.ndarray, num_train_timesteps: int) -> torch.Tensor:
    """`σ·T` truncated to int64 (as Wan's `set_timesteps`), returned as float32 for the model."""
    return torch.from_numpy(sigmas * num_train_timesteps).to(torch.int64).to(torch.float32)


def _with_final(sigmas: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))


def unipc_schedule(steps: int, shift: float, num_train_timesteps: int = 1000) -> StreamSchedule:
    """The Wan 2.2 UniPC schedule (module docstring): built at shift 1, then `set_timesteps(steps, shift=shift)`."""
    t = int(num_train_timesteps)
    alphas = np.linspace(1, 1 / t, t)[::-1].copy()
    grid = torch.from_numpy(1.0 - alphas).to(torch.float32)  # the shift-1 training grid, float32 as Wan keeps it
    sigma_max, sigma_min = grid[0].item(), grid[-1].item()
    sigmas = _shifted(np.linspace(sigma_max, sigma_min, steps + 1).copy()[:-1], float(shift))
    return StreamSchedule(_int_timesteps(sigmas, t), _with_final(sigmas))


def dpmpp_schedule(steps: int, shift: float, num_train_timesteps: int = 1000) -> StreamSchedule:
    """The Wan 2.2 DPM++ schedule: `get_sampling_sigmas(steps, shift)` through `retrieve_timesteps(sigmas=...)`
    of a scheduler built at shift 1 (whose own re-shift at 1 leaves the values unchanged)."""
    sigmas = _shifted(np.linspace(1, 0, steps + 1)[:steps], float(shift))
    return StreamSchedule(_int_timesteps(sigmas, int(num_train_timesteps)), _with_final(sigmas))


def euler_schedule(scheduler: FlowMatchPairScheduler, steps: int, column: int = 0) -> StreamSchedule:
    """MOVA's official Euler schedule of one stream (column 0 video, 1 audio of the timestep pairs): the
    scheduler's timesteps, each step's sigma looked up on the training grid, then the final sigma."""
    timesteps = scheduler.timesteps_for(steps)[:, column].contiguous()
    sigmas = [scheduler.sigma_of(t) for t in timesteps.tolist()]
    sigmas.append(torch.tensor(scheduler.final_sigma, dtype=torch.float32))
    return StreamSchedule(timesteps, torch.stack(sigmas))


def custom_schedule(solver: str, sigmas: SigmaList, num_train_timesteps: int = 1000) -> StreamSchedule:
    """A checked custom list (module docstring): float32 `σ·T` timesteps for euler, int64-truncated for the others."""
    values = check_sigmas(sigmas)
    table = torch.from_numpy(values.astype(np.float32))
    if solver == "euler":
        return StreamSchedule(table[:-1] * float(num_train_timesteps), table)
    return StreamSchedule(_int_timesteps(values[:-1], int(num_train_timesteps)), table)


# ---------------------------------------------------------------------------------------- per run

def full_schedule(config: SchedulerConfig, options: ScheduleOptions, steps: int) -> StreamSchedule:
    """One stream's schedule of `steps` steps (or the custom list) for a checkpoint's scheduler config."""
    options.validate()
    if options.sigmas is not None:
        return custom_schedule(options.solver, options.sigmas, config.num_train_timesteps)
    if steps < 1:
        raise ScheduleError(f"steps must be at least 1, got {steps}")
    shift = float(config.shift if options.shift is None else options.shift)
    if options.solver == "unipc":
        return unipc_schedule(steps, shift, config.num_train_timesteps)
    if options.solver == "dpm++":
        return dpmpp_schedule(steps, shift, config.num_train_timesteps)
    scheduler = FlowMatchPairScheduler(config if options.shift is None else replace(config, shift=shift))
    return euler_schedule(scheduler, steps)


def denoised_schedule(config: SchedulerConfig, options: ScheduleOptions, steps: int, denoise: float = 1.0) -> StreamSchedule:
    """The schedule of a stream sampled at strength `denoise` (0 < d ≤ 1): the whole schedule for d > 0.9999,
    else the last `steps` steps of the `int(steps / d)`-step schedule (ComfyUI's KSampler rule). A custom sigma
    list already says where sampling starts, so it takes no strength below 1."""
    check_denoise("denoise", denoise)
    if denoise <= 0:
        raise ScheduleError("denoise 0 keeps the stream as it is: it has no schedule")
    if denoise > PLAIN_DENOISE:
        return full_schedule(config, options, steps)
    if options.sigmas is not None:
        raise ScheduleError(f"a custom sigma list sets where sampling starts by itself: use denoise 1 (or 0 to keep "
                            f"the stream) with it, got {denoise:g} (start the list lower instead, e.g. with SplitSigmas)")
    total = int(steps / denoise)
    if total > MAX_SCHEDULE_STEPS:
        raise ScheduleError(f"denoise {denoise:g} at {steps} steps needs a {total}-step schedule; the smallest "
                            f"strength at {steps} steps is {steps / MAX_SCHEDULE_STEPS:g}")
    return full_schedule(config, options, total).tail(steps)


@dataclass(frozen=True)
class JointSchedule:
    """The schedules of one joint run: the solver's name and a `StreamSchedule` per stream (the same step count;
    the tables differ only when the streams take different denoise strengths)."""

    solver: str
    video: StreamSchedule
    audio: StreamSchedule
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        check_solver(self.solver)
        if self.video.num_steps != self.audio.num_steps:
            raise ScheduleError(f"video and audio schedules must have the same steps, got {self.video.num_steps} "
                                f"and {self.audio.num_steps}")

    @property
    def num_steps(self) -> int:
        return self.video.num_steps


def official_joint_schedule(scheduler: FlowMatchPairScheduler, steps: int) -> JointSchedule:
    """MOVA's official run: Euler on the scheduler's (video, audio) timestep pairs."""
    return JointSchedule("euler", euler_schedule(scheduler, steps, 0), euler_schedule(scheduler, steps, 1),
                         scheduler.num_train_timesteps)


def joint_schedule(config: SchedulerConfig, options: ScheduleOptions, steps: int, video_denoise: float = 1.0,
                   audio_denoise: float = 1.0) -> JointSchedule:
    """Both streams' schedules for `options` at their denoise strengths (a stream at strength 0 is kept as it is
    and gets the whole schedule, which it never uses)."""
    streams = [denoised_schedule(config, options, steps, d) if d > 0 else full_schedule(config, options, steps)
               for d in (check_denoise("denoise", video_denoise), check_denoise("audio denoise", audio_denoise))]
    return JointSchedule(options.solver, streams[0], streams[1], int(config.num_train_timesteps))
