"""fp8 matmul: fp8-stored Linear weights multiplied in fp8 with `torch._scaled_mm` instead of being dequantized.

The cast path (`ops.cast_tensor`) turns an fp8 weight into bf16 (`q.to(bf16) · s`) before every matmul. On GPUs
with fp8 tensor cores (compute capability ≥ 8.9: Ada, Hopper, Blackwell) `torch._scaled_mm` multiplies the
stored fp8 matrix directly, with the per-tensor weight scale `s` the fp8 storage already keeps
(`memory/fp8.py`) and a per-tensor activation scale computed on the fly (`amax(|x|) / 448`, the activation
rounded to e4m3fn). The extra error over the cast path is the e4m3 rounding of the activations (3 mantissa
bits, about 2^-4 relative per element), averaged over the reduction.

Off unless a run is inside `use_fp8_matmul(True, device)` and the device supports it; everywhere else
`CastLinear` keeps the cast path. `scaled_linear` itself also runs on CPU (PyTorch has a CPU kernel), which is
how the tests compare both paths without a GPU.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Optional

import torch

logger = logging.getLogger(__name__)

_FP8 = torch.float8_e4m3fn
_FP8_MAX = float(torch.finfo(_FP8).max)
MIN_CAPABILITY = (8, 9)
QUANT_CHUNK_BYTES = 64 * 2 ** 20
"""The activation is scaled and rounded to e4m3 in row pieces of at most this many float32 bytes, so the only
temporaries besides the e4m3 copy (1 byte per element) are one float32 piece (the memory planner counts both,
`memory.sizes.FP8_QUANT_CHUNK_BYTES`). The values do not depend on it: every step is elementwise or a max."""


class _State:
    enabled: bool = False


_STATE = _State()


def fp8_matmul_supported(device: torch.device | str) -> bool:
    """True on a CUDA device of compute capability ≥ 8.9 (fp8 tensor cores)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= MIN_CAPABILITY


def fp8_matmul_active() -> bool:
    """True while `CastLinear` should use `scaled_linear` for fp8 weights."""
    return _STATE.enabled


@contextlib.contextmanager
def use_fp8_matmul(enabled: bool, device: torch.device | str) -> Iterator[bool]:
    """Enable fp8 matmul for the enclosed run when asked and supported; yields whether it is on."""
    on = bool(enabled) and fp8_matmul_supported(device)
    if enabled and not on:
        logger.info("fp8 matmul: %s has no fp8 tensor cores (needs a CUDA GPU of compute capability >= 8.9); "
                    "fp8 weights use the cast path", torch.device(device))
    previous = _STATE.enabled
    _STATE.enabled = on
    try:
        yield on
    finally:
        _STATE.enabled = previous


def _shapes_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # _scaled_mm needs both matrix dimensions of the weight to be multiples of 16
    return weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0 and x.dtype in (torch.bfloat16, torch.float16, torch.float32)


def scaled_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: Optional[torch.Tensor],
                  bias: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """`x @ (weight · weight_scale)ᵀ + bias` with `torch._scaled_mm`; None when the shapes do not allow it.

    x: [..., in] (bf16/fp16/fp32); weight: fp8 e4m3fn [out, in]; weight_scale: float32 scalar (None = 1);
    bias: [out] or None. Returns [..., out] in x's dtype.
    """
    if not _shapes_ok(x, weight):
        return None
    rows = x.reshape(-1, x.shape[-1])
    x_scale, x8 = quantize_rows(rows)
    w_scale = (weight_scale if weight_scale is not None else torch.ones(())).to(device=x.device, dtype=torch.float32)
    out = torch._scaled_mm(x8, weight.to(x.device).t(), scale_a=x_scale, scale_b=w_scale.reshape(()),
                           out_dtype=x.dtype)
    del x8
    if bias is not None:
        out.add_(bias.to(device=x.device, dtype=x.dtype))
    return out.reshape(*x.shape[:-1], weight.shape[0])


def quantize_rows(rows: torch.Tensor) -> tuple:
    """(scale, e4m3 rows) of an activation `rows` [N, K]: scale = max|x| / 448 (float32 scalar) and
    `clamp(x / scale, ±448)` rounded to e4m3fn, the same numbers as the whole-tensor expression, computed in
    pieces of `QUANT_CHUNK_BYTES` float32 bytes (in place where the piece is a copy already)."""
    piece_rows = max(1, QUANT_CHUNK_BYTES // max(1, rows.shape[1] * 4))
    pieces = range(0, rows.shape[0], piece_rows)
    amax = torch.stack([rows[i:i + piece_rows].abs().amax() for i in pieces]).amax()
    x_scale = (amax.float().clamp(min=1e-12) / _FP8_MAX).reshape(())
    x8 = torch.empty(rows.shape, dtype=_FP8, device=rows.device)
    for i in pieces:
        piece = rows[i:i + piece_rows]
        scaled = piece.float()
        scaled = scaled / x_scale if scaled.data_ptr() == piece.data_ptr() else scaled.div_(x_scale)
        x8[i:i + piece_rows].copy_(scaled.clamp_(-_FP8_MAX, _FP8_MAX))
        del scaled
    return x_scale, x8
