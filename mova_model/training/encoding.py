"""The frozen encoders of a training step: caption -> UMT5 embeddings, clip -> video latents, first frame ->
condition, audio -> DAC latents. Run once per clip and cached (`cache.py`), never inside a training step.

Mirrors steps 1–4 of the official `MOVATrain.training_step`, with every encoder in eval mode (the official
trainer leaves UMT5 dropout on because it calls `train()` on the whole pipeline; a cached embedding must be
the deterministic one): `_get_t5_prompt_embeds(caption)`; `normalize(video_vae.encode(video).mode())`;
`[mask(frame 0) ; normalize(encode([first_frame, 0 × (F−1)]).mode())]`; `audio_vae.encode(preprocess(audio)).mode()`.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from ..checkpoint.folder import MovaCheckpoint
from ..memory.model_store import ComponentCache
from ..network.audio_vae import DacVAE
from ..network.text_encoder import TextEncoder
from ..network.video_vae import VideoVAE
from ..sampling.conditioning import first_frame_condition
from .step import EncodedClip

logger = logging.getLogger(__name__)


@torch.no_grad()
def encode_clip(text_encoder: TextEncoder, video_vae: VideoVAE, audio_vae: DacVAE, video: torch.Tensor,
                first_frame: torch.Tensor, audio: torch.Tensor, caption: str, video_fps: float,
                sample_rate: Optional[int] = None, with_empty_caption: bool = False) -> EncodedClip:
    """video [1, 3, F, H, W] and first_frame [1, 3, H, W] in [-1, 1]; audio [1, 1, S] at the codec's rate."""
    if video.ndim != 5 or video.shape[:2] != (1, 3):
        raise ValueError(f"video must be [1, 3, F, H, W], got {list(video.shape)}")
    num_frames = int(video.shape[2])
    context = text_encoder.encode([caption]).embeds.float()
    empty = text_encoder.encode([""]).embeds.float() if with_empty_caption else None
    latents = video_vae.normalize(video_vae.encode_mode(video)).float()
    condition = first_frame_condition(video_vae, first_frame, num_frames).float()
    wave = audio_vae.preprocess(audio.float().to(next(audio_vae.parameters()).device), sample_rate)
    audio_latents, _ = audio_vae.encode(wave)
    return EncodedClip(context=context.cpu(), video_latents=latents.cpu(), condition=condition.cpu(),
                       audio_latents=audio_latents.float().cpu(), video_fps=float(video_fps),
                       empty_context=None if empty is None else empty.cpu())


class ClipEncoders:
    """The three frozen encoders of a checkpoint, built on first use and released by `release()`.

    Built through the same `ComponentCache` as sampling; fp32 on the CPU, `dtype` elsewhere (video VAE and
    text encoder), the DAC always fp32 (as the official trainer).
    """

    def __init__(self, checkpoint: MovaCheckpoint, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.dtype = dtype if self.device.type != "cpu" else torch.float32
        self.cache = ComponentCache(checkpoint, self.device, self.dtype)

    def encode(self, video: torch.Tensor, first_frame: torch.Tensor, audio: torch.Tensor, caption: str,
               video_fps: float, with_empty_caption: bool = False) -> EncodedClip:
        configs = self.checkpoint.configs
        text = TextEncoder(self.checkpoint.tokenizer_dir, self.cache.get("text_encoder", dtype=self.dtype))
        vae = VideoVAE(self.cache.get("video_vae", dtype=self.dtype), configs.video_vae)
        dac = self.cache.get("audio_vae", dtype=torch.float32)
        return encode_clip(text, vae, dac, video.to(self.device), first_frame.to(self.device), audio.to(self.device),
                           caption, video_fps, int(configs.audio_vae.sample_rate), with_empty_caption)

    def release(self) -> None:
        self.cache.release_all()
