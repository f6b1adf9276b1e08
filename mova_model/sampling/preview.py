"""Cheap previews of video latents while sampling (no VAE decode)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch


def latent_preview_rgb(video_latents: torch.Tensor, rgb_factors: Optional[Sequence[Sequence[float]]] = None,
                       rgb_bias: Optional[Sequence[float]] = None, frame: Optional[int] = None) -> np.ndarray:
    """One latent frame of `video_latents` `[1, z, T', h, w]` as uint8 RGB `[h, w, 3]`.

    With `rgb_factors` (`[z][3]`, e.g. a host's table for the Wan 2.1 latent space) the frame is projected
    linearly to RGB; without, the first three channels are min-max normalized (a shape-only preview).
    `frame` defaults to the middle latent frame.
    """
    latents = video_latents.detach().float().cpu()[0]
    index = latents.shape[1] // 2 if frame is None else frame
    x = latents[:, index]  # [z, h, w]
    if rgb_factors is not None and len(rgb_factors) == x.shape[0]:
        factors = torch.tensor(rgb_factors, dtype=torch.float32)  # [z, 3]
        rgb = torch.einsum("chw,cr->hwr", x, factors)
        if rgb_bias is not None:
            rgb = rgb + torch.tensor(rgb_bias, dtype=torch.float32)
        rgb = ((rgb + 1) / 2).clamp(0, 1)
    else:
        channels = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)
        low = channels.amin(dim=(1, 2), keepdim=True)
        high = channels.amax(dim=(1, 2), keepdim=True)
        rgb = ((channels - low) / (high - low).clamp_min(1e-6)).permute(1, 2, 0)
    return (rgb * 255).round().to(torch.uint8).numpy()
