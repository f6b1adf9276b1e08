"""Per-block GGUF dequantization written as ggml's reference C loops (`dequantize_row_*` in ggml-quants.c):
one block at a time, scalar float32 arithmetic (numpy float32 scalars, so every product rounds as in C).
Slow on purpose; the independent check of the vectorized torch code in `mova_model.network.gguf_dequant`."""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import numpy as np

F = np.float32


def _half(block: bytes, offset: int) -> np.float32:
    return F(np.frombuffer(block[offset:offset + 2], dtype=np.float16)[0])


def q8_0(b: bytes) -> List[np.float32]:
    d = _half(b, 0)
    return [F(v) * d for v in np.frombuffer(b[2:34], dtype=np.int8)]


def q4_0(b: bytes) -> List[np.float32]:
    d, qs, y = _half(b, 0), b[2:18], [F(0)] * 32
    for j in range(16):
        y[j] = F((qs[j] & 0x0F) - 8) * d
        y[j + 16] = F((qs[j] >> 4) - 8) * d
    return y


def q4_1(b: bytes) -> List[np.float32]:
    d, m, qs, y = _half(b, 0), _half(b, 2), b[4:20], [F(0)] * 32
    for j in range(16):
        y[j] = F(qs[j] & 0x0F) * d + m
        y[j + 16] = F(qs[j] >> 4) * d + m
    return y


def _q5(b: bytes, with_min: bool) -> List[np.float32]:
    d = _half(b, 0)
    m = _half(b, 2) if with_min else F(0)
    start = 4 if with_min else 2
    qh = int.from_bytes(b[start:start + 4], "little")
    qs, y = b[start + 4:start + 20], [F(0)] * 32
    for j in range(16):
        xh0 = ((qh >> j) << 4) & 0x10
        xh1 = (qh >> (j + 12)) & 0x10
        x0 = (qs[j] & 0x0F) | xh0
        x1 = (qs[j] >> 4) | xh1
        if with_min:
            y[j], y[j + 16] = F(x0) * d + m, F(x1) * d + m
        else:
            y[j], y[j + 16] = F(x0 - 16) * d, F(x1 - 16) * d
    return y


def q5_0(b: bytes) -> List[np.float32]:
    return _q5(b, False)


def q5_1(b: bytes) -> List[np.float32]:
    return _q5(b, True)


def q2_k(b: bytes) -> List[np.float32]:
    scales, qs, d, dmin = b[:16], b[16:80], _half(b, 80), _half(b, 82)
    y: List[np.float32] = []
    index = 0
    for half in range(2):
        q = qs[32 * half:32 * half + 32]
        for shift in (0, 2, 4, 6):
            for part in range(2):
                sc = scales[index]
                index += 1
                dl, ml = d * F(sc & 0x0F), dmin * F(sc >> 4)
                for l in range(16):
                    y.append(dl * F((q[16 * part + l] >> shift) & 3) - ml)
    return y


def q3_k(b: bytes) -> List[np.float32]:
    hmask, qs, packed, d = b[:32], b[32:96], b[96:108], _half(b, 108)
    aux = [int.from_bytes(packed[4 * i:4 * i + 4], "little") for i in range(3)] + [0]
    kmask1, kmask2, tmp = 0x03030303, 0x0F0F0F0F, aux[2]
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4)
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4)
    aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4)
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4)
    scales = np.frombuffer(b"".join(a.to_bytes(4, "little") for a in aux), dtype=np.int8)
    y: List[np.float32] = []
    index, m = 0, 1
    for half in range(2):
        q = qs[32 * half:32 * half + 32]
        for shift in (0, 2, 4, 6):
            for part in range(2):
                dl = d * F(int(scales[index]) - 32)
                index += 1
                for l in range(16):
                    k = 16 * part + l
                    y.append(dl * F(((q[k] >> shift) & 3) - (0 if hmask[k] & m else 4)))
            m <<= 1
    return y


def _scale_min_k4(j: int, q: bytes) -> Tuple[int, int]:
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def q4_k(b: bytes) -> List[np.float32]:
    d, dmin, scales, qs = _half(b, 0), _half(b, 2), b[4:16], b[16:144]
    y: List[np.float32] = []
    for chunk in range(4):
        sc1, m1 = _scale_min_k4(2 * chunk, scales)
        sc2, m2 = _scale_min_k4(2 * chunk + 1, scales)
        d1, min1, d2, min2 = d * F(sc1), dmin * F(m1), d * F(sc2), dmin * F(m2)
        q = qs[32 * chunk:32 * chunk + 32]
        y += [d1 * F(v & 0x0F) - min1 for v in q]
        y += [d2 * F(v >> 4) - min2 for v in q]
    return y


def q5_k(b: bytes) -> List[np.float32]:
    d, dmin, scales, qh, qs = _half(b, 0), _half(b, 2), b[4:16], b[16:48], b[48:176]
    y: List[np.float32] = []
    u1, u2 = 1, 2
    for chunk in range(4):
        sc1, m1 = _scale_min_k4(2 * chunk, scales)
        sc2, m2 = _scale_min_k4(2 * chunk + 1, scales)
        d1, min1, d2, min2 = d * F(sc1), dmin * F(m1), d * F(sc2), dmin * F(m2)
        ql = qs[32 * chunk:32 * chunk + 32]
        y += [d1 * F((ql[l] & 0x0F) + (16 if qh[l] & u1 else 0)) - min1 for l in range(32)]
        y += [d2 * F((ql[l] >> 4) + (16 if qh[l] & u2 else 0)) - min2 for l in range(32)]
        u1, u2 = u1 << 2, u2 << 2
    return y


def q6_k(b: bytes) -> List[np.float32]:
    ql_all, qh_all = b[:128], b[128:192]
    scales, d = np.frombuffer(b[192:208], dtype=np.int8), _half(b, 208)
    y = [F(0)] * 256
    for half in range(2):
        ql, qh, sc, base = ql_all[64 * half:], qh_all[32 * half:], scales[8 * half:], 128 * half
        for l in range(32):
            s = l // 16
            q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32
            q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32
            q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
            q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
            y[base + l] = d * F(sc[s]) * F(q1)
            y[base + l + 32] = d * F(sc[s + 2]) * F(q2)
            y[base + l + 64] = d * F(sc[s + 4]) * F(q3)
            y[base + l + 96] = d * F(sc[s + 6]) * F(q4)
    return y


REFERENCE: Dict[str, Callable[[bytes], List[np.float32]]] = {
    "Q8_0": q8_0, "Q4_0": q4_0, "Q4_1": q4_1, "Q5_0": q5_0, "Q5_1": q5_1,
    "Q2_K": q2_k, "Q3_K": q3_k, "Q4_K": q4_k, "Q5_K": q5_k, "Q6_K": q6_k,
}


def dequantize_blocks(blocks: np.ndarray, qtype: str) -> np.ndarray:
    """uint8 [n, type_size] -> float32 [n, block_size], one block at a time."""
    return np.array([REFERENCE[qtype](bytes(row)) for row in blocks], dtype=np.float32)
