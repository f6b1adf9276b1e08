"""The compute dtype `auto` means on a device: bf16 where the GPU computes it in hardware, else float32.

`torch.cuda.is_bf16_supported()` also says yes on GPUs that only emulate bf16 (before Ampere: Turing, Volta,
Pascal), where bf16 matmuls run several times slower than fp16 or fp32. So the test here is the hardware one:
compute capability 8.0 or newer on NVIDIA, ROCm's own answer without emulation on AMD. Inside ComfyUI the
node passes the host's judgement instead (`comfy.model_management.should_use_bf16`).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

logger = logging.getLogger(__name__)


def bf16_native(device: torch.device | str) -> bool:
    """True when `device` is a GPU that computes bf16 in hardware (NVIDIA compute capability >= 8.0)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if getattr(torch.version, "hip", None):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return tuple(torch.cuda.get_device_capability(device)) >= (8, 0)


def auto_dtype(device: torch.device | str, native_bf16: Optional[bool] = None) -> torch.dtype:
    """bf16 on a GPU with native bf16 (`native_bf16`, default `bf16_native(device)`), else float32 (CPU bf16
    matmuls are slow too). A GPU without it is told in the log, with the explicit choice that halves memory."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    if native_bf16 is None:
        native_bf16 = bf16_native(device)
    if native_bf16:
        return torch.bfloat16
    logger.warning("%s has no native bf16 (it would be emulated, several times slower): computing in float32; "
                   "choose fp16 explicitly to halve memory (MOVA was trained in bf16: check the results)", device)
    return torch.float32
