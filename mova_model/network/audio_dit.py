"""MOVA's audio tower: the same DiT blocks over one token per DAC latent frame (official `WanAudioModel`).

State-dict keys are those of the official class (`patch_embedding` is a Conv1d with kernel = stride = 1).
Only `vae_type="dac"` (plain 1-D RoPE) is supported; `AudioDiTConfig` rejects the legacy "oobleck" layout.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Tuple

import torch
from einops import rearrange

from ..checkpoint.configs import AudioDiTConfig
from .dit_block import DiTTower
from .ops import Operations
from .rope import audio_rope

logger = logging.getLogger(__name__)


class AudioDiT(DiTTower):
    """Audio DiT over audio latents [B, C, L] (C = 128, 50 latent frames per second for MOVA's DAC).

    Same API as `VideoDiT`, with a 1-element grid `(L,)`.
    """

    def __init__(self, config: AudioDiTConfig, ops: Operations) -> None:
        self.patch_size: Tuple[int] = (int(config.patch_size[0]),)
        patch_embedding = ops.Conv1d(config.in_dim, config.dim, kernel_size=self.patch_size, stride=self.patch_size)
        super().__init__(config, ops, patch_volume=math.prod(self.patch_size), patch_embedding=patch_embedding)

    def patchify(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int]]:
        """[B, in_dim, L] -> (tokens [B, L/p, dim], grid (L/p,)) (official `WanAudioModel.patchify`)."""
        x = self.patch_embedding(x)
        return rearrange(x, "b c f -> b f c").contiguous(), (int(x.shape[2]),)

    def unpatchify(self, x: torch.Tensor, grid: Tuple[int]) -> torch.Tensor:
        """[B, f, p*out_dim] -> [B, out_dim, f*p] (official `unpatchify`)."""
        return rearrange(x, "b f (p c) -> b c (f p)", f=grid[0], p=self.patch_size[0])

    def rope(self, grid: Tuple[int], device: Optional[torch.device] = None) -> torch.Tensor:
        """1-D self-attention RoPE over the whole head: complex128 [f, 1, head_dim/2] (see `rope.audio_rope`)."""
        return audio_rope(self.head_dim, grid[0], device)

    def head_out(self, x: torch.Tensor, e: torch.Tensor, grid: Tuple[int]) -> torch.Tensor:
        """Output head + unpatchify: tokens [B, f, dim], e [B, dim] -> [B, out_dim, L] in x's dtype."""
        return self.unpatchify(self.head(x, e), grid)
