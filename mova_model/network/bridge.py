"""The dual-tower bridge: cross-attention between the video and audio hidden states before each shared layer
(official `mova/diffusion/models/interactionv2.py`, `DualTowerConditionalBridge`).

For an interacting layer i both directions read the states as they were on entry to the layer:
* audio -> video (`audio_to_video_conditioners[i]`, heads of `head_dim` on the video width):
  video += a2v_scale * Attn(q = video, k/v = LayerNorm(audio));
* video -> audio (`video_to_audio_conditioners[i]`, heads of `head_dim` on the audio width):
  audio += v2a_scale * Attn(q = audio, k/v = LayerNorm(video)).
With `apply_cross_rope` queries and keys get a rotate-half RoPE on a shared physical time axis
(`rope.aligned_positions`). State-dict keys equal the official ones
(`audio_to_video_conditioners.0.y_norm.weight`, `...inner.q.weight`, `...inner.norm_q.weight`, ...).
"""

from __future__ import annotations

import logging
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..checkpoint.configs import BridgeConfig
from .dit_block import sequence_attention
from .ops import Operations
from .rope import aligned_positions, apply_rotate_half, rotate_half_cos_sin

logger = logging.getLogger(__name__)

CosSin = Tuple[torch.Tensor, torch.Tensor]
Executor = Callable[..., torch.Tensor]

INTERACTION_STRATEGIES = ("shallow_focus", "distributed", "progressive", "custom", "full")


