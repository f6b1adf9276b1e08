"""MOVA's video tower: a Wan-2.2-style DiT over (1, 2, 2) patches of the video latent (official `WanModel`).

One class serves both video experts (`video_dit` for high noise, `video_dit_2` for low noise).
State-dict keys are those of the official class: `patch_embedding.*`, `text_embedding.{0,2}.*`,
`time_embedding.{0,2}.*`, `time_projection.1.*`, `blocks.{i}.*`, `head.head.*`, `head.modulation`.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Tuple

import torch
from einops import rearrange

from ..checkpoint.configs import VideoDiTConfig
from .dit_block import DiTTower
from .ops import Operations
from .rope import video_rope, video_rope_split

logger = logging.getLogger(__name__)


class VideoDiT(DiTTower):
    """Video DiT. Input channels are noisy latent (z), first-frame mask (4) and condition latent (z): 36 for MOVA.

    Pieces used by the joint denoiser: `embed_time`, `embed_text`, `patchify`, `rope`, `blocks`, `head_out`.
    """

    def __init__(self, config: VideoDiTConfig, ops: Operations) -> None:
        self.patch_size: Tuple[int, int, int] = tuple(int(p) for p in config.patch_size)  # type: ignore[assignment]
        video_rope_split(config.dim // config.num_heads)  # fail at build time on a head_dim the 3-D RoPE cannot split
        patch_embedding = ops.Conv3d(config.in_dim, config.dim, kernel_size=self.patch_size, stride=self.patch_size)
        super().__init__(config, ops, patch_volume=math.prod(self.patch_size), patch_embedding=patch_embedding)

    def patchify(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
        """[B, in_dim, T, H, W] -> (tokens [B, f*h*w, dim], grid (f, h, w)), tokens frame-major then row then column.

        Mirrors `WanModel.patchify` (including its channels-last-3d input layout for the convolution).
        """
        x = self.patch_embedding(x.contiguous(memory_format=torch.channels_last_3d))
        f, h, w = x.shape[2:]
        return rearrange(x, "b c f h w -> b (f h w) c").contiguous(), (int(f), int(h), int(w))

    def unpatchify(self, x: torch.Tensor, grid: Tuple[int, int, int]) -> torch.Tensor:
        """[B, f*h*w, pt*ph*pw*out_dim] (channel fastest) -> [B, out_dim, f*pt, h*ph, w*pw] (official `unpatchify`)."""
        f, h, w = grid
        pt, ph, pw = self.patch_size
        return rearrange(x, "b (f h w) (x y z c) -> b c (f x) (h y) (w z)", f=f, h=h, w=w, x=pt, y=ph, z=pw)

    def rope(self, grid: Tuple[int, int, int], device: Optional[torch.device] = None) -> torch.Tensor:
        """3-D self-attention RoPE of the token grid: complex128 [f*h*w, 1, head_dim/2] (see `rope.video_rope`)."""
        return video_rope(self.head_dim, grid, device)

    def head_out(self, x: torch.Tensor, e: torch.Tensor, grid: Tuple[int, int, int]) -> torch.Tensor:
        """Output head + unpatchify: tokens [B, N, dim], e [B, dim] -> [B, out_dim, T, H, W] in x's dtype."""
        return self.unpatchify(self.head(x, e), grid)
