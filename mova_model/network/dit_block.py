"""The pieces shared by MOVA's video and audio towers: attention, the adaLN DiT block, the output head,
the sinusoidal timestep embedding and the tower skeleton (text/time embeddings + blocks + head).

Everything mirrors the official `mova/diffusion/models/wan_video_dit.py` (`DiTBlock`, `SelfAttention`,
`CrossAttention`, `Head`, `sinusoidal_embedding_1d`, `WanModel.__init__`) with identical state-dict keys
(`blocks.0.self_attn.q.weight`, `text_embedding.0.weight`, `time_projection.1.weight`, `head.modulation`, ...).
All layers are built through an `Operations` factory, so they cast their weights to the activation dtype.

Precision conventions (what the official `MOVA.inference_single_step` does on GPU):
* the time embedding MLPs run in float32 (fp32 autocast) and their outputs are then cast to the compute dtype;
* everything else runs in the compute dtype (bf16 for the released weights);
* self-attention RoPE is applied in float64 (`rope.apply_complex_rope`);
* the adaLN `modulate` of the blocks is a `@torch.compile`d function upstream: in bf16 it is evaluated in float32
  with a single rounding, which `modulate` below reproduces (in float32 it is the plain expression).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from .attention import attend
from .ops import FP8_DTYPE, Operations, WeightDelta, add_deltas
from .rope import apply_complex_rope

logger = logging.getLogger(__name__)

_MODULATE_CHUNK_TOKENS = 16384
"""Tokens per float32 temporary when modulating low-precision activations (the result does not depend on it)."""


def sinusoidal_embedding(dim: int, timestep: torch.Tensor) -> torch.Tensor:
    """Sinusoidal timestep features [B] -> [B, dim]: `[cos(t*w_k) | sin(t*w_k)]`, w_k = 10000^(-k/(dim/2)).

    Computed in float64 and returned in the timestep's dtype; cosines come first (official `sinusoidal_embedding_1d`).
    `timestep` is on the 0..1000 scale.
    """
    half = dim // 2
    freqs = torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=timestep.device).div(half))
    angles = torch.outer(timestep.to(torch.float64), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).to(timestep.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation `x * (1 + scale) + shift` for x [B, S, D], shift/scale [B, 1, D].

    float32 inputs: the plain expression. Lower precision: evaluated in float32 and rounded once to x's dtype,
    token chunk by token chunk (mirrors the compiled official `modulate`).
    """
    if x.dtype not in (torch.bfloat16, torch.float16):
        return x * (1 + scale) + shift
    out = torch.empty_like(x)
    scale32 = 1 + scale.float()
    shift32 = shift.float()
    for start in range(0, x.shape[1], _MODULATE_CHUNK_TOKENS):
        stop = start + _MODULATE_CHUNK_TOKENS
        out[:, start:stop] = x[:, start:stop].float() * scale32 + shift32
    return out


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Softmax attention without mask, scale 1/sqrt(head_dim): q [B, Sq, H*D], k/v [B, Sk, H*D] -> [B, Sq, H*D]."""
    return attend(q, k, v, num_heads)  # backend chosen per run (network/attention.py); SDPA by default


SEQUENCE_ATTENTION: ContextVar[Optional[Callable[..., torch.Tensor]]] = ContextVar("mova_sequence_attention",
                                                                                 default=None)
"""Hook for attention over a whole stream (self-attention and bridge attention, not text cross-attention): when
set, `sequence_attention` calls it instead of `attention`. `mova_model.parallel.ulysses` sets it while a block runs
on a sequence shard, so the hook can exchange heads for tokens across ranks."""


def sequence_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """`attention` over a stream's whole token sequence, or the `SEQUENCE_ATTENTION` hook when one is set.

    Same shapes as `attention`; with the hook, q/k/v hold this rank's shard of the tokens."""
    hook = SEQUENCE_ATTENTION.get()
    return attention(q, k, v, num_heads) if hook is None else hook(q, k, v, num_heads)


def compute_dtype_of(module: nn.Module) -> torch.dtype:
    """The dtype a module computes in: the storage dtype holding most of its weights (fp8 storage counts as bf16).

    For uniformly stored weights this is `visual_dit.dtype` as used by `MOVA.inference_single_step`; the
    majority rule keeps a few float32-kept layers (or fp8 blocks) from changing the compute dtype.
    """
    counts: dict = {}
    for param in module.parameters():
        if not param.is_floating_point():
            continue
        dtype = torch.bfloat16 if param.dtype == FP8_DTYPE else param.dtype
        counts[dtype] = counts.get(dtype, 0) + param.numel()
    return max(counts, key=counts.get) if counts else torch.float32


