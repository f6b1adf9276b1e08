"""`MovaPipeline`: the public API the ComfyUI nodes (and plain Python users) call.

    pipe = MovaPipeline.from_pretrained("models/mova/MOVA-360p", device="cuda", dtype=torch.bfloat16)
    cond = pipe.prepare_conditioning(prompt, negative_prompt, image_uint8, width=640, height=352,
                                     num_frames=193, video_fps=24.0)
    latents = pipe.sample(cond, seed=42, steps=50, guidance=GuidanceConfig(text_scale=5.0), callback=cb)
    frames = pipe.decode_video(latents)        # [F, H, W, 3] float 0..1
    waveform, rate = pipe.decode_audio(latents)  # [1, 1, S] float, Hz

It mirrors the official `MOVA.__call__` (see `sampler.py` for the loop) and adds what the official pipeline
lacks: text-only generation (T2VA, a white first frame through the normal image path, as the official
prompt-enhancement workflow does), dual CFG, held audio/video streams, LoRA patches, and lazy components:
each module is memory-mapped and built on first use, the text encoder is released after encoding, the
low-noise expert is only built at the expert switch and the high-noise expert is released after it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..bounds import FPS, FRAMES, HEIGHT, WIDTH, cap_text
from ..checkpoint.folder import MovaCheckpoint, build_meta_module
from .conditioning import keyframe_condition
from .guidance import GuidanceConfig, required_branches
from ..media.image_preprocess import crop_and_resize, to_model_range, white_frame
from ..network.lora import LoraPatch, LoraPatchSet, LoraWeights, load_lora
from ..memory.model_store import ComponentCache, MemoryHost, MemoryOptions, SamplingModels
from .sampler import (Held, HeldStream, SamplingInputs, SamplingStats, StepInfo, as_hold_list, held_list,
                      sample as run_sampler, seeded_noise)
from .scheduler import FlowMatchPairScheduler
from .schedules import PLAIN_DENOISE, ScheduleError, ScheduleOptions, check_denoise, joint_schedule
from .speed import SpeedOptions, choose_batch_guidance, speed_run
from .step_cache import StepCacheConfig
from ..network.text_encoder import TextEncoder, prompt_clean
from ..network.video_vae import VideoVAE

logger = logging.getLogger(__name__)

OFFICIAL_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指"
)
"""The negative prompt of the official inference script (the Wan-style Chinese negative prompt)."""

DIT_COMPONENTS = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")
CONDITIONING_PHASES = ("text encode", "VAE encode")
NON_DENOISE_PHASES = ("text encode", "VAE encode", "VAE decode", "audio decode")
"""Plan phases (`MemoryPlan.vram_phases`) that are not part of sampling; every other phase is claimed by it."""


class InputError(ValueError):
    """A generation setting outside what MOVA accepts; the message names the input and what is allowed."""


@dataclass
class Conditioning:
    """Everything sampling needs besides noise: text embeddings `[1, 512, text_dim]`, the first-frame
    condition `[1, 4 + z, T', H/8, W/8]` and the clip geometry (pixels, frames, frames per second)."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    condition: torch.Tensor
    width: int
    height: int
    num_frames: int
    video_fps: float
    prompt: str = ""
    negative_prompt: str = ""
    text_only: bool = False
    keyframes: Optional[Dict[int, torch.Tensor]] = None
    """The frames behind `condition`: {pixel frame index: image `[1, 3, H, W]` in [-1, 1]} (continuation
    re-encodes them with the previous clip's frame in front)."""


@dataclass
class JointLatents:
    """Video latents (normalized, `[1, z, T', H/8, W/8]`) and audio latents (`[1, C, L]`) of one clip."""

    video: torch.Tensor
    audio: torch.Tensor
    width: int
    height: int
    num_frames: int
    video_fps: float
    sample_rate: int
    segments: tuple = ()
    """For a joined clip: one `continuation.Seam` per join, in order (empty for a single segment)."""
    has_audio: bool = True
    """False for an encoded clip that had no sound (`drivers.encode_clip` without audio): `audio` is zeros and a
    restyle generates the sound from noise."""


def clip_audio_samples(num_frames: int, video_fps: float, sample_rate: int) -> int:
    """Audio samples of a clip of `num_frames` at `video_fps` (official `int(sample_rate · frames / fps)`)."""
    return int(sample_rate * num_frames / video_fps)