def interaction_layers(strategy: str, visual_layers: int, audio_layers: int) -> List[int]:
    """Layer indices where the bridge runs (official `CrossModalInteractionController.get_interaction_layers`).

    With n = min(visual_layers, audio_layers): "full" = 0..n-1 (MOVA); "shallow_focus" = 0..min(10, n//3)-1;
    "distributed" = every 3rd layer; "progressive" = 0..7 then every 3rd from 8; "custom" = [0,2,4,6,8,12,16,20] below n.
    """
    n = min(visual_layers, audio_layers)
    if strategy == "full":
        return list(range(n))
    if strategy == "shallow_focus":
        return list(range(min(10, n // 3)))
    if strategy == "distributed":
        return list(range(0, n, 3))
    if strategy == "progressive":
        return list(range(min(8, n))) + (list(range(8, n, 3)) if n > 8 else [])
    if strategy == "custom":
        return [i for i in (0, 2, 4, 6, 8, 12, 16, 20) if i < n]
    raise ValueError(f"bridge: unknown interaction_strategy {strategy!r}; expected one of {', '.join(INTERACTION_STRATEGIES)}")


class BridgeAttention(nn.Module):
    """Cross-attention of one direction (official `ConditionalCrossAttention`).

    q = RMSNorm(Wq x), k = RMSNorm(Wk y), v = Wv y (Wk, Wv map kv_dim -> dim); optional rotate-half RoPE on q
    (positions of x) and k (positions of y); softmax attention; output projection.
    forward(x [B, Sx, dim], y [B, Sy, kv_dim], x_rope, y_rope) -> [B, Sx, dim]; ropes are (cos, sin) [1, S, head_dim] or None.
    """

    def __init__(self, dim: int, kv_dim: int, num_heads: int, eps: float, ops: Operations) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = ops.Linear(dim, dim)
        self.k = ops.Linear(kv_dim, dim)
        self.v = ops.Linear(kv_dim, dim)
        self.o = ops.Linear(dim, dim)
        self.norm_q = ops.RMSNorm(dim, eps=eps)
        self.norm_k = ops.RMSNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_rope: Optional[CosSin] = None,
                y_rope: Optional[CosSin] = None) -> torch.Tensor:
        q = self.norm_q(self.q(x))
        k = self.norm_k(self.k(y))
        v = self.v(y)
        if x_rope is not None:
            q = apply_rotate_half(q, x_rope[0], x_rope[1], self.head_dim)
        if y_rope is not None:
            k = apply_rotate_half(k, y_rope[0], y_rope[1], self.head_dim)
        return self.o(sequence_attention(q, k, v, self.num_heads))


class BridgeConditioner(nn.Module):
    """LayerNorm (affine, eps 1e-6) of the conditioning stream, then `BridgeAttention`
    (official `ConditionalCrossAttentionBlock` without pooled adaLN).

    forward(x [B, Sx, dim], y [B, Sy, kv_dim], x_rope, y_rope) -> the term added to x, [B, Sx, dim].
    """

    def __init__(self, dim: int, kv_dim: int, num_heads: int, ops: Operations, eps: float = 1e-6) -> None:
        super().__init__()
        self.y_norm = ops.LayerNorm(kv_dim, eps=eps)
        self.inner = BridgeAttention(dim, kv_dim, num_heads, eps, ops)

    def forward(self, x: torch.Tensor, y: torch.Tensor, x_rope: Optional[CosSin] = None,
                y_rope: Optional[CosSin] = None) -> torch.Tensor:
        return self.inner(x, self.y_norm(y), x_rope, y_rope)


def _call(module: nn.Module, *args) -> torch.Tensor:
    return module(*args)


class DualTowerBridge(nn.Module):
    """The bridge between the video and the audio DiT (official `DualTowerConditionalBridge`).

    `interacts(i)` says whether layer i has conditioners; `aligned_rope(...)` builds the cross RoPE once per step;
    `forward(i, video, audio, video_rope, audio_rope, a2v_scale, v2a_scale)` runs both directions of layer i.
    """

    def __init__(self, config: BridgeConfig, ops: Operations) -> None:
        super().__init__()
        self.config = config
        self.head_dim = config.head_dim
        self.audio_fps = float(config.audio_fps)
        self.apply_cross_rope = bool(config.apply_cross_rope)
        self.first_frame_bias = bool(config.apply_first_frame_bias_in_rope)
        self.layers: Tuple[int, ...] = tuple(
            interaction_layers(config.interaction_strategy, config.visual_layers, config.audio_layers))
        self._layer_set = frozenset(self.layers)
        if config.trainable_condition_scale:
            self.condition_scale = ops.Parameter(1)
        video_heads = config.visual_hidden_dim // config.head_dim
        audio_heads = config.audio_hidden_dim // config.head_dim
        self.audio_to_video_conditioners = nn.ModuleDict({
            str(i): BridgeConditioner(config.visual_hidden_dim, config.audio_hidden_dim, video_heads, ops)
            for i in self.layers})
        self.video_to_audio_conditioners = nn.ModuleDict({
            str(i): BridgeConditioner(config.audio_hidden_dim, config.visual_hidden_dim, audio_heads, ops)
            for i in self.layers})

    def interacts(self, layer_idx: int) -> bool:
        """True when the bridge runs before block pair `layer_idx` (official `should_interact`)."""
        return layer_idx in self._layer_set

    def conditioners(self, layer_idx: int) -> Tuple[BridgeConditioner, BridgeConditioner]:
        """(audio->video, video->audio) conditioners of an interacting layer."""
        key = str(layer_idx)
        return self.audio_to_video_conditioners[key], self.video_to_audio_conditioners[key]

    def default_scale(self) -> float:
        """The scale used when none is given: the learned `condition_scale` if the config has one, else 1.0."""
        if self.config.trainable_condition_scale:
            return float(self.condition_scale.detach().float().reshape(-1)[0])
        return 1.0

    def aligned_rope(self, video_fps: float, grid: Sequence[int], audio_steps: int,
                     device: Optional[torch.device] = None,
                     dtype: Optional[torch.dtype] = None) -> Tuple[CosSin, CosSin]:
        """Cross RoPE tables ((cos_v, sin_v) [1, f*h*w, head_dim], (cos_a, sin_a) [1, audio_steps, head_dim]) in `dtype`.

        grid is the video token grid (f, h, w); positions as in `rope.aligned_positions` (official `build_aligned_freqs`).
        """
        video_pos, audio_pos = aligned_positions(video_fps, grid, audio_steps, self.audio_fps,
                                                 self.first_frame_bias, device)
        dtype = dtype or torch.float32
        return rotate_half_cos_sin(video_pos, self.head_dim, dtype), rotate_half_cos_sin(audio_pos, self.head_dim, dtype)

    def forward(self, layer_idx: int, video_tokens: torch.Tensor, audio_tokens: torch.Tensor,
                video_freqs: Optional[CosSin], audio_freqs: Optional[CosSin],
                a2v_scale: float = 1.0, v2a_scale: float = 1.0,
                executor: Optional[Executor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Both directions of layer `layer_idx` from the same inputs (official `DualTowerConditionalBridge.forward`).

        video_tokens [B, Nv, Dv], audio_tokens [B, Na, Da]; video_freqs / audio_freqs: the `aligned_rope` pairs
        (None: no cross RoPE). Returns (video + a2v_scale * a2v(video, audio), audio + v2a_scale * v2a(audio, video)).
        A direction whose scale is 0 is skipped (it would add exactly zero). Each conditioner call goes through
        `executor(module, *args)` (default: a plain call), so a memory manager can stream the conditioners.
        Non-interacting layers return the inputs unchanged.
        """
        if not self.interacts(layer_idx):
            return video_tokens, audio_tokens
        run = executor or _call
        a2v, v2a = self.conditioners(layer_idx)
        video_out, audio_out = video_tokens, audio_tokens
        if a2v_scale != 0:
            video_out = video_tokens + run(a2v, video_tokens, audio_tokens, video_freqs, audio_freqs) * a2v_scale
        if v2a_scale != 0:
            audio_out = audio_tokens + run(v2a, audio_tokens, video_tokens, audio_freqs, video_freqs) * v2a_scale
        return video_out, audio_out