class SelfAttention(nn.Module):
    """Self-attention with full-width RMSNorm on q and k and complex (float64) RoPE. Official `SelfAttention`.

    forward(x [B, S, dim], freqs complex128 [S, 1, head_dim/2]) -> [B, S, dim].
    """

    def __init__(self, dim: int, num_heads: int, eps: float, ops: Operations) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = ops.Linear(dim, dim)
        self.k = ops.Linear(dim, dim)
        self.v = ops.Linear(dim, dim)
        self.o = ops.Linear(dim, dim)
        self.norm_q = ops.RMSNorm(dim, eps=eps)
        self.norm_k = ops.RMSNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        q = apply_complex_rope(self.norm_q(self.q(x)), freqs, self.head_dim)
        k = apply_complex_rope(self.norm_k(self.k(x)), freqs, self.head_dim)
        return self.o(sequence_attention(q, k, self.v(x), self.num_heads))


class CrossAttention(nn.Module):
    """Text cross-attention: q from the stream, k/v from the embedded text; RMSNorm on q and k, no RoPE, no mask.

    Official `CrossAttention` (without the image branch, which MOVA does not have).
    forward(x [B, S, dim], context [B, L, dim]) -> [B, S, dim].
    """

    def __init__(self, dim: int, num_heads: int, eps: float, ops: Operations) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = ops.Linear(dim, dim)
        self.k = ops.Linear(dim, dim)
        self.v = ops.Linear(dim, dim)
        self.o = ops.Linear(dim, dim)
        self.norm_q = ops.RMSNorm(dim, eps=eps)
        self.norm_k = ops.RMSNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self.norm_q(self.q(x))
        k = self.norm_k(self.k(context))
        return self.o(attention(q, k, self.v(context), self.num_heads))


class Modulated(nn.Module):
    """A module owning an adaLN `modulation` table; LoRA deltas on it (`<path>.modulation.diff`) are attached
    as `deltas` while a pipeline samples and added to the table at forward."""

    modulation: nn.Parameter
    deltas: Tuple[WeightDelta, ...] = ()

    def _modulation(self, like: torch.Tensor) -> torch.Tensor:
        table = self.modulation.to(dtype=like.dtype, device=like.device)
        return add_deltas(table, self.deltas, "modulation") if self.deltas else table