def validate_geometry(width: int, height: int, num_frames: int, video_fps: float) -> None:
    """Raise `InputError` unless the size is MOVA-legal (official `check_inputs`: H, W multiples of 16,
    frames = 4k + 1) and inside the shared bounds (`mova_model.bounds`: sides up to 4096, frames up to 1025,
    fps finite, above 0 and at most 120)."""
    problems = []
    for name, value, bound in (("width", width, WIDTH), ("height", height, HEIGHT)):
        if not isinstance(value, int) or value < 16 or value % 16:
            problems.append(f"{name} must be a positive multiple of 16, got {value}")
        elif not bound.contains(value):
            problems.append(f"{name} must be at most {bound.high:g}, got {value}")
    if not isinstance(num_frames, int) or num_frames < 1 or num_frames % 4 != 1:
        problems.append(f"frames must be 4k+1 (1, 5, 9, ..., 193), got {num_frames}")
    elif not FRAMES.contains(num_frames):
        problems.append(f"frames must be at most {FRAMES.high:g} per clip (longer: join segments with an overlap, "
                        f"MOVA Extend or several --prompt), got {num_frames}")
    if not video_fps > 0:
        problems.append(f"fps must be greater than 0, got {video_fps}")
    elif not FPS.contains(video_fps):
        problems.append(f"fps must be a finite number at most {FPS.high:g}, got {video_fps}")
    if problems:
        raise InputError("; ".join(problems))


