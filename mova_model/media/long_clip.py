"""Decoding and writing long (joined) clips without holding more than one chunk beside the output.

- `decoded_frame_chunks`: the video latents decoded a few latent frames at a time (`VideoVAE.decode_chunks`,
  equal to a whole decode: the causal cache carries over), each chunk as ComfyUI frames `[n, H, W, 3]` 0..1.
- `decode_frames`: all frames `[F, H, W, 3]` float 0..1 into one preallocated tensor (the output, nothing more).
- `decode_clip_audio`: the DAC waveform trimmed to the clip (`int(rate · frames / fps)` samples).
- `write_clip_mp4`: chunks straight into the streaming `Mp4Writer` as uint8, so the mp4 of a 24 s clip never
  needs the float frames of the whole clip in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Tuple

import torch

from .av_io import Mp4Writer

if TYPE_CHECKING:  # pragma: no cover
    from ..sampling.pipeline import JointLatents, MovaPipeline

DEFAULT_CHUNK_LATENT_FRAMES = 4
"""Latent frames per decode chunk: 13–16 pixel frames, about the VAE decode memory of a 16-frame clip."""


def decoded_frame_chunks(pipeline: "MovaPipeline", latents: "JointLatents",
                         chunk_latent_frames: int = DEFAULT_CHUNK_LATENT_FRAMES) -> Iterator[torch.Tensor]:
    """Yield the clip's frames chunk by chunk, `[n, H, W, 3]` float 0..1 on the CPU (`x/2 + 0.5` clamped)."""
    vae = pipeline.video_vae()
    for chunk in vae.decode_chunks(latents.video.to(pipeline.device), chunk_latent_frames):
        yield (chunk[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0).contiguous().cpu()


def decode_frames(pipeline: "MovaPipeline", latents: "JointLatents",
                  chunk_latent_frames: int = DEFAULT_CHUNK_LATENT_FRAMES) -> torch.Tensor:
    """All frames `[F, H, W, 3]` float 0..1, F = `latents.num_frames`, filled chunk by chunk."""
    out = torch.empty(latents.num_frames, latents.height, latents.width, 3, dtype=torch.float32)
    filled = 0
    for chunk in decoded_frame_chunks(pipeline, latents, chunk_latent_frames):
        out[filled:filled + chunk.shape[0]] = chunk
        filled += chunk.shape[0]
    if filled != latents.num_frames:
        raise ValueError(f"the video latents decode to {filled} frames, the clip has {latents.num_frames}")
    return out


def decode_clip_audio(pipeline: "MovaPipeline", latents: "JointLatents") -> Tuple[torch.Tensor, int]:
    """Waveform `[1, 1, S]` trimmed to the clip, S = `int(rate · frames / fps)`, and its rate in Hz."""
    from ..sampling.pipeline import clip_audio_samples

    waveform, rate = pipeline.decode_audio(latents)
    samples = clip_audio_samples(latents.num_frames, latents.video_fps, rate)
    if waveform.shape[-1] < samples:
        raise ValueError(f"the audio latents decode to {waveform.shape[-1]} samples, the clip needs {samples}")
    return waveform[..., :samples].contiguous(), rate


def write_clip_mp4(pipeline: "MovaPipeline", latents: "JointLatents", path: Path | str,
                   chunk_latent_frames: int = DEFAULT_CHUNK_LATENT_FRAMES) -> Path:
    """Decode and write the clip as an mp4 (atomic); returns its path."""
    waveform, rate = decode_clip_audio(pipeline, latents)
    with Mp4Writer(path, latents.width, latents.height, latents.video_fps, waveform[0], rate) as writer:
        for chunk in decoded_frame_chunks(pipeline, latents, chunk_latent_frames):
            writer.add_frames((chunk * 255).round().to(torch.uint8).numpy())
        if writer.frames_written != latents.num_frames:  # raised inside: the partial file is removed
            raise ValueError(f"the video latents decode to {writer.frames_written} frames, the clip has {latents.num_frames}")
    return writer.path
