"""GGUF block quantization, dequantized in torch on the device the weight is on.

A quantized GGUF tensor is a sequence of fixed-size blocks in the row-major order of its logical shape: each
block holds `block_size` weights in `type_size` bytes (scales as float16, then packed integers). A layer keeps
those bytes as a plain `uint8` tensor, so moving, streaming and pinning them works like any other tensor, and
`dequantize` turns them into a float tensor of the logical shape just before the matmul.

The arithmetic mirrors ggml's reference dequantizers (`dequantize_row_*` in ggml-quants.c, which the `gguf`
package reimplements in numpy): float16 scales widened to float32, integer codes to float32, then the same
float32 products and differences in the same order, so the result equals `gguf.quants.dequantize` bit for bit
(tests/mova_model/network/test_gguf_dequant.py). Every type is vectorized over all blocks at once: no Python
loop over blocks and no numpy, so it runs on CUDA as it runs on the CPU.

Supported: the legacy types Q8_0, Q5_0, Q5_1, Q4_0, Q4_1 (32 weights per block) and the K-quants Q2_K, Q3_K,
Q4_K, Q5_K, Q6_K (256 weights per super-block). F32 / F16 / BF16 tensors are plain torch dtypes and need none
of this.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Sequence, Tuple

import torch

QK_K = 256
"""Weights per K-quant super-block."""

GGUF_QUANT_SIZES: Dict[str, Tuple[int, int]] = {
    "Q4_0": (32, 2 + 16),
    "Q4_1": (32, 2 + 2 + 16),
    "Q5_0": (32, 2 + 4 + 16),
    "Q5_1": (32, 2 + 2 + 4 + 16),
    "Q8_0": (32, 2 + 32),
    "Q2_K": (QK_K, QK_K // 16 + QK_K // 4 + 2 + 2),
    "Q3_K": (QK_K, QK_K // 8 + QK_K // 4 + 12 + 2),
    "Q4_K": (QK_K, 2 + 2 + 12 + QK_K // 2),
    "Q5_K": (QK_K, 2 + 2 + 12 + QK_K // 8 + QK_K // 2),
    "Q6_K": (QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2),
}
"""Quantized type -> (weights per block, bytes per block): the GGUF format's constants."""

FLOAT_TYPES: Dict[str, torch.dtype] = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
"""GGUF types that are plain floating-point tensors."""

SUPPORTED_TYPES: Tuple[str, ...] = tuple(FLOAT_TYPES) + tuple(GGUF_QUANT_SIZES)
"""Every GGUF tensor type this pack reads."""


def bytes_per_weight(qtype: str) -> float:
    """Stored bytes per weight of a GGUF type (Q4_K: 144 / 256 = 0.5625, i.e. 4.5 bits)."""
    if qtype in FLOAT_TYPES:
        return float(FLOAT_TYPES[qtype].itemsize)
    block, size = GGUF_QUANT_SIZES[qtype]
    return size / block


def quantized_nbytes(qtype: str, numel: int) -> int:
    """Bytes of `numel` weights stored as `qtype` (numel must be a whole number of blocks)."""
    block, size = GGUF_QUANT_SIZES[qtype]
    return numel // block * size


# --------------------------------------------------------------------------------------------------------------
# byte helpers (blocks: uint8 [n, type_size]; columns are sliced, then made contiguous before a dtype view)


