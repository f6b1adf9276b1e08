"""Rotary position embeddings of the MOVA towers and of the dual-tower bridge.

Three different embeddings are used (see `shared/spec/architecture.md` §6):

* **Video self-attention**: 3-D RoPE over (latent frame, patch row, patch column). The head dimension is split
  into a temporal part of `head_dim - 2*(head_dim // 3)` features and two spatial parts of `head_dim // 3`
  features each (44/42/42 for head_dim 128). Each part is a 1-D complex RoPE with base 10000 over its own width;
  adjacent feature pairs (2j, 2j+1) are rotated as one complex number, in float64. Mirrors
  `wan_video_dit.precompute_freqs_cis_3d` + `rope_apply_head_dim` and the grid assembly in
  `MOVA.inference_single_step`.
* **Audio self-attention**: plain 1-D complex RoPE over the whole head dimension at integer latent-frame
  positions (official `wan_audio_dit.precompute_freqs_cis_1d` for `vae_type="dac"`; its split into three chunks
  and re-concatenation changes nothing).
* **Bridge cross-attention**: rotate-half RoPE (feature j paired with j + head_dim/2) whose cos/sin are computed in
  float32 and cast to the activation dtype; video tokens sit at `frame * audio_fps / (video_fps / 4)` on the audio
  time axis. Mirrors `interactionv2.RotaryEmbedding`, `DualTowerConditionalBridge.build_aligned_freqs` and
  `apply_rotary_pos_emb`.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence, Tuple

import torch

logger = logging.getLogger(__name__)

ROPE_BASE = 10000.0
"""Base of every RoPE in MOVA."""

VAE_TEMPORAL_STRIDE = 4
"""Pixel frames per video latent frame, hard-coded in the official bridge position alignment."""

_CHUNK_BYTES = 256 * 1024 * 1024
"""Upper bound on the float64 / float32 temporaries made while applying a RoPE (results are unchanged)."""


def video_rope_split(head_dim: int) -> Tuple[int, int, int]:
    """Feature widths (t, h, w) of the 3-D video RoPE for one head: (44, 42, 42) for head_dim 128.

    Raises `ValueError` when the three parts do not give exactly head_dim/2 rotation frequencies (the official
    code then fails with a shape error; e.g. head_dim 64 gives 22/21/21 and only 31 frequencies).
    """
    spatial = head_dim // 3
    temporal = head_dim - 2 * spatial
    count = temporal // 2 + 2 * (spatial // 2)
    if head_dim % 2 or count != head_dim // 2:
        raise ValueError(
            f"video RoPE: head_dim {head_dim} splits into {temporal}/{spatial}/{spatial} features, which give "
            f"{count} rotation frequencies instead of {head_dim // 2}; use a head_dim such as 24, 48, 96 or 128"
        )
    return temporal, spatial, spatial


def rope_angles(width: int, positions: torch.Tensor) -> torch.Tensor:
    """Float64 rotation angles of a 1-D RoPE of `width` features: [L] positions -> [L, width // 2].

    Frequency i is `1 / 10000^(2i / width)` (official `precompute_freqs_cis`).
    """
    exponents = torch.arange(0, width, 2, device=positions.device)[: width // 2].double() / width
    inv_freq = 1.0 / (ROPE_BASE ** exponents)
    return torch.outer(positions.double(), inv_freq)


def complex_rope_1d(width: int, length: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """Unit complex numbers (complex128) of a 1-D RoPE at positions 0..length-1: [length, width // 2]."""
    angles = rope_angles(width, torch.arange(length, device=device))
    return torch.polar(torch.ones_like(angles), angles)


def video_rope(head_dim: int, grid: Sequence[int], device: Optional[torch.device] = None) -> torch.Tensor:
    """3-D RoPE of a video token grid (f, h, w) as complex128 [f*h*w, 1, head_dim // 2].

    Tokens are ordered frame-major, then row, then column (the patchify order); each token's vector is
    [temporal freqs of its frame | row freqs of its row | column freqs of its column].
    """
    f, h, w = (int(v) for v in grid)
    t_dim, h_dim, w_dim = video_rope_split(head_dim)
    parts = (
        complex_rope_1d(t_dim, f, device).view(f, 1, 1, -1).expand(f, h, w, -1),
        complex_rope_1d(h_dim, h, device).view(1, h, 1, -1).expand(f, h, w, -1),
        complex_rope_1d(w_dim, w, device).view(1, 1, w, -1).expand(f, h, w, -1),
    )
    return torch.cat(parts, dim=-1).reshape(f * h * w, 1, -1)


def audio_rope(head_dim: int, length: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """1-D RoPE over the whole head for audio latent frames 0..length-1, complex128 [length, 1, head_dim // 2]."""
    return complex_rope_1d(head_dim, length, device).reshape(length, 1, -1)


def apply_complex_rope(x: torch.Tensor, freqs: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rotate adjacent feature pairs of every head by `freqs`, in float64 (official `rope_apply_head_dim`).

    x: [B, S, heads*head_dim] in any float dtype; freqs: complex128 [S, 1, head_dim // 2].
    Returns a tensor like `x` (same dtype). Heads are processed in groups so the float64 temporaries stay bounded;
    the operation is elementwise, so the grouping does not change any value.
    """
    batch, seq, width = x.shape
    heads = width // head_dim
    view = x.view(batch, seq, heads, head_dim // 2, 2)
    out = torch.empty_like(x)
    out_view = out.view(batch, seq, heads, head_dim // 2, 2)
    per_head = max(1, batch * seq * head_dim * 8)
    group = max(1, min(heads, _CHUNK_BYTES // per_head))
    for start in range(0, heads, group):
        chunk = view[:, :, start:start + group].to(torch.float64).contiguous()
        rotated = torch.view_as_real(torch.view_as_complex(chunk) * freqs)
        out_view[:, :, start:start + group].copy_(rotated)
    return out


def aligned_positions(video_fps: float, grid: Sequence[int], audio_steps: int, audio_fps: float,
                      first_frame_bias: bool = False,
                      device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bridge positions on the audio time axis (float32): (video [f*h*w], audio [audio_steps]).

    Audio latent frame k sits at k. Video latent frame i sits at `i * audio_fps / (video_fps / 4)` (one latent
    frame = 4 pixel frames), shared by its h*w tokens. With `first_frame_bias` (unused by the released
    checkpoints) frame 0 lasts 1/video_fps and later frames start at `1/video_fps + (i-1) * 4/video_fps` seconds.
    Mirrors `DualTowerConditionalBridge.build_aligned_freqs`.
    """
    f, h, w = (int(v) for v in grid)
    audio_pos = torch.arange(int(audio_steps), device=device, dtype=torch.float32)
    if first_frame_bias:
        starts = torch.zeros((f,), device=device, dtype=torch.float32)
        if f > 1:
            latent_fps = float(video_fps) / float(VAE_TEMPORAL_STRIDE)
            starts[1:] = (1.0 / float(video_fps)) + torch.arange(f - 1, device=device, dtype=torch.float32) * (1.0 / latent_fps)
        per_frame = starts * float(audio_fps)
    else:
        step = float(audio_fps) / float(video_fps / float(VAE_TEMPORAL_STRIDE))
        per_frame = torch.arange(f, device=device, dtype=torch.float32) * step
    return per_frame.repeat_interleave(h * w), audio_pos


def rotate_half_cos_sin(positions: torch.Tensor, head_dim: int,
                        dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of the rotate-half RoPE: float32 positions [L] -> (cos, sin), each [1, L, head_dim] in `dtype`.

    Computed in float32 (frequencies `1/10000^(2i/head_dim)`, duplicated over both halves) and then cast,
    as `interactionv2.RotaryEmbedding.forward` does.
    """
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim))
    angles = torch.outer(positions.float(), inv_freq)
    emb = torch.cat((angles, angles), dim=-1).unsqueeze(0)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rotate-half RoPE on every head: `x*cos + rotate_half(x)*sin` with rotate_half(a|b) = (-b|a).

    x: [B, S, heads*head_dim]; cos, sin: [1 or B, S, head_dim] (cast to x's dtype first, as the official
    attention does). Computed in float32 with one rounding to x's dtype, which is what the official
    `@torch.compile`d `apply_rotary_pos_emb` produces (identical to eager in float32).
    """
    batch, seq, width = x.shape
    heads = width // head_dim
    cos = cos.to(device=x.device, dtype=x.dtype).unsqueeze(2)
    sin = sin.to(device=x.device, dtype=x.dtype).unsqueeze(2)
    view = x.view(batch, seq, heads, head_dim)
    if x.dtype not in (torch.bfloat16, torch.float16):
        return _rotate_half_apply(view, cos, sin).reshape(batch, seq, width)
    out = torch.empty_like(x)
    out_view = out.view(batch, seq, heads, head_dim)
    cos32, sin32 = cos.float(), sin.float()
    group = max(1, _CHUNK_BYTES // max(1, batch * heads * head_dim * 4))
    for start in range(0, seq, group):
        part = view[:, start:start + group].float()
        out_view[:, start:start + group].copy_(
            _rotate_half_apply(part, cos32[:, start:start + group], sin32[:, start:start + group]))
    return out


def _rotate_half_apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