class DiTBlock(Modulated):
    """One adaLN transformer block of either tower (official `DiTBlock`).

    With LN = LayerNorm without affine and (shift1, scale1, gate1, shift2, scale2, gate2) = modulation + t_mod:
    1. x += gate1 * SelfAttn(LN(x) * (1 + scale1) + shift1)
    2. x += CrossAttn(norm3(x), context)             (affine LayerNorm, no gate)
    3. x += gate2 * FFN(LN(x) * (1 + scale2) + shift2)  (Linear, tanh-GELU, Linear)

    forward(x [B, S, dim], context [B, L, dim], t_mod [B, 6, dim], freqs complex128 [S, 1, head_dim/2]) -> [B, S, dim].
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, eps: float, ops: Operations) -> None:
        super().__init__()
        self.dim = dim
        self.self_attn = SelfAttention(dim, num_heads, eps, ops)
        self.cross_attn = CrossAttention(dim, num_heads, eps, ops)
        self.norm1 = ops.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.norm2 = ops.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.norm3 = ops.LayerNorm(dim, eps=eps)
        self.ffn = nn.Sequential(ops.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), ops.Linear(ffn_dim, dim))
        self.modulation = ops.Parameter(1, 6, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, t_mod: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        table = self._modulation(t_mod) + t_mod
        shift1, scale1, gate1, shift2, scale2, gate2 = table.chunk(6, dim=1)
        x = x + gate1 * self.self_attn(modulate(self.norm1(x), shift1, scale1), freqs)
        x = x + self.cross_attn(self.norm3(x), context)
        x = x + gate2 * self.ffn(modulate(self.norm2(x), shift2, scale2))
        return x


class OutputHead(Modulated):
    """Final adaLN + projection (official `Head`): `head(LN(x) * (1 + scale) + shift)`, (shift, scale) = modulation + e.

    Uses the time embedding e [B, dim] (not the 6-way projection). The official video head only broadcasts
    for B = 1; here e is broadcast per sample, which gives the same values at B = 1 and is correct for B > 1.
    forward(x [B, S, dim], e [B, dim]) -> [B, S, out_features].
    """

    def __init__(self, dim: int, out_features: int, eps: float, ops: Operations) -> None:
        super().__init__()
        self.norm = ops.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.head = ops.Linear(dim, out_features)
        self.modulation = ops.Parameter(1, 2, dim)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        table = self._modulation(e) + e.unsqueeze(1)
        shift, scale = table.chunk(2, dim=1)
        return self.head(self.norm(x) * (1 + scale) + shift)


class DiTTower(nn.Module):
    """What the video and audio DiTs share: text/time embeddings, the block stack and the output head.

    Subclasses pass their `patch_embedding` and add `patchify`, `rope` and `unpatchify`. Attribute names and
    their order equal the official `WanModel` / `WanAudioModel`, so state-dict keys match in the same order.
    """

    def __init__(self, config, ops: Operations, patch_volume: int, patch_embedding: nn.Module) -> None:
        super().__init__()
        self.patch_embedding = patch_embedding
        self.config = config
        self.dim = config.dim
        self.freq_dim = config.freq_dim
        self.num_heads = config.num_heads
        self.head_dim = config.dim // config.num_heads
        self.text_embedding = nn.Sequential(
            ops.Linear(config.text_dim, config.dim), nn.GELU(approximate="tanh"), ops.Linear(config.dim, config.dim))
        self.time_embedding = nn.Sequential(
            ops.Linear(config.freq_dim, config.dim), nn.SiLU(), ops.Linear(config.dim, config.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), ops.Linear(config.dim, config.dim * 6))
        self.blocks = nn.ModuleList(
            DiTBlock(config.dim, config.num_heads, config.ffn_dim, config.eps, ops) for _ in range(config.num_layers))
        self.head = OutputHead(config.dim, config.out_dim * patch_volume, config.eps, ops)

    @property
    def compute_dtype(self) -> torch.dtype:
        """Dtype the tower computes in (`compute_dtype_of`)."""
        return compute_dtype_of(self)

    def embed_time(self, timestep: torch.Tensor, dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Timestep [B] (0..1000) -> (e [B, dim], t_mod [B, 6, dim]).

        Both MLPs run in float32 whatever the weight dtype (the official fp32 autocast); the results are then
        cast to `dtype` (default: float32).
        """
        timestep = timestep.reshape(-1).to(torch.float32)
        e = self.time_embedding(sinusoidal_embedding(self.freq_dim, timestep))
        t_mod = self.time_projection(e).unflatten(1, (6, self.dim))
        dtype = dtype or torch.float32
        return e.to(dtype), t_mod.to(dtype)

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """Text-encoder states [B, L, text_dim] -> tower context [B, L, dim] (Linear, tanh-GELU, Linear), in context's dtype."""
        return self.text_embedding(context)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Single-tower forward, as the official `WanModel.forward` / `WanAudioModel.forward(x, timestep, context)`.

        x: video [B, in_dim, T, H, W] or audio [B, in_dim, L]; timestep: [B] or [1] on the 0..1000 scale;
        context: [B, L_text, text_dim]. Computes in `dtype` (default: the weights' dtype, `compute_dtype`) with
        the time embedding in float32, and returns [B, out_dim, T, H, W] / [B, out_dim, L] in that dtype.
        """
        dtype = dtype or self.compute_dtype
        # 1. time and text conditioning
        e, t_mod = self.embed_time(timestep, dtype)
        context = self.embed_text(context.to(dtype))
        # 2. patch embedding and RoPE
        tokens, grid = self.patchify(x.to(dtype))
        if e.shape[0] != tokens.shape[0]:
            e, t_mod = e.expand(tokens.shape[0], -1), t_mod.expand(tokens.shape[0], -1, -1)
        freqs = self.rope(grid, tokens.device)
        # 3. blocks, 4. head and unpatchify
        tokens = self.run_blocks(tokens, context, t_mod, freqs)
        return self.head_out(tokens, e, grid)

    def run_blocks(self, x: torch.Tensor, context: torch.Tensor, t_mod: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        """All blocks in order (the single-tower forward); x [B, S, dim]."""
        for block in self.blocks:
            x = block(x, context, t_mod, freqs)
        return x
