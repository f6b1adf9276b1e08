"""The joint video+audio sampling loop (official `MOVA.__call__` denoising loop, plus dual CFG and held streams).

Per step (official order): pick the video expert (permanent switch to `video_dit_2` at the first step whose
video timestep is below `boundary_ratio × num_train_timesteps`), run the guidance branches through the joint
denoiser with `cat([latents, condition])` as the video input, combine in float32, then move each stream to the
next sigma with its own solver state (`solvers.py`). The default schedule is the official one (`euler` on the
scheduler's timestep pairs, grid-looked-up sigmas, sigma 0 after the last), bit for bit as `step_from_to`; a
`schedules.JointSchedule` picks another solver (`unipc`, `dpm++`), shift, sigma list or per-stream denoise
strength. With clean initial latents (`SamplingInputs.video_init` / `audio_init`, denoise) a stream starts at
`(1 − σ₀)·x0 + σ₀·noise`, σ₀ the first sigma of its schedule.

Held streams (A2V: audio given, V2A: video given) keep one stream fixed to given clean latents:
- `"clean"` (default): the held tower sees the clean latents at timestep 0 every step, as a finished stream
  would look at the end of sampling; the other stream denoises as usual (`parity-held` fixtures).
- `"renoise"`: the held tower sees the clean latents re-noised to the current sigma with a fixed noise,
  `x_t = (1 − σ)·x0 + σ·ε` (flow-matching interpolation, as inpainting does) and the current timestep.
In both modes the held stream's own prediction is discarded and the returned held stream equals the input.

Held time ranges (`HeldStream.offset` set: continuation holds the first latents of each stream) replace only
positions `[offset, offset + n)` on the time axis (dim 2 of both streams); the tower keeps the current timestep,
since the rest of its sequence is noisy:
- `"clean"`: the range is the given clean latents in the input of every step and in the state after every
  step (so it is returned exactly as given) — a hard hold.
- `"renoise"`: before every step the range is replaced by the clean latents re-noised to that step's sigma with
  the stream's own initial noise; after the step the model's update is kept, so the returned range is the model's
  own version of it (close to the given latents, harmonized with the rest) — a soft hold, inpainting style.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Union

import torch
from torch import nn

from ..network.denoiser import BridgeScales, joint_forward
from .branch_runner import JointModels, StepInputs, run_branches
from .guidance import Branch, GuidanceConfig, combine, required_branches
from .scheduler import FlowMatchPairScheduler
from .schedules import JointSchedule, official_joint_schedule
from .solvers import make_solver
from .step_cache import JointStepCache, StepCacheConfig

logger = logging.getLogger(__name__)

HIGH_NOISE_EXPERT = "video_dit"
LOW_NOISE_EXPERT = "video_dit_2"
HOLD_MODES = ("clean", "renoise")


@dataclass
class HeldStream:
    """A stream kept fixed while the other one is generated.

    modality: "audio" (A2V) or "video" (V2A); latents: clean latents, video normalized
    `[1, z, T', H/8, W/8]` or audio `[1, C, L]`; mode: "clean" or "renoise" (see module docstring).
    offset: None holds the whole stream; an int holds only time positions `[offset, offset + n)` of the stream,
    n = `latents.shape[2]` (video latent frames / audio latents), the rest is generated.
    """

    modality: str
    latents: torch.Tensor
    mode: str = "clean"
    offset: Optional[int] = None

    def __post_init__(self) -> None:
        if self.modality not in ("audio", "video"):
            raise ValueError(f"held stream modality must be 'audio' or 'video', got {self.modality!r}")
        if self.mode not in HOLD_MODES:
            raise ValueError(f"hold mode must be one of {', '.join(HOLD_MODES)}, got {self.mode!r}")
        if self.offset is not None and self.offset < 0:
            raise ValueError(f"held range offset must be 0 or more, got {self.offset}")

    @property
    def is_range(self) -> bool:
        return self.offset is not None

    @property
    def time_slice(self) -> slice:
        """Positions on the time axis (dim 2) this hold covers (a range hold only)."""
        start = int(self.offset or 0)
        return slice(start, start + int(self.latents.shape[2]))


Held = Union[HeldStream, Sequence[HeldStream], None]


def as_hold_list(held: Held) -> List[HeldStream]:
    """The holds as a list (`held` is None, one hold or a sequence of them), not checked."""
    return [] if held is None else [held] if isinstance(held, HeldStream) else list(held)


def held_list(held: Held) -> List[HeldStream]:
    """The holds as a list, checked: at most one whole-stream hold, at most one range hold per stream."""
    holds = as_hold_list(held)
    whole = [h for h in holds if not h.is_range]
    if len(whole) > 1:
        raise ValueError("at most one whole stream can be held (A2V or V2A), got " + ", ".join(h.modality for h in whole))
    for modality in ("audio", "video"):
        same = [h for h in holds if h.modality == modality]
        if len(same) > 1:
            raise ValueError(f"the {modality} stream is held more than once; give one hold per stream")
    return holds


def _with_range(stream: torch.Tensor, held: HeldStream, noise: torch.Tensor, sigma: Optional[float]) -> torch.Tensor:
    """`stream` with the held range replaced: the clean latents (`sigma` None) or them re-noised to `sigma`."""
    region = held.time_slice
    clean = held.latents.to(device=stream.device, dtype=torch.float32)
    value = clean if sigma is None else (1.0 - sigma) * clean + sigma * noise[:, :, region]
    out = stream.clone()
    out[:, :, region] = value
    return out


@dataclass
class StepInfo:
    """What the per-step callback receives. Latents are float32 on the compute device after the step."""

    index: int
    total: int
    expert: str
    video_timestep: float
    audio_timestep: float
    video_latents: torch.Tensor
    audio_latents: torch.Tensor
    passes: int


@dataclass
class SamplingInputs:
    """Everything the loop needs besides the models.

    prompt_embeds / negative_prompt_embeds: `[1, 512, text_dim]`; condition: `[1, 4 + z, T', H/8, W/8]`;
    video_noise `[1, z, T', H/8, W/8]`, audio_noise `[1, C, L]` (float32); video_fps in frames per second.
    video_init / audio_init: clean latents of the same shapes to start from, noised to the first sigma of the
    stream's schedule (denoise < 1); None: the stream starts from its noise.
    """

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    condition: torch.Tensor
    video_noise: torch.Tensor
    audio_noise: torch.Tensor
    video_fps: float
    video_init: Optional[torch.Tensor] = None
    audio_init: Optional[torch.Tensor] = None


class BranchRunner(Protocol):
    """Runs a step's guidance branches somewhere else (implemented by `mova_model.parallel.context`).

    run_branches(branches, forward, step) -> {branch: (video_pred, audio_pred)} for every branch, where
    forward(branch) evaluates one branch here; sequence: passed to `joint_forward` (None: no sequence split).
    """

    sequence: Optional[object]

    def run_branches(self, branches: Tuple[Branch, ...], forward: Callable[[Branch], Tuple[torch.Tensor, torch.Tensor]],
                     step: int) -> Dict[Branch, Tuple[torch.Tensor, torch.Tensor]]: ...


class DenoiserModels(Protocol):
    """Where the loop gets its modules; experts are materialized on first use, released on request."""

    def module(self, name: str) -> nn.Module: ...

    def release(self, name: str) -> None: ...

    def executor(self, name: str) -> Optional[Callable]: ...


@dataclass
class SamplingStats:
    """Counts for tests and logs: passes computed per step, expert per step, passes skipped by the step cache."""

    experts: list = field(default_factory=list)
    passes_per_step: list = field(default_factory=list)
    skipped_passes: int = 0
    skipped_per_step: list = field(default_factory=list)
    compile_s: float = 0.0


def seeded_noise(seed: int, video_shape: Tuple[int, ...], audio_shape: Tuple[int, ...]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Initial noise exactly as the official script draws it: `torch.manual_seed(seed)`, then one float32
    `randn` for the video latents and one for the audio latents, on the CPU. A private generator with the same
    seed gives the same numbers without touching the host's global RNG."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    video = torch.randn(video_shape, generator=generator, dtype=torch.float32)
    audio = torch.randn(audio_shape, generator=generator, dtype=torch.float32)
    return video, audio


def _held_input(held: HeldStream, noise: torch.Tensor, sigma: float, timestep: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(stream input, timestep) for a held stream at the current step."""
    clean = held.latents.to(device=noise.device, dtype=torch.float32)
    if held.mode == "clean":
        return clean, torch.zeros_like(timestep)
    return (1.0 - sigma) * clean + sigma * noise, timestep


