"""Held-stream inputs for audio-driven video (A2V) and video-driven audio (V2A).

`prepare_driving_audio` turns any waveform (any rate, any channel count, any length) into the mono
waveform of exactly one clip at the DAC's rate; `prepare_driving_video` turns a batch of frames into the
clip's frame count at the clip's size. Both return a sentence saying what they changed, so the node can
show it. `held_audio` / `held_video` then encode with the pipeline's VAEs and wrap a `HeldStream`;
`encode_clip` encodes frames and (optionally) their sound the same way into a clip to restyle (denoise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import List, Optional

import numpy as np
import torch

from ..media.av_io import resample_audio
from ..media.image_preprocess import crop_and_resize
from .pipeline import Conditioning, InputError, JointLatents, MovaPipeline, clip_audio_samples
from .sampler import HOLD_MODES, HeldStream


@dataclass
class Prepared:
    """A prepared tensor and the human-readable notes on what was changed to fit the clip."""

    tensor: torch.Tensor
    notes: List[str]

    @property
    def message(self) -> str:
        return "; ".join(self.notes) if self.notes else "used as given"


def clip_samples(conditioning: Conditioning, sample_rate: int) -> int:
    """Samples of the clip at `sample_rate` (official `int(rate · frames / fps)`)."""
    return clip_audio_samples(conditioning.num_frames, conditioning.video_fps, sample_rate)


def prepare_driving_audio(waveform: torch.Tensor, sample_rate: int, conditioning: Conditioning, target_rate: int) -> Prepared:
    """`waveform` `[B, C, S]` or `[C, S]` at `sample_rate` Hz -> mono `[1, 1, N]` at `target_rate` Hz, N = the
    clip's sample count (trimmed or zero-padded, said in the notes)."""
    if waveform.dim() == 3:
        if waveform.shape[0] != 1:
            raise InputError(f"audio: expected one clip, got a batch of {waveform.shape[0]}")
        waveform = waveform[0]
    if waveform.dim() != 2 or waveform.shape[-1] == 0:
        raise InputError(f"audio: expected a waveform [channels, samples] with samples, got shape {list(waveform.shape)}")
    if not torch.isfinite(waveform).all():
        raise InputError("audio: the waveform contains NaN or infinite values")
    notes = []
    channels = waveform.shape[0]
    mono = resample_audio(waveform, int(sample_rate), int(target_rate), 1)
    if sample_rate != target_rate:
        notes.append(f"resampled {sample_rate} Hz -> {target_rate} Hz")
    if channels > 1:
        notes.append(f"mixed {channels} channels to mono")
    wanted = clip_samples(conditioning, target_rate)
    have = mono.shape[1]
    seconds = wanted / target_rate
    if have > wanted:
        mono = mono[:, :wanted]
        notes.append(f"trimmed from {have / target_rate:.2f} s to the clip's {seconds:.2f} s")
    elif have < wanted:
        mono = torch.nn.functional.pad(mono, (0, wanted - have))
        notes.append(f"padded with silence from {have / target_rate:.2f} s to the clip's {seconds:.2f} s")
    return Prepared(mono.reshape(1, 1, -1).clamp(-1, 1), notes)


def source_frame_indices(count: int, clip_fps: float, source_fps: float) -> List[int]:
    """Source frame shown at each clip frame's time `i / clip_fps`: the nearest one at `source_fps`
    (`floor(i · source_fps / clip_fps + 1/2)`), for `count` clip frames. Like a video player's frame-rate
    conversion, frames are repeated (source slower) or skipped (source faster); none are blended."""
    step = _frame_step(clip_fps, source_fps)
    return [math.floor(i * step + Fraction(1, 2)) for i in range(count)]


def _frame_step(clip_fps: float, source_fps: float) -> Fraction:
    return Fraction(source_fps).limit_denominator(1001) / Fraction(clip_fps).limit_denominator(1001)