class MovaPipeline:
    """A MOVA checkpoint folder ready to generate. Cheap to create: nothing is loaded until used."""

    def __init__(self, checkpoint: MovaCheckpoint, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, cache: Optional[ComponentCache] = None,
                 lora: Optional[LoraPatchSet] = None, memory: Optional[MemoryOptions] = None,
                 speed: Optional[SpeedOptions] = None) -> None:
        self.checkpoint = checkpoint
        self.configs = checkpoint.configs
        self.device = torch.device(device)
        self.dtype = dtype
        self.memory = memory or MemoryOptions()
        self.memory.validate()
        self.speed = speed or SpeedOptions()
        self.speed.validate()
        self.cache = cache or ComponentCache(checkpoint, self.device, dtype, fp8=self.memory.weights == "fp8")
        self.lora = lora or LoraPatchSet()
        self.scheduler = FlowMatchPairScheduler(self.configs.scheduler)
        self.last_stats: Optional[SamplingStats] = None
        self.last_plan = None
        self.memory_host: Optional[MemoryHost] = None
        """The host application's memory manager (`model_store.MemoryHost`; the ComfyUI Loader sets it): plans
        are made against the VRAM it says MOVA may use, and each phase claims its planned figure from it."""
        self.interrupt_check: Optional[Callable[[], None]] = None
        """Called between chunks of long work (VAE encode/decode); raises to cancel. The ComfyUI node sets it to
        the host's interrupt check."""
        self.parallel = None
        """A `mova_model.parallel.ParallelContext` every `sample` call of this pipeline runs under (None: one
        process); set by the torchrun launcher and the multi-GPU workers."""
        self.remote = None
        """A `mova_model.parallel.workers.WorkerPool` that runs every `sample` call of this pipeline in its worker
        processes (set by the MOVA Multi-GPU node; None: sample here)."""

    @classmethod
    def from_pretrained(cls, folder: Path | str, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, memory: Optional[MemoryOptions] = None,
                        speed: Optional[SpeedOptions] = None) -> "MovaPipeline":
        """Open and validate (headers only) a MOVA checkpoint folder; raises `CheckpointError` if broken."""
        checkpoint = MovaCheckpoint.open(Path(folder))
        checkpoint.validate()
        return cls(checkpoint, device=device, dtype=dtype, memory=memory, speed=speed)

    # -- memory ---------------------------------------------------------------------------------------
    def memory_plan(self, width: int = 640, height: int = 352, num_frames: int = 193, video_fps: float = 24.0,
                    cfg_passes: int = 2, steps: int = 50, vram_bytes: Optional[float] = None, device: Optional[str] = None,
                    guidance_batch: int = 1):
        """The `memory.planner.MemoryPlan` for a clip on this pipeline's device and memory options.

        On a GPU: VRAM is `vram_bytes` if given, else the budget (mode "budget"), else the free VRAM reported by
        `memory_host` (what the host could give MOVA, without unloading anything) or by CUDA. On the CPU (or `device="cpu"`), unless a VRAM budget or
        `vram_bytes` asks for a GPU plan: every phase in host RAM. Host RAM: the option, else what the OS
        reports available.
        """
        from ..memory.planner import available_ram_bytes, free_vram_bytes, plan_memory
        from ..memory.quantize import stored_format
        from ..memory.sizes import GB, Architecture, PlanInputs

        options = self.memory
        ram_bytes = float(options.ram_budget_gb) * GB if options.ram_budget_gb else available_ram_bytes()
        stored = stored_format(self.checkpoint.root)
        weights = "fp8" if options.weights == "fp8" or stored == "fp8" else "bf16"
        measured: dict = {}
        if stored == "gguf":  # the sizes the GGUF files hold (types mixed per tensor), from their headers
            found = self.stored_weights()
            weights = found.weights
            measured = {"bytes_per_param": found.bytes_per_param, "stem_bytes": found.stem_bytes}
        inputs = PlanInputs(vram_bytes=1.0, ram_bytes=max(ram_bytes, 1.0), width=width, height=height,
                            frames=num_frames, fps=video_fps, cfg_passes=cfg_passes, steps=steps,
                            weights=weights, stored=stored, mode=options.mode, prefetch_depth=options.prefetch_depth,
                            guidance_batch=guidance_batch,
                            vae_element_bytes=4 if self.device.type == "cpu" else self.dtype.itemsize, **measured)
        arch = Architecture.from_configs(self.configs)
        if device == "cpu" or (device is None and self.device.type != "cuda" and vram_bytes is None
                               and options.mode != "budget"):
            if ram_bytes <= 0:  # the OS does not say: nothing to plan against
                ram_bytes = float("inf")
            return plan_memory(replace(inputs, device="cpu", ram_bytes=ram_bytes, compute_bytes=self.dtype.itemsize),
                               arch)
        if vram_bytes is None:
            if options.mode == "budget":
                vram_bytes = float(options.vram_budget_gb) * GB
            elif self.memory_host is not None:
                # what the host could give MOVA; room is claimed per phase for the plan's figure (`claim_vram`)
                vram_bytes = float(self.memory_host.available_vram(self.device))
            else:
                vram_bytes = free_vram_bytes(self.device)
        inputs = replace(inputs, vram_bytes=max(float(vram_bytes), 1.0))
        return plan_memory(inputs, arch)

    def stored_weights(self):
        """`memory.stored_sizes.StoredWeights` of this checkpoint: which DiT components are GGUF, of which types,
        and the sizes the planner uses for them (headers only)."""
        from ..memory.stored_sizes import GGUF_COMPONENTS, stored_weights

        return stored_weights(self.checkpoint.root, {c: self.checkpoint.store(c) for c in GGUF_COMPONENTS})

    def require_fit(self, width: int, height: int, num_frames: int, video_fps: float, cfg_passes: int = 2,
                    steps: int = 50, phase: Optional[str] = None, guidance_batch: int = 1):
        """The memory plan of a clip, or an `InputError` with the plan's message (what it needs, what is
        available, what would fit) when the clip (or only `phase`, e.g. "VAE decode") cannot fit. On the CPU,
        host RAM is the budget (also when a VRAM budget is simulated there)."""
        from ..memory.planner import what_would_fit
        from ..memory.sizes import Architecture

        plan = self.memory_plan(width, height, num_frames, video_fps, cfg_passes, steps, guidance_batch=guidance_batch)
        plans = [plan]
        if self.device.type != "cuda" and plan.mode != "cpu":
            plans.append(self.memory_plan(width, height, num_frames, video_fps, cfg_passes, steps, device="cpu"))
        for candidate in plans:
            if candidate.phase_fits(phase) if phase else candidate.fits:
                continue
            problems = list(candidate.problems)
            if phase and candidate.mode == "cpu":
                problems = [f"host RAM: the {phase} needs {candidate.ram_phases[phase] / 1e9:.1f} GB, "
                            f"{candidate.inputs.ram_bytes / 1e9:.1f} GB available"]
            elif phase:
                problems = [f"VRAM: the {phase} needs {candidate.vram_phases[phase] / 1e9:.1f} GB, "
                            f"{candidate.inputs.vram_bytes / 1e9:.1f} GB available"]
            hint = what_would_fit(candidate.inputs, Architecture.from_configs(self.configs), phase)
            logger.info("memory plan:\n%s", candidate.format())
            raise InputError(f"this clip ({width}x{height}, {num_frames} frames) does not fit in the memory "
                             f"available: {'; '.join(problems)}; {hint}"
                             + ("" if candidate.mode == "cpu" else " (or use fp8 weights, or free VRAM)"))
        return plan

    @property
    def free_vram_probe(self) -> Optional[Callable[[float], float]]:
        """probe(bytes_needed) -> the VRAM MOVA may use, after the memory host made room for `bytes_needed` (None
        without a host). For callers that plan against one figure of their own (the training node)."""
        host = self.memory_host
        if host is None:
            return None

        def probe(needed: float) -> float:
            host.claim(self.device, float(needed))
            return float(host.available_vram(self.device))

        return probe

    def claim_vram(self, plan, phases) -> None:
        """Before `phases` run: ask the memory host (if any) for the plan's largest figure among them (0 for a
        CPU plan: the host only registers MOVA's modules, so it can ask them back)."""
        if self.memory_host is None:
            return
        need = 0.0
        if plan is not None and plan.mode != "cpu":
            need = max((plan.vram_phases.get(p, 0.0) for p in phases), default=0.0)
        self.memory_host.claim(self.device, need)

    # -- geometry -------------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self.configs.audio_vae.sample_rate)

    def latent_shapes(self, width: int, height: int, num_frames: int, video_fps: float) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        """(video latent shape, audio latent shape) for a clip, as `prepare_latents` / `prepare_audio_latents`."""
        vae = self.configs.video_vae
        z = vae.z_dim
        latent_frames = (num_frames - 1) // vae.scale_factor_temporal + 1
        audio_samples = clip_audio_samples(num_frames, video_fps, self.sample_rate)
        audio_len = (audio_samples - 1) // self.configs.audio_vae.hop_length + 1
        audio_channels = self.configs.audio_dit.in_dim
        return ((1, z, latent_frames, height // vae.scale_factor_spatial, width // vae.scale_factor_spatial),
                (1, audio_channels, audio_len))

    # -- conditioning ---------------------------------------------------------------------------------
    def encode_prompts(self, prompts: list, names: Optional[list] = None) -> torch.Tensor:
        """UMT5 embeddings `[len(prompts), 512, d_model]` (float32), padded rows zero. The encoder is built for
        this call and released afterwards. On a GPU it runs where the memory plan says: resident, with its 24
        blocks streamed, or on the CPU when even that does not fit."""
        placement = self.memory_plan().text_encoder if self.device.type == "cuda" else "resident"
        self.cache.keep_only(("text_encoder",))  # one phase's modules at a time, as the memory plan counts
        module = self.cache.get("text_encoder", dtype=self.dtype, resident=placement == "resident")
        try:
            encoder = TextEncoder(self.checkpoint.root / "tokenizer", module)
            with torch.no_grad():
                if placement == "streamed":
                    from ..memory.streaming import stack_streamer

                    with stack_streamer(module, list(module.encoder.block), self.device) as streamer:
                        streamer.attach()
                        embeds = encoder.encode(list(prompts), device=self.device, names=names).embeds
                else:
                    embeds = encoder.encode(list(prompts), names=names).embeds
        finally:
            self.cache.release("text_encoder")
        return embeds.float().to(self.device)

    def video_vae(self) -> VideoVAE:
        """The Wan VAE (float32 on the CPU), checking `interrupt_check` between chunks of frames."""
        vae_dtype = torch.float32 if self.device.type == "cpu" else self.dtype
        self.cache.keep_only(("video_vae",))
        return VideoVAE(self.cache.get("video_vae", dtype=vae_dtype), self.configs.video_vae,
                        interrupt_check=self.interrupt_check)

    def prepare_image(self, image_uint8: Optional[np.ndarray], width: int, height: int) -> torch.Tensor:
        """First frame `[1, 3, H, W]` in [-1, 1]: center-cropped and resized like the official script, or a
        white frame when `image_uint8` is None (T2VA)."""
        if image_uint8 is None:
            frame = white_frame(height, width)
        else:
            if image_uint8.ndim != 3 or image_uint8.shape[2] != 3:
                raise InputError(f"image must be one RGB frame [H, W, 3], got shape {list(image_uint8.shape)}")
            frame = crop_and_resize(image_uint8, height, width)
        return to_model_range(frame)

    def prepare_conditioning(self, prompt: str, negative_prompt: str = OFFICIAL_NEGATIVE_PROMPT,
                             image_uint8: Optional[np.ndarray] = None, width: int = 640, height: int = 352,
                             num_frames: int = 193, video_fps: float = 24.0,
                             last_image_uint8: Optional[np.ndarray] = None,
                             keyframes_uint8: Optional[Dict[int, np.ndarray]] = None) -> Conditioning:
        """Text embeddings and keyframe condition for one clip; images `[h, w, 3]` uint8 (any size).

        `image_uint8`: the first frame (None and no other frame: a white first frame, T2VA). `last_image_uint8`:
        the last frame (with a first frame: the official `last_image` condition; alone: the first frame is free).
        `keyframes_uint8`: {pixel frame index: image} at other positions (beyond what MOVA was trained on).
        """
        validate_geometry(width, height, num_frames, video_fps)
        prompt, negative_prompt = cap_text(prompt, "prompt"), cap_text(negative_prompt, "negative prompt")
        frames: Dict[int, np.ndarray] = {}
        for position, image in (keyframes_uint8 or {}).items():
            index = int(position) + num_frames if int(position) < 0 else int(position)
            if not 0 <= index < num_frames:
                raise InputError(f"keyframe at frame {position} is outside the clip (frames 0..{num_frames - 1})")
            frames[index] = image
        # a keyframe where the first / last image already sits is refused, not silently replaced (issue 17, item 8)
        for index, given, name in ((0, image_uint8, "image"), (num_frames - 1, last_image_uint8, "last_image")):
            if given is not None and index in frames:
                which = "first" if index == 0 else "last"
                raise InputError(f"keyframe_positions: frame {index} (the {which} frame) is where the {name} input "
                                 f"goes, and both are given; remove that position from the keyframes or disconnect "
                                 f"{name}")
        if num_frames == 1 and image_uint8 is not None and last_image_uint8 is not None:
            raise InputError("a 1-frame clip has one frame: give the image or the last_image, not both")
        if image_uint8 is not None:
            frames[0] = image_uint8
        if last_image_uint8 is not None:
            frames[num_frames - 1] = last_image_uint8
        text_only = not frames
        self.cache.verify_files()
        plan = self.require_fit(width, height, num_frames, video_fps)  # before any work: the clip must fit whole
        self.claim_vram(plan, CONDITIONING_PHASES)
        if not prompt_clean(prompt or ""):
            logger.warning("the prompt is empty: the clip is generated from the first frame and the negative prompt "
                           "alone; describe what happens and what is heard")
        embeds = self.encode_prompts([prompt, negative_prompt], names=["prompt", "negative prompt"])
        images = {i: self.prepare_image(im, width, height).to(self.device) for i, im in frames.items()} \
            if frames else {0: self.prepare_image(None, width, height).to(self.device)}
        with torch.no_grad():
            condition = keyframe_condition(self.video_vae(), images, num_frames)
        return Conditioning(prompt_embeds=embeds[0:1], negative_prompt_embeds=embeds[1:2],
                            condition=condition.float(), width=width, height=height, num_frames=num_frames,
                            video_fps=float(video_fps), prompt=prompt, negative_prompt=negative_prompt,
                            text_only=text_only, keyframes={i: im.cpu() for i, im in images.items()})

    # -- sampling -------------------------------------------------------------------------------------
    def sample(self, conditioning: Conditioning, seed: int = 42, steps: int = 50,
               guidance: Optional[GuidanceConfig] = None, noise: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
               held: Held = None, callback: Optional[Callable[[StepInfo], None]] = None,
               plan=None, step_cache: Optional[StepCacheConfig] = None, parallel=None,
               schedule: Optional[ScheduleOptions] = None, init: Optional[JointLatents] = None,
               denoise: float = 1.0, audio_denoise: Optional[float] = None) -> JointLatents:
        """Denoise one clip. `noise` = (video, audio) initial noise to inject; else drawn from `seed` exactly as
        the official script does. `callback(StepInfo)` runs after each step and may raise to cancel.
        `plan`: a `memory.planner.MemoryPlan` to follow instead of planning from the memory options.
        `step_cache`: skip passes whose output barely changes (None: never). Speed options: `self.speed`.
        `parallel`: a `mova_model.parallel.ParallelContext` of this rank (CFG / sequence parallel); every rank
        calls `sample` with the same arguments and gets the same latents. With `remote` set, the worker
        pool samples and this process only relays the callback.
        `schedule`: solver, shift and sigma list (`schedules.ScheduleOptions`; None: the official Euler run; a
        sigma list sets the step count). `init`: a clip to restyle (`JointLatents` of this clip's size, e.g. from
        `drivers.encode_clip`), sampled from `denoise` (video; 1: pure noise, the init unused; 0: kept as it is)
        and `audio_denoise` (None: the same as `denoise`); both 0 returns `init` unchanged. With a sigma list the
        strengths are 1 or 0 and the init is noised to the list's first sigma."""
        parallel = parallel if parallel is not None else self.parallel
        if (self.remote is not None or parallel is not None) and step_cache is not None and step_cache.enabled:
            raise InputError("the step cache does not combine with multi-GPU sampling (each guidance branch runs on "
                             "its own rank): disconnect the MOVA Step Cache or the MOVA Multi-GPU node")
        c = conditioning
        video_shape, audio_shape = self.latent_shapes(c.width, c.height, c.num_frames, c.video_fps)
        options = schedule or ScheduleOptions()
        strengths = self._strengths(options, init, denoise, audio_denoise, video_shape, audio_shape)
        if self.remote is not None and plan is None and parallel is None:
            return self.remote.sample(self, conditioning, seed, steps, guidance or GuidanceConfig(), held, callback,
                                      noise=noise, schedule=schedule, init=init, denoise=denoise,
                                      audio_denoise=audio_denoise)
        self.cache.verify_files()
        if noise is None:
            video_noise, audio_noise = seeded_noise(seed, video_shape, audio_shape)
        else:
            video_noise, audio_noise = noise
            if tuple(video_noise.shape) != video_shape or tuple(audio_noise.shape) != audio_shape:
                raise InputError(f"injected noise must be video {list(video_shape)} and audio {list(audio_shape)}, "
                                 f"got {list(video_noise.shape)} and {list(audio_noise.shape)}")
        kept = self._kept_streams(held, init, strengths)
        if len(kept) == 2:  # nothing left to sample: the input as it is
            logger.info("denoise 0 (or held) for both streams: the clip is returned unchanged")
            return JointLatents(video=kept["video"].float().clone(), audio=kept["audio"].float().clone(), width=c.width,
                                height=c.height, num_frames=c.num_frames, video_fps=c.video_fps,
                                sample_rate=self.sample_rate, has_audio=init is None or init.has_audio)
        holds = as_hold_list(held)
        driven = {h.modality for h in holds if isinstance(h, HeldStream) and not h.is_range}
        holds += [HeldStream(m, kept[m], "clean") for m in ("video", "audio") if m in kept and m not in driven]
        held = holds or None
        try:
            holds = held_list(held)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        for hold in holds:
            expected = video_shape if hold.modality == "video" else audio_shape
            if not hold.is_range and tuple(hold.latents.shape) != expected:
                raise InputError(f"held {hold.modality} latents must be {list(expected)} for this clip, got {list(hold.latents.shape)}")
            shape = tuple(hold.latents.shape)
            if hold.is_range and (shape[:2] + shape[3:] != expected[:2] + expected[3:]
                                  or hold.time_slice.stop > expected[2] or shape[2] < 1):
                raise InputError(f"held {hold.modality} range {list(shape)} at offset {hold.offset} does not fit the "
                                 f"clip's {hold.modality} latents {list(expected)}")
        # a stream starts from the init clip below strength 1, or with a sigma list (noised to its first sigma)
        starts = {m: getattr(init, m).to(self.device) for m in ("video", "audio")
                  if init is not None and m not in kept and strengths[m] > 0.0
                  and (strengths[m] <= PLAIN_DENOISE or options.sigmas is not None)}
        inputs = SamplingInputs(
            prompt_embeds=c.prompt_embeds.to(self.device), negative_prompt_embeds=c.negative_prompt_embeds.to(self.device),
            condition=c.condition.to(self.device), video_noise=video_noise.to(self.device),
            audio_noise=audio_noise.to(self.device), video_fps=c.video_fps, video_init=starts.get("video"),
            audio_init=starts.get("audio"))
        joint = None
        if not options.is_default or starts:
            # a stream kept whole (A2V / V2A, denoise 0) follows the generated stream's noise levels (renoise mode)
            free = next(m for m in ("video", "audio") if m not in kept)
            level = {m: strengths[free] if m in kept else strengths[m] for m in strengths}
            try:
                joint = joint_schedule(self.configs.scheduler, options, steps, level["video"], level["audio"])
            except ScheduleError as exc:
                raise InputError(str(exc)) from None
            logger.info("schedule: %s, %d steps, video timesteps %.1f..%.1f, audio %.1f..%.1f", joint.solver,
                        joint.num_steps, joint.video.timesteps[0].item(), joint.video.timesteps[-1].item(),
                        joint.audio.timesteps[0].item(), joint.audio.timesteps[-1].item())
        steps = options.num_steps(steps)
        passes = len(required_branches(guidance or GuidanceConfig()))
        if parallel is not None:
            parallel.check(self.configs, required_branches(guidance or GuidanceConfig()))
        planned = plan is None and (self.device.type == "cuda" or self.memory.mode == "budget")
        if parallel is None:
            batch, why = choose_batch_guidance(
                self.speed.batch_guidance, self.device, passes,
                (lambda rows: self.memory_plan(c.width, c.height, c.num_frames, c.video_fps, passes, steps,
                                               guidance_batch=rows)) if planned else None)
        else:
            batch, why = False, "off: each guidance branch runs on its own rank"
        if self.speed.batch_guidance != "off":
            logger.info("batched guidance: %s", why)
        if plan is None:
            plan = self.require_fit(c.width, c.height, c.num_frames, c.video_fps, passes, steps,
                                    guidance_batch=passes if batch else 1)
        elif not plan.fits:
            raise InputError("this clip does not fit in the memory available: " + "; ".join(plan.problems)
                             + " (lower the resolution or frame count, use fp8 weights, or free VRAM)")
        logger.info("memory plan:\n%s", plan.format())
        self.last_plan = plan
        self.cache.keep_only(DIT_COMPONENTS)  # the VAEs and the text encoder are not on the device while denoising
        self.claim_vram(plan, [p for p in plan.vram_phases if p not in NON_DENOISE_PHASES])
        models = SamplingModels(self.cache, self.lora, plan)
        stats = SamplingStats()
        try:
            with torch.no_grad(), speed_run(self.speed, self.device, models) as speed:
                video, audio = run_sampler(speed.models(models), self.scheduler, inputs, steps,
                                           guidance or GuidanceConfig(), self.configs.boundary_timestep, held=held,
                                           callback=callback, stats=stats, step_cache=step_cache,
                                           batch_guidance=batch, parallel=parallel, schedule=joint)
                stats.compile_s = speed.timer.total_s
        finally:
            models.finish()
            self.last_stats = stats
        return JointLatents(video=video, audio=audio, width=c.width, height=c.height, num_frames=c.num_frames,
                            video_fps=c.video_fps, sample_rate=self.sample_rate)

    def _strengths(self, options: ScheduleOptions, init: Optional[JointLatents], denoise: float,
                   audio_denoise: Optional[float], video_shape: tuple, audio_shape: tuple) -> Dict[str, float]:
        """Checked per-stream denoise strengths {"video": d, "audio": d}; `InputError` naming the bad input."""
        try:
            options.validate()
            strengths = {"video": check_denoise("denoise", denoise),
                         "audio": check_denoise("audio denoise", denoise if audio_denoise is None else audio_denoise)}
        except ScheduleError as exc:
            raise InputError(str(exc)) from None
        if init is None:
            if options.sigmas is not None and options.sigmas[0] <= PLAIN_DENOISE:
                logger.warning("the sigma list starts at %g but no init clip is given: sampling starts from pure noise "
                               "as if it were at that level (connect an init latent to restyle a clip)", options.sigmas[0])
            if min(strengths.values()) <= PLAIN_DENOISE:
                raise InputError(f"denoise {min(strengths.values()):g} reworks an existing clip: connect one (MOVA "
                                 "Encode → the sampler's init latent; CLI: --init-video), or use denoise 1")
            return strengths
        if not isinstance(init, JointLatents):
            raise InputError("init: not a MOVA latent (connect a MOVA Encode, Joint Sampler or Extend output)")
        if tuple(init.video.shape) != video_shape or tuple(init.audio.shape) != audio_shape:
            raise InputError(f"the init clip is {init.width}x{init.height}, {init.num_frames} frames (latents "
                             f"{list(init.video.shape)} and {list(init.audio.shape)}) but this clip is {video_shape[-1] * 8}x"
                             f"{video_shape[-2] * 8}, {(video_shape[2] - 1) * 4 + 1} frames at the conditioning's fps "
                             f"(latents {list(video_shape)} and {list(audio_shape)}): encode it with this conditioning")
        if not init.has_audio:
            if audio_denoise is not None and audio_denoise <= PLAIN_DENOISE:
                raise InputError(f"audio denoise {audio_denoise:g}: the init clip has no sound to keep or rework; "
                                 "use audio denoise 1 (or leave it at the same as denoise), or encode the clip with its audio")
            strengths["audio"] = 1.0
        if options.sigmas is not None and any(0.0 < d <= PLAIN_DENOISE for d in strengths.values()):
            raise InputError("a custom sigma list sets where sampling starts by itself: use denoise 1 (start the list "
                             "lower, e.g. with SplitSigmas) or 0 (keep the stream) with it")
        return strengths

    @staticmethod
    def _kept_streams(held: Held, init: Optional[JointLatents], strengths: Dict[str, float]) -> Dict[str, torch.Tensor]:
        """{modality: clean latents} of the streams that are not sampled: held whole, or at denoise 0."""
        kept = {}
        for hold in as_hold_list(held):
            if isinstance(hold, HeldStream) and not hold.is_range:
                kept[hold.modality] = hold.latents
        for modality in ("video", "audio"):
            if init is not None and strengths[modality] == 0.0 and modality not in kept:
                kept[modality] = init.video if modality == "video" else init.audio
        return kept

    # -- decoding -------------------------------------------------------------------------------------
    def decode_video_raw(self, latents: JointLatents | torch.Tensor) -> torch.Tensor:
        """Decoded video `[1, 3, F, H, W]` in [-1, 1] (official: denormalize, Wan VAE decode)."""
        video = latents.video if isinstance(latents, JointLatents) else latents
        self.cache.verify_files()
        vae_config = self.configs.video_vae
        t_lat, h_lat, w_lat = (int(n) for n in video.shape[-3:])
        plan = self.require_fit(w_lat * vae_config.scale_factor_spatial, h_lat * vae_config.scale_factor_spatial,
                                (t_lat - 1) * vae_config.scale_factor_temporal + 1,
                                latents.video_fps if isinstance(latents, JointLatents) else 24.0, phase="VAE decode")
        self.claim_vram(plan, ("VAE decode",))
        vae = self.video_vae()
        with torch.no_grad():
            return vae.decode(video.to(self.device)).float()

    def decode_video(self, latents: JointLatents | torch.Tensor) -> torch.Tensor:
        """Frames `[F, H, W, 3]` float in [0, 1] (ComfyUI IMAGE layout), `(x / 2 + 0.5).clamp(0, 1)`."""
        frames = self.decode_video_raw(latents)[0]
        # in place (the decoded clip is ours alone): one float32 copy of the clip less at the peak, same values
        return frames.div_(2).add_(0.5).clamp_(0, 1).permute(1, 2, 3, 0).contiguous().cpu()

    def decode_audio(self, latents: JointLatents | torch.Tensor) -> Tuple[torch.Tensor, int]:
        """Waveform `[1, 1, L · hop]` float (untrimmed, as the official DAC decode) and its sample rate in Hz."""
        audio = latents.audio if isinstance(latents, JointLatents) else latents
        self.cache.verify_files()
        self.cache.keep_only(("audio_vae",))
        self.claim_vram(self.last_plan, ("audio decode",))
        vae = self.cache.get("audio_vae", dtype=torch.float32)
        with torch.no_grad():
            wave = vae.decode(audio.to(self.device, torch.float32))
        return wave.float().cpu(), self.sample_rate

    def encode_audio(self, waveform: torch.Tensor) -> torch.Tensor:
        """Audio latents `[1, C, L]` (posterior mean) of a mono waveform `[1, 1, S]` at the model's rate."""
        self.cache.verify_files()
        self.cache.keep_only(("audio_vae",))
        self.claim_vram(self.last_plan, ("audio decode",))  # the audio VAE's working set, either direction
        vae = self.cache.get("audio_vae", dtype=torch.float32)
        with torch.no_grad():
            padded = vae.preprocess(waveform.to(self.device, torch.float32), self.sample_rate)
            mean, _ = vae.encode(padded)
        return mean.float()

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalized video latents `[1, z, T', H/8, W/8]` (posterior mode) of frames `[1, 3, F, H, W]` in [-1, 1]."""
        self.cache.verify_files()
        f, h, w = (int(n) for n in frames.shape[-3:])
        up = lambda n, step, rest=0: -(-(n - rest) // step) * step + rest  # noqa: E731  (round up for the plan)
        plan = self.require_fit(up(w, 16), up(h, 16), up(max(f, 1), 4, 1), 24.0, phase="VAE encode")
        self.claim_vram(plan, ("VAE encode",))
        vae = self.video_vae()
        with torch.no_grad():
            return vae.normalize(vae.encode_mode(frames.to(self.device))).float()

    # -- patches --------------------------------------------------------------------------------------
    def lora_module(self, component: str) -> nn.Module:
        """`component` built on the meta device (names and shapes, no weight read): what LoRAs are checked against.
        Kept per config and shared with this pipeline's LoRA copies (a real-size expert takes ~1 s to build)."""
        if component not in DIT_COMPONENTS:
            raise InputError(f"LoRA component {component!r} is not one of {', '.join(DIT_COMPONENTS)}")
        config = self.checkpoint.config(component)
        key = (component, json.dumps(config.to_dict(), sort_keys=True, default=str))
        built = self.__dict__.setdefault("_lora_meta", {})
        if key not in built:
            built[key] = build_meta_module(component, config)
        return built[key]

    def load_lora(self, path, expert: str = "both", allow_partial: bool = False) -> LoraWeights:
        """Read a LoRA file in any supported format, mapped onto this model (see `network.lora.load_lora`)."""
        return load_lora(path, modules=self.lora_module, expert=expert, allow_partial=allow_partial)

    def with_lora(self, patch: LoraPatch) -> "MovaPipeline":
        """A new pipeline sharing this one's modules, with `patch` stacked on its LoRA set; `self` is unchanged."""
        single = LoraPatchSet((patch,))
        for component in patch.weights.components():
            single.check(component, self.lora_module(component))
        clone = MovaPipeline(self.checkpoint, device=self.device, dtype=self.dtype, cache=self.cache,
                             lora=self.lora.with_patch(patch), memory=self.memory, speed=self.speed)
        clone._lora_meta = self.__dict__.setdefault("_lora_meta", {})
        clone.memory_host = self.memory_host
        clone.interrupt_check = self.interrupt_check
        clone.parallel = self.parallel
        clone.remote = self.remote
        return clone

    def release_all(self) -> None:
        """Drop every built module (device memory first). Used after errors and interrupts."""
        self.cache.release_all()

