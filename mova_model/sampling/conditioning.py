"""I2V first-frame conditioning and keyframes: the 4-channel frame mask and the encoded, normalized clip.

Mirrors `MOVA.prepare_latents` (`mova/diffusion/pipelines/pipeline_mova.py`): with `last_image=None`
the whole F-frame clip (the image, then F−1 zero frames, i.e. mid-grey in [-1, 1]) is encoded by the video
VAE, the posterior mode is normalized, and a mask marking latent frame 0 is put in front of it on the channel
dim. With `last_image` the clip is `[first, zeros × (F−2), last]` and the mask is 1 on pixel frames 0 and F−1.
Each denoising step the DiT input is `cat([noisy latents, condition], dim=1)`.

`keyframe_condition` generalizes both: any set of pixel-frame positions, each frame at its place in the VAE
input and zeros elsewhere, mask 1 on exactly those pixel frames. First, first+last are the official
conditions (parity fixtures); a last frame alone or frames in the middle are beyond what MOVA was trained on.
"""

from __future__ import annotations

import torch

from typing import Iterable, Mapping

from ..network.video_vae import VideoVAE

MASK_CHANNELS = 4
"""Channels of the frame mask: one per pixel frame folded into a latent frame (the VAE's temporal factor 4)."""


def latent_frames(num_frames: int, temporal_factor: int = MASK_CHANNELS) -> int:
    """Latent frame count T' = (F − 1)//4 + 1; F must be ≡ 1 (mod 4) as the official `check_inputs` requires."""
    if num_frames < 1 or (num_frames - 1) % temporal_factor:
        raise ValueError(f"num_frames must be 1 more than a multiple of {temporal_factor} (e.g. 97, 193), got {num_frames}")
    return (num_frames - 1) // temporal_factor + 1


def first_frame_mask(num_frames: int, latent_frames_count: int, h: int, w: int,
                     dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Frame mask [1, 4, T', h, w]: 1 where a pixel frame is given (frame 0), 0 elsewhere.

    Built like the official code: a per-pixel-frame mask [F] (1 for frame 0), frame 0 repeated 4 times
    (F + 3 = 4·T' entries), folded to [T', 4] and moved to channels; so latent frame 0 is all ones.
    """
    return keyframe_mask(num_frames, latent_frames_count, h, w, (0,), dtype=dtype, device=device)


def keyframe_mask(num_frames: int, latent_frames_count: int, h: int, w: int, positions: Iterable[int],
                  dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Frame mask [1, 4, T', h, w]: 1 on the given pixel frames, 0 elsewhere.

    Official folding: a per-pixel-frame mask [F], frame 0's entry repeated 4 times (F + 3 = 4·T' entries),
    viewed as [T', 4] and moved to channels. Pixel frame p ≥ 1 lands in latent frame (p + 3)//4, channel
    (p + 3) % 4; so the last frame F−1 is channel 3 of the last latent frame.
    """
    t_lat = latent_frames(num_frames)
    if t_lat != latent_frames_count:
        raise ValueError(f"{num_frames} frames give {t_lat} latent frames, not {latent_frames_count}")
    per_frame = torch.zeros(num_frames, dtype=dtype, device=device)
    for position in positions:
        if not 0 <= int(position) < num_frames:
            raise ValueError(f"keyframe position {position} is outside the clip's frames 0..{num_frames - 1}")
        per_frame[int(position)] = 1
    expanded = torch.cat([per_frame[:1].repeat(MASK_CHANNELS), per_frame[1:]])
    folded = expanded.view(t_lat, MASK_CHANNELS).transpose(0, 1)
    return folded.view(1, MASK_CHANNELS, t_lat, 1, 1).expand(1, MASK_CHANNELS, t_lat, h, w).contiguous()


@torch.no_grad()
def first_frame_condition(video_vae: VideoVAE, image: torch.Tensor, num_frames: int) -> torch.Tensor:
    """I2V condition [1, 4 + z_dim, T', H/8, W/8], float32: mask channels first, then normalized latents.

    image: [1, 3, H, W] in [-1, 1] (from `image_preprocess.to_model_range`); H and W multiples of 8
    (the official pipeline requires multiples of 16). The clip `[image, zeros × (F−1)]` is encoded whole.
    """
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f"image must be [1, 3, H, W], got {list(image.shape)}")
    _, _, height, width = image.shape
    factor = int(video_vae.config.scale_factor_spatial)
    if height % factor or width % factor:
        raise ValueError(f"image size {height}x{width} is not a multiple of {factor}")
    return keyframe_condition(video_vae, {0: image}, num_frames)


@torch.no_grad()
def keyframe_condition(video_vae: VideoVAE, keyframes: Mapping[int, torch.Tensor], num_frames: int) -> torch.Tensor:
    """Condition [1, 4 + z_dim, T', H/8, W/8], float32, from frames at chosen pixel-frame positions.

    keyframes: {pixel frame index (negative counts from the end): image [1, 3, H, W] in [-1, 1]}, at least one.
    The VAE encodes an F-frame clip holding each image at its index and zeros elsewhere; the mask is 1 on those
    indices. `{0: first}` is the official I2V condition, `{0: first, -1: last}` the official `last_image` one.
    """
    if not keyframes:
        raise ValueError("at least one keyframe is needed")
    factor = int(video_vae.config.scale_factor_spatial)
    t_lat = latent_frames(num_frames, int(video_vae.config.scale_factor_temporal))
    placed = {}
    for position, image in keyframes.items():
        index = int(position) + num_frames if int(position) < 0 else int(position)
        if not 0 <= index < num_frames:
            raise ValueError(f"keyframe position {position} is outside the clip's frames 0..{num_frames - 1}")
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise ValueError(f"image must be [1, 3, H, W], got {list(image.shape)}")
        placed[index] = image.to(torch.float32)
    shapes = {tuple(image.shape) for image in placed.values()}
    if len(shapes) != 1:
        raise ValueError(f"keyframes must all have the same size, got {sorted(shapes)}")
    _, _, height, width = next(iter(shapes))
    if height % factor or width % factor:
        raise ValueError(f"image size {height}x{width} is not a multiple of {factor}")
    first = next(iter(placed.values()))
    # Built from whole pieces (images and zero runs) so {0: image} is the same tensor as the official cat.
    pieces, cursor = [], 0
    for index in sorted(placed):
        if index > cursor:
            pieces.append(first.new_zeros(1, 3, index - cursor, height, width))
        pieces.append(placed[index].unsqueeze(2))
        cursor = index + 1
    if cursor < num_frames:
        pieces.append(first.new_zeros(1, 3, num_frames - cursor, height, width))
    clip = torch.cat(pieces, dim=2)
    latents = video_vae.encode_condition_video(clip)
    mask = keyframe_mask(num_frames, t_lat, height // factor, width // factor, sorted(placed), device=latents.device)
    return torch.cat([mask, latents], dim=1)