def _usable_frames(count: int, clip_fps: float, source_fps: float) -> int:
    """Largest 4k+1 clip length whose frames all exist among `count` source frames: the last clip frame
    `n - 1` needs `(n - 1) · step + 1/2 < count`."""
    last = math.ceil((count - Fraction(1, 2)) / _frame_step(clip_fps, source_fps)) - 1
    return last // 4 * 4 + 1


def usable_frames(count: int, clip_fps: float, source_fps: float = 0.0) -> int:
    """The longest clip (4k+1 frames at `clip_fps`) that `count` video frames at `source_fps` cover (0: unknown,
    one video frame per clip frame); 0 when not even one frame."""
    if count < 1:
        return 0
    if source_fps == 0 or abs(source_fps - clip_fps) <= 1e-6 * clip_fps:
        return (count - 1) // 4 * 4 + 1
    return max(_usable_frames(count, clip_fps, source_fps), 0)


def prepare_driving_video(frames: torch.Tensor, conditioning: Conditioning, source_fps: float = 0.0) -> Prepared:
    """ComfyUI IMAGE `[F, H, W, 3]` 0..1 -> `[1, 3, F', H', W']` in [-1, 1] at the clip's size and frame count.

    `source_fps`: the video's frame rate (0: unknown, frames are then taken one per clip frame). When it differs
    from the clip's fps the frames are taken at the clip's times (`source_frame_indices`), so the held video
    keeps its real speed; frames beyond the clip's duration are dropped. A video shorter than the clip is an
    error (V2A needs every frame). Each frame is center-cropped and resized like the first frame (official
    `crop_and_resize`). The notes say what was done.
    """
    if frames.dim() != 4 or frames.shape[-1] not in (3, 4):
        raise InputError(f"frames: expected a ComfyUI IMAGE batch [frames, height, width, 3], got {list(frames.shape)}")
    if not (source_fps >= 0 and math.isfinite(source_fps)):
        raise InputError(f"source_fps must be 0 (unknown) or the video's frames per second, got {source_fps}")
    count = frames.shape[0]
    wanted = conditioning.num_frames
    clip_fps = conditioning.video_fps
    notes = []
    if count == 0:
        raise InputError(f"frames: the clip needs {wanted} frames (4k+1) but 0 were given")
    same_rate = source_fps == 0 or abs(source_fps - clip_fps) <= 1e-6 * clip_fps
    if same_rate:
        if count < wanted:
            usable = (count - 1) // 4 * 4 + 1
            raise InputError(f"frames: the clip needs {wanted} frames (4k+1) but {count} were given; set the "
                             f"conditioner's frames to {usable} or fewer, or give a longer video")
        if count > wanted:
            notes.append(f"used the first {wanted} of {count} frames (the clip length is 4k+1 = {wanted})")
        if source_fps == 0:
            notes.append(f"source_fps not given: one video frame per clip frame, as if the video were at the clip's "
                         f"{clip_fps:g} fps (connect the video's fps to source_fps if it has another rate)")
        indices = list(range(wanted))
    else:
        indices = source_frame_indices(wanted, clip_fps, source_fps)
        if indices[-1] >= count:
            usable = _usable_frames(count, clip_fps, source_fps)
            raise InputError(
                f"frames: the clip is {wanted} frames at {clip_fps:g} fps ({wanted / clip_fps:.2f} s) but the video "
                f"has {count} frames at {source_fps:g} fps ({count / source_fps:.2f} s); set the conditioner's "
                f"frames to {usable} or fewer, or give a longer video")
        notes.append(f"took {wanted} frames at the clip's {clip_fps:g} fps from the {source_fps:g} fps video (nearest "
                     f"frame at each clip time, source frames {indices[0]}..{indices[-1]}), covering "
                     f"{wanted / clip_fps:.2f} s of its {count / source_fps:.2f} s")
    images = (frames[indices, :, :, :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    h, w = conditioning.height, conditioning.width
    if images.shape[1:3] != (h, w):
        notes.append(f"center-cropped and resized {images.shape[2]}x{images.shape[1]} -> {w}x{h}")
        images = np.stack([crop_and_resize(image, h, w) for image in images])
    video = torch.from_numpy(images).float().div(127.5).sub(1.0)  # [F, H, W, 3] in [-1, 1]
    return Prepared(video.permute(3, 0, 1, 2).unsqueeze(0).contiguous(), notes)


def _check_mode(mode: str) -> str:
    if mode not in HOLD_MODES:
        raise InputError(f"mode must be one of {', '.join(HOLD_MODES)}, got {mode!r}")
    return mode


def encoded_audio(pipeline: MovaPipeline, waveform: torch.Tensor, sample_rate: int, conditioning: Conditioning) -> tuple:
    """(DAC latents `[1, C, L]` of the waveform prepared as `prepare_driving_audio`, cut to the clip's L; notes)."""
    c = conditioning
    prepared = prepare_driving_audio(waveform, sample_rate, c, pipeline.sample_rate)
    _, audio_shape = pipeline.latent_shapes(c.width, c.height, c.num_frames, c.video_fps)
    return pipeline.encode_audio(prepared.tensor)[..., : audio_shape[-1]], prepared.message


def encoded_video(pipeline: MovaPipeline, frames: torch.Tensor, conditioning: Conditioning,
                  source_fps: float = 0.0) -> tuple:
    """(normalized Wan VAE latents `[1, z, T', H/8, W/8]` of the frames prepared as `prepare_driving_video`; notes)."""
    prepared = prepare_driving_video(frames, conditioning, source_fps)
    return pipeline.encode_video(prepared.tensor), prepared.message


def held_audio(pipeline: MovaPipeline, waveform: torch.Tensor, sample_rate: int, conditioning: Conditioning,
               mode: str = "clean") -> tuple:
    """(HeldStream of DAC latents `[1, C, L]`, notes) for A2V."""
    latents, notes = encoded_audio(pipeline, waveform, sample_rate, conditioning)
    return HeldStream("audio", latents, _check_mode(mode)), notes


def held_video(pipeline: MovaPipeline, frames: torch.Tensor, conditioning: Conditioning, mode: str = "clean",
               source_fps: float = 0.0) -> tuple:
    """(HeldStream of normalized Wan VAE latents `[1, z, T', H/8, W/8]`, notes) for V2A; `source_fps` as in
    `prepare_driving_video`."""
    latents, notes = encoded_video(pipeline, frames, conditioning, source_fps)
    return HeldStream("video", latents, _check_mode(mode)), notes


def encode_clip(pipeline: MovaPipeline, frames: torch.Tensor, conditioning: Conditioning,
                waveform: Optional[torch.Tensor] = None, sample_rate: int = 0, source_fps: float = 0.0) -> tuple:
    """(JointLatents, notes) of a clip to restyle: the frames (ComfyUI IMAGE `[F, H, W, 3]` 0..1, prepared as
    `prepare_driving_video`: the clip's size, frame count and fps) through the video VAE, and the waveform
    (`[B, C, S]` or `[C, S]` at `sample_rate` Hz, prepared as `prepare_driving_audio`) through the DAC. Without a
    waveform the audio latents are zeros and `has_audio` is False (a restyle then generates the sound)."""
    c = conditioning
    video_latents, video_notes = encoded_video(pipeline, frames, c, source_fps)
    notes = [f"video: {video_notes}"]
    if waveform is None:
        _, audio_shape = pipeline.latent_shapes(c.width, c.height, c.num_frames, c.video_fps)
        audio_latents = torch.zeros(audio_shape, dtype=torch.float32)
        notes.append("audio: none given (a restyle generates the sound)")
    else:
        audio_latents, audio_notes = encoded_audio(pipeline, waveform, sample_rate, c)
        notes.append(f"audio: {audio_notes}")
    latents = JointLatents(video=video_latents.float().cpu(), audio=audio_latents.float().cpu(), width=c.width,
                           height=c.height, num_frames=c.num_frames, video_fps=c.video_fps,
                           sample_rate=pipeline.sample_rate, has_audio=waveform is not None)
    return latents, "; ".join(notes)
