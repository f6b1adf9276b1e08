"""Continuation: a segment after a previous clip, with motion and sound carried across the seam.

For a previous clip of F₁ frames and an overlap of K = 4m + 1 frames (`extend`):
1. First frame: the new segment's first frame is the previous clip's pixel frame P = F₁ − K (the ordinary I2V
   condition MOVA was trained on; other keyframes of the new segment's conditioning, e.g. a last frame, stay).
2. Held video: the first m + 1 latent frames of the new segment are held (`HeldStream` range, offset 0): latent 0
   is the encoded first frame (the condition's own latent frame 0), latents 1..m are the previous clip's last m
   latent frames, which cover exactly its pixel frames P+1 .. F₁−1 (the Wan VAE folds 4 frames per latent after
   the first, so the two grids line up when K = 4m + 1).
3. Held audio: the audio of the same time span. Audio latents run at r = sample_rate / hop per second; the
   new segment starts at P / fps seconds, i.e. at previous audio latent o = ⌈P · r / fps⌉ (rounded up, computed
   exactly with fractions, so the joined clip is never short of audio; the new segment's audio then sits at
   most one latent, hop / sample_rate seconds, later than its video). The previous clip's latents o .. L₁−1
   (M = L₁ − o of them) are held as the new segment's first M audio latents.
4. Sample the new segment (its own prompt and seed; the pipeline's guidance, LoRA and memory plan).
5. Crossfade and join (`join`): video latents: the previous clip's last m latents fade linearly into the new
   segment's latents 1..m (`x + w·(y − x)`, w = i/(m+1)); audio latents: over the M overlap latents an
   equal-power fade (θ from 0 to π/2, weights cos θ, sin θ) normalised by the two sides' measured correlation
   ρ, `(cos θ·x + sin θ·y) / √(cos²θ + sin²θ + 2ρ·cos θ·sin θ)`, so the expected power stays constant whether
   the sides are unrelated (ρ = 0: the textbook equal-power fade) or the same (ρ = 1: unity gain). The fades
   run on latents; the convolutional decoders turn them into smooth transitions. With a `clean` hold both
   sides of the overlap are identical, so the join is exact (no fade effect); with `renoise` the new
   segment's overlap is the model's own version and the fade blends into it.
The joined clip has F₁ + F₂ − K frames and the audio latents of a single clip of that length.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from typing import Callable, Optional

import torch

from .conditioning import keyframe_condition
from .guidance import GuidanceConfig
from .pipeline import Conditioning, InputError, JointLatents, MovaPipeline
from .sampler import HOLD_MODES, HeldStream, seeded_noise
from .schedules import ScheduleError, ScheduleOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Seam:
    """Where a segment joins the clip before it (indices in the joined clip).

    frame: pixel frame where the new segment starts (its first frame, = start of the overlap);
    overlap_frames: K; video_latent: joined latent frame holding pixel `frame`; overlap_latents: m;
    audio_latent: joined audio latent where the new segment's audio starts (o); audio_overlap: M;
    seed: the segment's seed; mode: the hold mode.
    """

    frame: int
    overlap_frames: int
    video_latent: int
    overlap_latents: int
    audio_latent: int
    audio_overlap: int
    seed: int = 0
    mode: str = "clean"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Seam":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class Extension:
    """What `extend` returns: the joined clip, the new segment as sampled (before the fade), its seam."""

    joined: JointLatents
    segment: JointLatents
    seam: Seam


def check_overlap(overlap: int, num_frames: int, previous_frames: Optional[int] = None) -> None:
    """Raise `InputError` unless `overlap` K fits the latent grid (K = 4m + 1, so the held video is whole latent
    frames: pixel frame K−1 ends latent frame m) and is shorter than the segment (and the previous clip)."""
    if not isinstance(overlap, int) or overlap < 1 or (overlap - 1) % 4:
        raise InputError(f"overlap must be 4m+1 frames (1, 5, 9, 13, ...) so it covers whole latent frames, got {overlap}")
    if overlap >= num_frames:
        raise InputError(f"overlap ({overlap} frames) must be shorter than the segment ({num_frames} frames)")
    if previous_frames is not None and overlap >= previous_frames:
        raise InputError(f"overlap ({overlap} frames) must be shorter than the previous clip ({previous_frames} frames)")


def audio_start_latent(start_frame: int, video_fps: float, sample_rate: int, hop: int) -> int:
    """Audio latent index at pixel frame `start_frame`: ⌈start_frame / fps · sample_rate / hop⌉ (exact fractions;
    fps as its nearest fraction with denominator ≤ 1001, e.g. 23.976 → 24000/1001)."""
    fps = Fraction(video_fps).limit_denominator(1001)
    return math.ceil(Fraction(start_frame) / fps * sample_rate / hop)


def check_previous(pipeline: MovaPipeline, previous: JointLatents, conditioning: Conditioning, overlap: int) -> None:
    """Raise `InputError` unless `previous` is a MOVA clip this segment can continue."""
    if not isinstance(previous, JointLatents):
        raise InputError("previous: not a MOVA latent (connect a MOVA Joint Sampler or MOVA Extend output)")
    c = conditioning
    if (previous.width, previous.height) != (c.width, c.height):
        raise InputError(f"previous clip is {previous.width}x{previous.height} but the new segment's conditioning is "
                         f"{c.width}x{c.height}; use the same size")
    if abs(previous.video_fps - c.video_fps) > 1e-6:
        raise InputError(f"previous clip is at {previous.video_fps:g} fps but the new segment's conditioning is at "
                         f"{c.video_fps:g} fps; use the same fps")
    if previous.sample_rate != pipeline.sample_rate:
        raise InputError(f"previous clip's audio is at {previous.sample_rate} Hz, this model's at {pipeline.sample_rate} Hz")
    video_shape, audio_shape = pipeline.latent_shapes(previous.width, previous.height, previous.num_frames, previous.video_fps)
    if tuple(previous.video.shape) != video_shape or tuple(previous.audio.shape) != audio_shape:
        raise InputError(f"previous latents are video {list(previous.video.shape)} and audio {list(previous.audio.shape)}, "
                         f"but a {previous.num_frames}-frame clip has {list(video_shape)} and {list(audio_shape)} "
                         "(made by another model?)")
    check_overlap(overlap, c.num_frames, previous.num_frames)


def _frame_at(pipeline: MovaPipeline, video: torch.Tensor, index: int) -> torch.Tensor:
    """Pixel frame `index` `[1, 3, H, W]` in [-1, 1] of the decoded clip, decoding chunk by chunk (one chunk
    in memory) and stopping once it is reached."""
    seen = 0
    for chunk in pipeline.video_vae().decode_chunks(video.to(pipeline.device)):
        if index < seen + chunk.shape[2]:
            return chunk[:, :, index - seen].float().cpu()
        seen += chunk.shape[2]
    raise ValueError(f"frame {index} is beyond the decoded {seen} frames")


def linear_fade(previous: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Linear fade over dim 2 of two `[1, C, n, ...]` tensors: w = (i + 1)/(n + 1) towards `new`, as
    `x + w·(y − x)` so equal sides stay bit-exact."""
    n = previous.shape[2]
    shape = [1, 1, n] + [1] * (previous.dim() - 3)
    w = torch.arange(1, n + 1, dtype=torch.float32).div(n + 1).view(shape).to(previous.device)
    return previous + w * (new - previous)


