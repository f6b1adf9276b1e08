"""A plain K-quant encoder (Q2_K ... Q6_K) for the GGUF quality bench only.

The `gguf` package has no Python quantizer for the K-quants (llama.cpp's `llama-quantize` makes them, with a
search for the scales that minimise each sub-block's error). To put numbers on their quality here, this encoder
quantizes with round-to-nearest and min/max sub-block scales, vectorized in numpy, and packs the blocks in the
GGUF layout (the inverse of `mova_model.network.gguf_dequant`). Its error is an upper bound of llama.cpp's at
the same type (no scale search, no importance matrix); `check_roundtrip` verifies the packing against the
`gguf` package's dequantizer.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

QK = 256


def _f16(values: np.ndarray) -> np.ndarray:
    """float32 [n] -> float16 bytes [n, 2], and the float32 the file will give back."""
    half = values.astype(np.float16)
    return half.reshape(-1, 1).view(np.uint8), half.astype(np.float32)


def _round(values: np.ndarray, low: int, high: int) -> np.ndarray:
    return np.clip(np.rint(values), low, high).astype(np.int32)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1), 0.0)


def _asym(sub: np.ndarray, levels: int, scale_bits: int) -> Tuple[np.ndarray, ...]:
    """Sub-blocks [n, s, k] as d·sc·q − dmin·m (q in 0..levels, sc and m in 0..2^bits−1) -> codes and fields."""
    top = (1 << scale_bits) - 1
    low = np.minimum(sub.min(axis=-1), 0.0)
    scale = (sub.max(axis=-1) - low) / levels
    d_bytes, d = _f16(scale.max(axis=-1) / top)
    m_bytes, dmin = _f16((-low).max(axis=-1) / top)
    sc = _round(_safe_div(scale, d[:, None]), 0, top)
    m = _round(_safe_div(-low, dmin[:, None]), 0, top)
    step = d[:, None, None] * sc[..., None]
    q = _round(_safe_div(sub + (dmin[:, None] * m)[..., None], step), 0, levels)
    return q, sc, m, d_bytes, m_bytes


def _crumb_pack(q: np.ndarray) -> np.ndarray:
    """2-bit codes [n, 256] -> bytes [n, 64]: per half of 128, byte l holds codes l, l+32, l+64, l+96."""
    parts = q.reshape(-1, 2, 4, 32)
    packed = parts[:, :, 0] | (parts[:, :, 1] << 2) | (parts[:, :, 2] << 4) | (parts[:, :, 3] << 6)
    return packed.reshape(-1, 64).astype(np.uint8)


def q2_k(x: np.ndarray) -> np.ndarray:
    sub = x.reshape(-1, 16, 16)
    q, sc, m, d, dmin = _asym(sub, 3, 4)
    scales = (sc | (m << 4)).astype(np.uint8)
    return np.concatenate([scales, _crumb_pack(q.reshape(-1, QK)), d, dmin], axis=1)


def q3_k(x: np.ndarray) -> np.ndarray:
    sub = x.reshape(-1, 16, 16)
    scale = np.abs(sub).max(axis=-1) / 4.0
    d_bytes, d = _f16(scale.max(axis=-1) / 31.0)
    sc = _round(_safe_div(scale, d[:, None]), 0, 31)
    q = _round(_safe_div(sub, (d[:, None] * sc)[..., None]), -4, 3).reshape(-1, QK)
    stored = sc + 32
    hmask_bits = (q >= 0).astype(np.int32).reshape(-1, 8, 32)
    hmask = sum(hmask_bits[:, k] << k for k in range(8)).astype(np.uint8)
    low = (stored & 0x0F)
    packed = np.concatenate([(low[:, :8] | (low[:, 8:] << 4)),
                             sum(((stored.reshape(-1, 4, 4)[:, k] >> 4) & 3) << (2 * k) for k in range(4))], axis=1)
    return np.concatenate([hmask, _crumb_pack(q & 3), packed.astype(np.uint8), d_bytes], axis=1)


def _k_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and minimums -> the 12 packed bytes of Q4_K / Q5_K."""
    out = np.zeros((sc.shape[0], 12), dtype=np.int32)
    out[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    return out.astype(np.uint8)


def _nibble_pack(q: np.ndarray) -> np.ndarray:
    """4-bit codes [n, 256] -> bytes [n, 128]: byte 32c+l holds codes 64c+l (low) and 64c+32+l (high)."""
    parts = q.reshape(-1, 4, 2, 32) & 0x0F
    return (parts[:, :, 0] | (parts[:, :, 1] << 4)).reshape(-1, 128).astype(np.uint8)


def q4_k(x: np.ndarray) -> np.ndarray:
    q, sc, m, d, dmin = _asym(x.reshape(-1, 8, 32), 15, 6)
    return np.concatenate([d, dmin, _k_scales(sc, m), _nibble_pack(q.reshape(-1, QK))], axis=1)


def q5_k(x: np.ndarray) -> np.ndarray:
    q, sc, m, d, dmin = _asym(x.reshape(-1, 8, 32), 31, 6)
    high = (q >> 4).reshape(-1, 8, 32)
    qh = sum(high[:, s] << s for s in range(8)).astype(np.uint8)
    return np.concatenate([d, dmin, _k_scales(sc, m), qh, _nibble_pack(q.reshape(-1, QK))], axis=1)


def q6_k(x: np.ndarray) -> np.ndarray:
    sub = x.reshape(-1, 16, 16)
    scale = np.abs(sub).max(axis=-1) / 32.0
    d_bytes, d = _f16(scale.max(axis=-1) / 127.0)
    sc = _round(_safe_div(scale, d[:, None]), 0, 127)
    q = (_round(_safe_div(sub, (d[:, None] * sc)[..., None]), -32, 31) + 32).reshape(-1, 2, 2, 64)
    ql = ((q[:, :, 0] & 0x0F) | ((q[:, :, 1] & 0x0F) << 4)).reshape(-1, 128)
    high = (q.reshape(-1, 2, 4, 32) >> 4) & 3
    qh = sum(high[:, :, k] << (2 * k) for k in range(4)).reshape(-1, 64)
    return np.concatenate([ql.astype(np.uint8), qh.astype(np.uint8), sc.astype(np.int8).view(np.uint8), d_bytes], axis=1)


ENCODERS = {"Q2_K": q2_k, "Q3_K": q3_k, "Q4_K": q4_k, "Q5_K": q5_k, "Q6_K": q6_k}


def quantize(values: np.ndarray, qtype: str) -> np.ndarray:
    """float32 [..., k·256] -> uint8 blocks [..., k·type_size] of `qtype` (a K-quant)."""
    rows = np.ascontiguousarray(values, dtype=np.float32)
    blocks = ENCODERS[qtype](rows.reshape(-1, QK))
    return blocks.reshape(*rows.shape[:-1], -1)


def check_roundtrip(qtype: str, seed: int = 0) -> float:
    """Relative L2 error of quantize -> gguf's dequantize on Gaussian rows (raises if the packing is wrong)."""
    import gguf

    x = np.random.default_rng(seed).standard_normal((64, 1024)).astype(np.float32)
    back = gguf.quants.dequantize(quantize(x, qtype), gguf.GGMLQuantizationType[qtype])
    error = float(np.linalg.norm(back - x) / np.linalg.norm(x))
    if not error < 0.5:
        raise AssertionError(f"{qtype}: the packed blocks do not decode to the quantized values (error {error:.3f})")
    return error
