"""Ulysses sequence parallelism for the joint denoiser (DeepSpeed-Ulysses, as the official code uses through
yunchang; this is our own implementation on `torch.distributed`).

Each rank of a sequence group holds a contiguous shard of the video tokens and of the audio tokens (each
stream padded with zero tokens to a multiple of the degree U). Everything per token (adaLN, norms, the
projections, the FFN, text cross-attention against the full text, the heads) runs on the shard. Attention
over a whole stream (self-attention, both bridge directions) exchanges tokens for heads with one all-to-all
before (q, k, v: [B, S/U, H·D] -> [B, S, H/U·D]) and one after (the output, back to the shard); padded key
tokens are masked out, padded query tokens are dropped at the end. RoPE tables (the complex self-attention
RoPE and the bridge's aligned rotate-half RoPE) are cut into the same shards before any block runs, so every
token keeps its own position. The per-token head outputs are all-gathered at the end.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..network.attention import kernel_inputs
from ..network.dit_block import SEQUENCE_ATTENTION, attention
from .comm import RankGroup

logger = logging.getLogger(__name__)

Executor = Callable[..., torch.Tensor]


def padded_length(length: int, degree: int) -> int:
    """The smallest multiple of `degree` that is >= `length`."""
    return -(-int(length) // degree) * degree


def _shard(t: Optional[torch.Tensor], dim: int, length: int, degree: int, index: int,
           pad_value: float = 0.0) -> Optional[torch.Tensor]:
    """Shard `index` of `t` along `dim` after padding it from `length` to a multiple of `degree` with `pad_value`."""
    if t is None:
        return None
    target = padded_length(length, degree)
    if target != length:
        shape = list(t.shape)
        shape[dim] = target - length
        t = torch.cat([t, torch.full(shape, pad_value, dtype=t.dtype, device=t.device)], dim=dim)
    return t.chunk(degree, dim=dim)[index].contiguous()


class UlyssesSequence:
    """The `denoiser.SequenceSplit` of one rank in a sequence group of `group.size` ranks."""

    def __init__(self, group: RankGroup) -> None:
        self.group = group
        self.degree = group.size
        self.index = group.index
        self.lengths: Dict[str, int] = {}

    # -- joint_forward hooks ------------------------------------------------------------------------------
    def split(self, video_x, audio_x, video_freqs, audio_freqs, video_rope, audio_rope) -> tuple:
        """Full streams -> this rank's shards. video_x [B, Nv, Dv], audio_x [B, Na, Da]; freqs complex
        [N, 1, D/2] (padded with 1, no rotation); bridge ropes (cos, sin) [1, N, D] (padded with cos 1, sin 0)."""
        nv, na = int(video_x.shape[1]), int(audio_x.shape[1])
        self.lengths = {"video": nv, "audio": na}
        u, i = self.degree, self.index

        def rope_shard(pair, n):
            if pair is None:
                return None
            return _shard(pair[0], 1, n, u, i, 1.0), _shard(pair[1], 1, n, u, i, 0.0)

        return (_shard(video_x, 1, nv, u, i), _shard(audio_x, 1, na, u, i),
                _shard(video_freqs, 0, nv, u, i, 1.0), _shard(audio_freqs, 0, na, u, i, 1.0),
                rope_shard(video_rope, nv), rope_shard(audio_rope, na))

    def executor(self, run: Executor, video_dit: nn.Module, audio_dit: nn.Module,
                 bridge: Optional[nn.Module]) -> Executor:
        """`run` with the attention hook set per module: (query stream, key stream) of each block/conditioner."""
        streams: Dict[int, Tuple[str, str]] = {}
        for block in video_dit.blocks:
            streams[id(block)] = ("video", "video")
        for block in audio_dit.blocks:
            streams[id(block)] = ("audio", "audio")
        if bridge is not None:
            for layer in bridge.layers:
                a2v, v2a = bridge.conditioners(layer)
                streams[id(a2v)] = ("video", "audio")
                streams[id(v2a)] = ("audio", "video")

        def sharded_run(module: nn.Module, *args) -> torch.Tensor:
            pair = streams.get(id(module))
            if pair is None:
                raise RuntimeError(f"Ulysses: no stream known for {type(module).__name__}; it would see one shard")
            with self._attending(*pair):
                return run(module, *args)

        return sharded_run

    def gather(self, video_out: torch.Tensor, audio_out: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-token outputs of the shards -> the full streams (padding dropped): [B, N, C] each."""
        return self._gather(video_out, "video"), self._gather(audio_out, "audio")

    # -- internals ----------------------------------------------------------------------------------------
    def _gather(self, shard: torch.Tensor, stream: str) -> torch.Tensor:
        pieces = self.group.all_gather(shard, f"all-gather {stream} head output")
        return torch.cat(pieces, dim=1)[:, : self.lengths[stream]]

    @contextmanager
    def _attending(self, query_stream: str, key_stream: str):
        token = SEQUENCE_ATTENTION.set(
            lambda q, k, v, heads: self.attend(q, k, v, heads, self.lengths[query_stream], self.lengths[key_stream],
                                               f"{query_stream}<-{key_stream}"))
        try:
            yield
        finally:
            SEQUENCE_ATTENTION.reset(token)

    def _to_heads(self, x: torch.Tensor, heads: int, what: str) -> torch.Tensor:
        """[..., B, S/U, H·D] (tokens of this shard, all heads) -> [..., B, S, H/U·D] (all tokens, this rank's
        heads); leading dimensions (a stack of q, k, v) travel in the same all-to-all. The result is contiguous,
        so each tensor of a stack has a unit last-dim stride (what the fused attention kernels need)."""
        u = self.degree
        send = rearrange(x, "... b s (u h d) -> u ... b s h d", u=u, h=heads // u)
        received = self.group.all_to_all(send, what)
        return rearrange(received, "u ... b s h d -> ... b (u s) (h d)").contiguous()

    def _to_tokens(self, x: torch.Tensor, heads: int, what: str) -> torch.Tensor:
        """[B, S, H/U·D] -> [B, S/U, H·D], the inverse of `_to_heads`."""
        u = self.degree
        send = rearrange(x, "b (u s) (h d) -> u b s h d", u=u, h=heads // u)
        received = self.group.all_to_all(send, what)
        return rearrange(received, "u b s h d -> b s (u h d)")

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, query_len: int, key_len: int,
               what: str) -> torch.Tensor:
        """Attention of this shard's queries over the whole key stream. q [B, Sq/U, H·D], k/v [B, Sk/U, H·D]
        (shards of the padded streams) -> [B, Sq/U, H·D]. Padded keys (index >= key_len) get no weight."""
        if heads % self.degree:
            raise RuntimeError(f"Ulysses degree {self.degree} does not divide {heads} heads")
        # q, k, v are stacked on a new leading axis (not interleaved in the last one), so each one received is
        # a contiguous [B, S, H/U·D] slab: a unit last-dim stride, as fused attention kernels require
        if q.shape[1] == k.shape[1]:  # self-attention: one exchange for q, k and v
            q_full, k_full, v_full = self._to_heads(torch.stack([q, k, v]), heads, f"all-to-all {what} qkv").unbind(0)
        else:
            q_full = self._to_heads(q, heads, f"all-to-all {what} q")
            k_full, v_full = self._to_heads(torch.stack([k, v]), heads, f"all-to-all {what} kv").unbind(0)
        local_heads = heads // self.degree
        if k_full.shape[1] == key_len:
            out = attention(q_full, k_full, v_full, local_heads)
        else:
            out = masked_attention(q_full, k_full, v_full, local_heads, key_len)
        return self._to_tokens(out, heads, f"all-to-all {what} out")


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, key_len: int) -> torch.Tensor:
    """`dit_block.attention` where only the first `key_len` keys count: q [B, Sq, H·D], k/v [B, Sk, H·D]."""
    q, k, v = (rearrange(t, "b s (n d) -> b n s d", n=num_heads) for t in (q, k, v))
    mask = (torch.arange(k.shape[2], device=k.device) < key_len).view(1, 1, 1, -1)
    q, k, v = kernel_inputs(q, k, v, "sdpa", attn_mask=mask)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return rearrange(out, "b n s d -> b s (n d)")