def _half(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The float16 at byte `start` of every block, widened to float32: [n, 1]."""
    return blocks[:, start:start + 2].contiguous().view(torch.float16).to(torch.float32)


def _split(packed: torch.Tensor, group: int, bits: int) -> torch.Tensor:
    """Split bytes into `bits`-wide codes: each run of `group` bytes gives its lowest code of every byte, then
    the next ones up (shifts by constants, stacked: broadcast shifts are several times slower on the CPU).

    packed: uint8 [n, m] (m a multiple of `group`) -> uint8 [n, (8 / bits) · m].
    """
    n = packed.shape[0]
    grouped = packed.reshape(n, -1, group)
    mask = (1 << bits) - 1
    parts = [grouped & mask] + [(grouped >> shift) & mask for shift in range(bits, 8, bits)]
    return torch.stack(parts, dim=2).reshape(n, -1)


def _nibbles(packed: torch.Tensor, group: int) -> torch.Tensor:
    """4-bit codes: each run of `group` bytes gives its low nibbles, then its high nibbles (ggml's q4 layouts).
    uint8 [n, m] -> [n, 2m]."""
    return _split(packed, group, 4)


def _crumbs(packed: torch.Tensor, group: int) -> torch.Tensor:
    """2-bit codes: each run of `group` bytes gives bits 0-1, then 2-3, 4-5, 6-7. uint8 [n, m] -> [n, 4m]."""
    return _split(packed, group, 2)


def _bits(packed: torch.Tensor, group: int) -> torch.Tensor:
    """Single bits: each run of `group` bytes gives bit 0 of every byte, then bit 1, ... bit 7.
    uint8 [n, m] -> [n, 8m]."""
    return _split(packed, group, 1)


def _word_bits(packed: torch.Tensor) -> torch.Tensor:
    """The 32 bits of a little-endian uint32 stored as 4 bytes, bit j at column j: uint8 [n, 4] -> [n, 32]."""
    n = packed.shape[0]
    return _split(packed, 1, 1).reshape(n, 4, 8).reshape(n, 32)


# --------------------------------------------------------------------------------------------------------------
# the legacy 32-weight types


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _half(blocks, 0)
    q = blocks[:, 2:].contiguous().view(torch.int8).to(torch.float32)
    return q.mul_(d)


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _half(blocks, 0)
    q = _nibbles(blocks[:, 2:], 16).to(torch.int8) - 8
    return q.to(torch.float32).mul_(d)


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _half(blocks, 0), _half(blocks, 2)
    q = _nibbles(blocks[:, 4:], 16).to(torch.float32)
    return q.mul_(d).add_(m)


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _half(blocks, 0)
    high = _word_bits(blocks[:, 2:6])
    q = (_nibbles(blocks[:, 6:], 16) | (high << 4)).to(torch.int8) - 16
    return q.to(torch.float32).mul_(d)


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _half(blocks, 0), _half(blocks, 2)
    high = _word_bits(blocks[:, 4:8])
    q = (_nibbles(blocks[:, 8:], 16) | (high << 4)).to(torch.float32)
    return q.mul_(d).add_(m)


# --------------------------------------------------------------------------------------------------------------
# K-quants (256-weight super-blocks of 16 or 8 sub-blocks, each with its own scale)


def _k_scale_min(packed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The eight 6-bit scales and eight 6-bit minimums packed in 12 bytes (Q4_K, Q5_K): uint8 [n, 12] ->
    (scales [n, 8], mins [n, 8]) as uint8. Bytes 0-3 hold scales 0-3 (low 6 bits) and the high 2 bits of scales
    4-7, bytes 4-7 the same for the minimums, bytes 8-11 the low 4 bits of scales 4-7 and of minimums 4-7."""
    n = packed.shape[0]
    s = packed.reshape(n, 3, 4)
    lo_s, lo_m, mixed = s[:, 0], s[:, 1], s[:, 2]
    scales = torch.cat([lo_s & 0x3F, (mixed & 0x0F) | ((lo_s >> 2) & 0x30)], dim=-1)
    mins = torch.cat([lo_m & 0x3F, (mixed >> 4) | ((lo_m >> 2) & 0x30)], dim=-1)
    return scales, mins


def _q2_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    scales = blocks[:, :16]
    d, dmin = _half(blocks, 80), _half(blocks, 82)
    dl = (d * (scales & 0x0F).to(torch.float32)).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).reshape(n, 16, 1)
    q = _crumbs(blocks[:, 16:80], 32).reshape(n, 16, 16).to(torch.float32)
    return q.mul_(dl).sub_(ml).reshape(n, QK_K)


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    hmask, qs, packed = blocks[:, :32], blocks[:, 32:96], blocks[:, 96:108]
    d = _half(blocks, 108)
    low = _nibbles(packed[:, :8], 8)  # low 4 bits of the 16 scales
    high = _crumbs(packed[:, 8:12], 4)  # their high 2 bits
    scales = ((low | (high << 4)).to(torch.int8) - 32).to(torch.float32)
    dl = (d * scales).reshape(n, 16, 1)
    ql = _crumbs(qs, 32).reshape(n, 16, 16).to(torch.int8)
    # a cleared hmask bit subtracts 4 from the 2-bit code (ggml: `(hm & m) ? 0 : 4`)
    qh = (_bits(hmask, 32).reshape(n, 16, 16) ^ 1).to(torch.int8)
    q = (ql - (qh << 2)).to(torch.float32)
    return q.mul_(dl).reshape(n, QK_K)


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin = _half(blocks, 0), _half(blocks, 2)
    sc, mn = _k_scale_min(blocks[:, 4:16])
    d1 = (d * sc.to(torch.float32)).reshape(n, 8, 1)
    m1 = (dmin * mn.to(torch.float32)).reshape(n, 8, 1)
    q = _nibbles(blocks[:, 16:], 32).reshape(n, 8, 32).to(torch.float32)
    return q.mul_(d1).sub_(m1).reshape(n, QK_K)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin = _half(blocks, 0), _half(blocks, 2)
    sc, mn = _k_scale_min(blocks[:, 4:16])
    d1 = (d * sc.to(torch.float32)).reshape(n, 8, 1)
    m1 = (dmin * mn.to(torch.float32)).reshape(n, 8, 1)
    high = _bits(blocks[:, 16:48], 32)
    q = (_nibbles(blocks[:, 48:], 32) | (high << 4)).reshape(n, 8, 32).to(torch.float32)
    return q.mul_(d1).sub_(m1).reshape(n, QK_K)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    ql, qh = blocks[:, :128], blocks[:, 128:192]
    scales = blocks[:, 192:208].contiguous().view(torch.int8).to(torch.float32)
    d = _half(blocks, 208)
    dl = (d * scales).reshape(n, 16, 1)
    q = (_nibbles(ql, 64) | (_crumbs(qh, 32) << 4)).to(torch.int8) - 32
    return q.reshape(n, 16, 16).to(torch.float32).mul_(dl).reshape(n, QK_K)


_DEQUANTIZERS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}