def _start(noise: torch.Tensor, init: Optional[torch.Tensor], sigma: torch.Tensor) -> torch.Tensor:
    """A stream's first state: its noise, or its clean latents noised to `sigma`, `(1 − σ)·x0 + σ·noise`."""
    if init is None:
        return noise
    sigma = sigma.to(device=noise.device, dtype=torch.float32)
    return (1.0 - sigma) * init.to(device=noise.device, dtype=torch.float32) + sigma * noise


def sample(
    models: DenoiserModels,
    scheduler: FlowMatchPairScheduler,
    inputs: SamplingInputs,
    num_steps: int,
    guidance: GuidanceConfig,
    boundary_timestep: float,
    held: Held = None,
    callback: Optional[Callable[[StepInfo], None]] = None,
    stats: Optional[SamplingStats] = None,
    step_cache: Optional[StepCacheConfig] = None,
    batch_guidance: bool = False,
    parallel: Optional[BranchRunner] = None,
    schedule: Optional[JointSchedule] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Denoise from `inputs.video_noise` / `inputs.audio_noise`; return float32 (video `[1, z, T', H', W']`,
    audio `[1, C, L]`) latents. `callback(StepInfo)` runs after every step and may raise to cancel.
    `held`: one `HeldStream` or several (a whole-stream hold and/or one range hold per stream);
    step_cache: skip passes whose output barely changes (`step_cache.py`; None or threshold 0: never);
    batch_guidance: run the guidance branches of a step as one batch (`branch_runner.py`);
    parallel: spreads the branches (and the token sequence) of every step over ranks; every rank returns the
    same latents. It does not combine with the step cache or batched guidance (each rank runs its own branch).
    schedule: the solver and per-stream schedules (None: the official Euler run of `scheduler`); its step count
    must be `num_steps`. Each stream gets its own solver state; a held stream is never stepped."""
    if parallel is not None and ((step_cache is not None and step_cache.enabled) or batch_guidance):
        raise ValueError("multi-GPU sampling runs each guidance branch on its own rank: turn off the step cache "
                         "and batched guidance for it")
    if num_steps < 1:
        raise ValueError(f"steps must be at least 1, got {num_steps}")
    guidance.validate()
    device = inputs.condition.device
    if schedule is None:
        schedule = official_joint_schedule(scheduler, num_steps)
    if schedule.num_steps != num_steps:
        raise ValueError(f"the schedule has {schedule.num_steps} steps, the run {num_steps}")
    branches = required_branches(guidance)
    video_scales, audio_scales = guidance.scales("video"), guidance.scales("audio")
    bridge_on = BridgeScales(condition=1.0, a2v=guidance.a2v_scale, v2a=guidance.v2a_scale)
    bridge_off = BridgeScales(condition=0.0)
    contexts = {True: inputs.prompt_embeds, False: inputs.negative_prompt_embeds}

    holds = held_list(held)
    held = next((h for h in holds if not h.is_range), None)
    ranges = {h.modality: h for h in holds if h.is_range}
    video_noise = inputs.video_noise.to(device=device, dtype=torch.float32)
    audio_noise = inputs.audio_noise.to(device=device, dtype=torch.float32)

    video = _start(video_noise, inputs.video_init, schedule.video.sigmas[0])
    audio = _start(audio_noise, inputs.audio_init, schedule.audio.sigmas[0])
    if held is not None and held.modality == "video":
        video = held.latents.to(device=device, dtype=torch.float32)
    if held is not None and held.modality == "audio":
        audio = held.latents.to(device=device, dtype=torch.float32)
    if "video" in ranges and ranges["video"].mode == "clean":
        video = _with_range(video, ranges["video"], video_noise, None)
    if "audio" in ranges and ranges["audio"].mode == "clean":
        audio = _with_range(audio, ranges["audio"], audio_noise, None)

    video_solver = make_solver(schedule.solver, schedule.video, schedule.num_train_timesteps)
    audio_solver = make_solver(schedule.solver, schedule.audio, schedule.num_train_timesteps)
    expert_name = HIGH_NOISE_EXPERT
    switched = False
    cache = JointStepCache(step_cache, num_steps) if step_cache is not None and step_cache.enabled else None
    decide_modality = "audio" if held is not None and held.modality == "video" else "video"
    for index in range(num_steps):
        t_video = schedule.video.timesteps[index].reshape(1).to(device=device, dtype=torch.float32)
        t_audio = schedule.audio.timesteps[index].reshape(1).to(device=device, dtype=torch.float32)
        sigma_video = schedule.video.sigmas[index].item()
        sigma_audio = schedule.audio.sigmas[index].item()
        video_in, t_video_in = video, t_video
        audio_in, t_audio_in = audio, t_audio
        if held is not None and held.modality == "video":
            video_in, t_video_in = _held_input(held, inputs.video_noise.to(device), sigma_video, t_video)
        if held is not None and held.modality == "audio":
            audio_in, t_audio_in = _held_input(held, inputs.audio_noise.to(device), sigma_audio, t_audio)
        if "video" in ranges and ranges["video"].mode == "renoise":
            video_in = _with_range(video_in, ranges["video"], video_noise, sigma_video)
        if "audio" in ranges and ranges["audio"].mode == "renoise":
            audio_in = _with_range(audio_in, ranges["audio"], audio_noise, sigma_audio)

        if not switched and t_video_in.item() < boundary_timestep:
            # Drop this loop's own references first: while `expert` / `executor` (or the parallel `forward`
            # closure through them) still point at the high-noise expert, releasing it frees nothing and the
            # low-noise expert would be built next to it (two experts' weights at the peak).
            expert = executor = None
            models.release(HIGH_NOISE_EXPERT)
            expert_name = LOW_NOISE_EXPERT
            switched = True
            if cache is not None:
                cache.reset()
            logger.info("step %d: switching to the low-noise expert (video timestep %.3f < %.1f)",
                        index, t_video_in.item(), boundary_timestep)
        expert = models.module(expert_name)
        audio_dit = models.module("audio_dit")
        bridge = models.module("dual_tower_bridge")
        executor = models.executor(expert_name)

        video_input = torch.cat([video_in, inputs.condition.to(torch.float32)], dim=1)
        if parallel is None:
            step = StepInputs(video_input, audio_in, contexts, t_video_in, t_audio_in, inputs.video_fps, bridge_on,
                              bridge_off)
            decide = (audio_in if decide_modality == "audio" else video_in, decide_modality)
            video_preds, audio_preds, skipped = run_branches(
                JointModels(expert, audio_dit, bridge, executor), step, branches, batch=batch_guidance,
                cache=cache, index=index, decide=decide)
        else:
            def forward(branch: Branch) -> Tuple[torch.Tensor, torch.Tensor]:
                v_pred, a_pred = joint_forward(
                    expert, audio_dit, bridge, video_input, audio_in, contexts[branch.text],
                    t_video_in, t_audio_in, inputs.video_fps,
                    scales=bridge_on if branch.bridge else bridge_off, executor=executor,
                    sequence=parallel.sequence,
                )
                return v_pred.float(), a_pred.float()

            preds = parallel.run_branches(branches, forward, index)
            video_preds = {b: preds[b][0] for b in branches}
            audio_preds = {b: preds[b][1] for b in branches}
            skipped = 0
        video_velocity = combine(video_preds, *video_scales)
        audio_velocity = combine(audio_preds, *audio_scales)

        if held is None or held.modality != "video":
            video = video_solver.step(video_velocity, video_in if "video" in ranges else video)
            if "video" in ranges and ranges["video"].mode == "clean":
                video = _with_range(video, ranges["video"], video_noise, None)
        if held is None or held.modality != "audio":
            audio = audio_solver.step(audio_velocity, audio_in if "audio" in ranges else audio)
            if "audio" in ranges and ranges["audio"].mode == "clean":
                audio = _with_range(audio, ranges["audio"], audio_noise, None)

        if stats is not None:
            stats.experts.append(expert_name)
            stats.passes_per_step.append(len(branches) - skipped)
            stats.skipped_passes += skipped
            stats.skipped_per_step.append(skipped)
        if callback is not None:
            callback(StepInfo(index=index, total=num_steps, expert=expert_name,
                              video_timestep=float(t_video_in.item()), audio_timestep=float(t_audio_in.item()),
                              video_latents=video, audio_latents=audio, passes=len(branches) - skipped))
    if cache is not None:
        logger.info("step cache: %d of %d passes skipped (threshold %g)", cache.stats.skipped,
                    num_steps * len(branches), step_cache.threshold)
    return video, audio