def equal_power_fade(previous: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Correlation-normalised equal-power fade over the last dim of two `[1, C, n]` tensors (module docstring)."""
    if torch.equal(previous, new):
        return previous.clone()
    n = previous.shape[-1]
    theta = (torch.arange(n, dtype=torch.float64) + 0.5) / n * (math.pi / 2)
    a, b = torch.cos(theta), torch.sin(theta)
    x, y = previous.double(), new.double()
    rho = float((x * y).sum() / (x.norm() * y.norm()).clamp_min(1e-12))
    rho = min(max(rho, 0.0), 1.0)
    gain = torch.sqrt(a * a + b * b + 2 * rho * a * b)
    return ((a * x + b * y) / gain).to(previous.dtype)


def join(previous: JointLatents, segment: JointLatents, seam: Seam, audio_length: int) -> JointLatents:
    """The joined clip: previous, faded overlap, rest of the segment (module docstring, step 5).

    audio_length: audio latents of a single clip of the joined length (extra latents are dropped; if rounding
    ever left it one short, the last latent is repeated).
    """
    m = seam.overlap_latents
    t1 = previous.video.shape[2]
    pv, sv = previous.video.float().cpu(), segment.video.float().cpu()
    video = torch.cat([pv[:, :, :t1 - m], linear_fade(pv[:, :, t1 - m:], sv[:, :, 1:m + 1]), sv[:, :, m + 1:]], dim=2)
    o, big_m = seam.audio_latent, seam.audio_overlap
    pa, sa = previous.audio.float().cpu(), segment.audio.float().cpu()
    audio = torch.cat([pa[:, :, :o], equal_power_fade(pa[:, :, o:o + big_m], sa[:, :, :big_m]), sa[:, :, big_m:]], dim=2)
    if audio.shape[2] < audio_length:
        audio = torch.cat([audio, audio[:, :, -1:].expand(-1, -1, audio_length - audio.shape[2])], dim=2)
    frames = previous.num_frames + segment.num_frames - seam.overlap_frames
    return JointLatents(video=video, audio=audio[:, :, :audio_length].contiguous(), width=previous.width,
                        height=previous.height, num_frames=frames, video_fps=previous.video_fps,
                        sample_rate=previous.sample_rate, segments=tuple(previous.segments) + (seam,))


def extend(pipeline: MovaPipeline, previous: JointLatents, conditioning: Conditioning, overlap: int, seed: int,
           steps: int, guidance: Optional[GuidanceConfig] = None, hold_mode: str = "clean",
           callback: Optional[Callable] = None, schedule: Optional[ScheduleOptions] = None) -> Extension:
    """Sample a segment continuing `previous` and join it (module docstring). `conditioning` gives the new
    segment's prompt, frame count and any keyframes other than its first frame (which comes from `previous`).
    `schedule`: the solver, shift and sigma list of the segment's run (None: the official Euler run).
    Raises `InputError` for a previous clip or overlap that cannot be continued, before any sampling."""
    if hold_mode not in HOLD_MODES:
        raise InputError(f"hold mode must be one of {', '.join(HOLD_MODES)}, got {hold_mode!r}")
    check_previous(pipeline, previous, conditioning, overlap)
    if schedule is not None:
        try:
            schedule.validate()
        except ScheduleError as exc:
            raise InputError(str(exc)) from None
    c = conditioning
    m = (overlap - 1) // 4
    start = previous.num_frames - overlap
    hop = pipeline.configs.audio_vae.hop_length
    o = audio_start_latent(start, previous.video_fps, previous.sample_rate, hop)
    big_m = previous.audio.shape[2] - o
    video_shape, audio_shape = pipeline.latent_shapes(c.width, c.height, c.num_frames, c.video_fps)
    if not 1 <= big_m <= audio_shape[2]:
        raise InputError(f"overlap of {overlap} frames gives {big_m} audio latents, the segment has {audio_shape[2]}")

    first = _frame_at(pipeline, previous.video, start)
    keyframes = {i: im for i, im in (c.keyframes or {}).items() if i != 0}
    keyframes[0] = first
    with torch.no_grad():
        condition = keyframe_condition(pipeline.video_vae(), {i: im.to(pipeline.device) for i, im in keyframes.items()},
                                       c.num_frames).float()
    segment_conditioning = replace(c, condition=condition, keyframes=keyframes, text_only=False)
    z = video_shape[1]
    held_video = torch.cat([condition[:, 4:4 + z, :1].cpu(), previous.video[:, :, previous.video.shape[2] - m:].float().cpu()], dim=2)
    held_audio = previous.audio[:, :, o:].float().cpu()
    holds = [HeldStream("video", held_video, hold_mode, offset=0), HeldStream("audio", held_audio, hold_mode, offset=0)]
    logger.info("continuing a %d-frame clip from frame %d: %d overlap frames (%d video latents, %d audio latents "
                "from latent %d), %s hold, seed %d", previous.num_frames, start, overlap, m + 1, big_m, o, hold_mode, seed)
    segment = pipeline.sample(segment_conditioning, seed=seed, steps=steps, guidance=guidance, held=holds,
                              noise=seeded_noise(seed, video_shape, audio_shape), callback=callback, schedule=schedule)
    seam = Seam(frame=start, overlap_frames=overlap, video_latent=previous.video.shape[2] - m - 1, overlap_latents=m,
                audio_latent=o, audio_overlap=big_m, seed=int(seed), mode=hold_mode)
    total = previous.num_frames + c.num_frames - overlap
    _, joined_audio = pipeline.latent_shapes(c.width, c.height, total, c.video_fps)
    return Extension(joined=join(previous, segment, seam, joined_audio[2]), segment=segment, seam=seam)