CHUNK_WEIGHTS = 1 << 22
"""Weights dequantized per piece: the float32 working set of a large matrix is bounded by this many weights."""
SCRATCH_BYTES_PER_WEIGHT = 8
"""Peak temporary bytes per weight of one piece: the float32 values (4), the integer codes and their shifted and
masked copies (up to 3 uint8), rounded up. With the `dtype` output this bounds a dequantization's device memory
at `numel × dtype size + min(numel, CHUNK_WEIGHTS) × SCRATCH_BYTES_PER_WEIGHT` (what the memory planner counts)."""


def dequantize(raw: torch.Tensor, qtype: str, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weights a quantized GGUF tensor holds, as `dtype` on `raw`'s device.

    raw: uint8 tensor of the stored blocks (any shape, `numel(shape) / block_size * type_size` bytes, read in
    order); qtype: a key of `GGUF_QUANT_SIZES`; shape: the logical shape (e.g. `[out, in]` of a Linear, or the
    5-D `[out, in, t, h, w]` of a patch embedding). Computed in float32 (equal to `gguf.quants.dequantize`),
    then cast to `dtype`; a tensor larger than `CHUNK_WEIGHTS` is expanded piece by piece into the output.
    """
    if raw.dtype != torch.uint8:
        raise TypeError(f"GGUF {qtype} data must be uint8 bytes, got {raw.dtype}")
    block, size = GGUF_QUANT_SIZES[qtype]
    target = tuple([int(s) for s in shape])
    numel = math.prod(target)
    if numel % block or raw.numel() != numel // block * size:
        raise ValueError(f"GGUF {qtype}: {raw.numel()} bytes do not hold a tensor of shape {list(shape)} "
                         f"({block} weights per {size}-byte block)")
    blocks = raw.reshape(-1, size)
    expand = _DEQUANTIZERS[qtype]
    per_piece = max(1, CHUNK_WEIGHTS // block)
    if blocks.shape[0] <= per_piece:
        return expand(blocks).reshape(target).to(dtype)
    out = torch.empty((blocks.shape[0], block), dtype=dtype, device=raw.device)
    for start in range(0, blocks.shape[0], per_piece):
        out[start:start + per_piece] = expand(blocks[start:start + per_piece])
    return out.reshape(target)
