"""`python -m mova_model quantize SRC DST --format gguf --type Q8_0`: components as one GGUF file each.

Each chosen component folder (default: both video experts, the audio DiT and the bridge) gets one
`<component>.gguf` beside its unchanged `config.json`; the safetensors shards are not copied. Tensor names are
the state-dict keys (for the video experts exactly Wan 2.2's, so the files also open in ComfyUI-GGUF as "wan").

Which tensors are quantized (`gguf_tensor_type`): the 2-D matrices, except the community's keep-high-precision
list (what city96's converter and the published Wan GGUFs keep): adaLN `modulation` tables, the patch / text /
time embeddings, the time projection, the output head, every norm, biases and every 1-D tensor, and in the text
encoder the token embedding and the relative-attention bias tables. Kept tensors keep their stored type (BF16,
F16 or F32); a matrix whose rows the block size does not divide is stored as F16.

Types written here are the ones the `gguf` package quantizes in Python: Q8_0, Q5_1, Q5_0, Q4_1, Q4_0 (blocks of
32 weights) and F16 / BF16. The K-quants (Q2_K ... Q6_K) need llama.cpp's quantizer (see the README: write a BF16
GGUF folder here, quantize each file with city96's patched `llama-quantize`); this pack reads them.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..checkpoint.gguf_write import GGUFTensor, write_gguf_file
from ..network.gguf_dequant import GGUF_QUANT_SIZES

logger = logging.getLogger(__name__)

WRITABLE_TYPES: Tuple[str, ...] = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "F16", "BF16")
"""Types `--type` accepts (the gguf package's Python quantizers)."""

GGUF_ARCHITECTURES: Dict[str, str] = {"video_dit": "wan", "video_dit_2": "wan", "audio_dit": "wan",
                                      "dual_tower_bridge": "mova_bridge", "text_encoder": "mova"}
"""`general.architecture` written per component: the Wan-style DiTs say "wan" (what community tools expect)."""

KEEP_PATTERNS = (
    re.compile(r"(^|\.)modulation$"),
    re.compile(r"(^|\.)(patch_embedding|text_embedding|time_embedding|time_projection|head)\."),
    re.compile(r"norm"),
    re.compile(r"(^|\.)(shared|embed_tokens)\."),
    re.compile(r"relative_attention_bias"),
)
"""Keys kept in their stored precision whatever `--type` says (the community's keep-high-precision list)."""

_STORED_TYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def keeps_precision(key: str, shape: Tuple[int, ...]) -> bool:
    """True for a tensor the community keeps in high precision: 1-D (biases, norm weights), not 2-D
    (modulation tables, conv kernels), or named in `KEEP_PATTERNS`."""
    return len(shape) != 2 or key.endswith(".bias") or any(p.search(key) for p in KEEP_PATTERNS)


def gguf_tensor_type(key: str, shape: Tuple[int, ...], stored: torch.dtype, target: str) -> str:
    """The GGUF type `key` is written as: its stored type when kept (see `keeps_precision`), F16 when `target`'s
    block size does not divide its rows, else `target`."""
    if stored not in _STORED_TYPES:
        raise ValueError(f"{key}: cannot write a {stored} tensor to GGUF (float32, float16 or bfloat16 only)")
    if keeps_precision(key, shape):
        return _STORED_TYPES[stored]
    if target in GGUF_QUANT_SIZES and shape[-1] % GGUF_QUANT_SIZES[target][0]:
        return "F16"
    return target


Q8_PIECE_BLOCKS = 1 << 15
"""Q8_0 blocks quantized per piece (1M weights)."""


def quantize_q8_0(values: torch.Tensor) -> torch.Tensor:
    """Q8_0 blocks of a float32 tensor whose last dimension is a multiple of 32: uint8 [..., n / 32 * 34].

    The `gguf` package's Q8_0 quantizer (ggml's reference: scale = max|x| / 127 per 32 weights, codes rounded half
    away from zero with the float32 scale, the scale stored as float16) in torch, bit for bit, several times
    on every core (the numpy version runs on one).
    """
    flat = values.reshape(-1, 32)
    out = torch.empty((flat.shape[0], 34), dtype=torch.uint8)
    for start in range(0, flat.shape[0], Q8_PIECE_BLOCKS):  # pieces: temporaries stay in the caches
        blocks = flat[start:start + Q8_PIECE_BLOCKS].to(torch.float32)
        scale = blocks.abs().amax(dim=1, keepdim=True) / 127
        inverse = torch.where(scale == 0, torch.zeros_like(scale), 1.0 / scale)
        scaled = blocks * inverse
        magnitude = scaled.abs()
        floored = magnitude.floor()
        codes = (scaled.sign() * (floored + (2 * (magnitude - floored)).floor())).to(torch.int8)
        out[start:start + blocks.shape[0], :2] = scale.to(torch.float16).view(torch.uint8)
        out[start:start + blocks.shape[0], 2:] = codes.view(torch.uint8)
    return out.reshape(*values.shape[:-1], values.shape[-1] // 32 * 34)


def encode(tensor: torch.Tensor, qtype: str) -> np.ndarray:
    """A tensor's GGUF data: float numpy values for F32/F16, uint8 bytes for BF16 and the quantized types."""
    if qtype == "Q8_0":
        return quantize_q8_0(tensor.detach()).numpy()
    if qtype == "BF16":
        return tensor.detach().to(torch.bfloat16).contiguous().view(torch.uint8).numpy()
    if qtype == "F32":
        return tensor.detach().to(torch.float32).contiguous().numpy()
    if qtype == "F16":
        return tensor.detach().to(torch.float16).contiguous().numpy()
    from gguf import GGMLQuantizationType, quantize

    values = tensor.detach().to(torch.float32).contiguous().numpy()
    return quantize(values, GGMLQuantizationType[qtype])


class Progress:
    """Progress of a quantization on stderr: weights done of the total, rate and time left (one line, redrawn)."""

    def __init__(self, total: int, label: str, stream=None, min_interval: float = 0.5) -> None:
        self.total, self.label = max(int(total), 1), label
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.start = self.last = time.monotonic()
        self.min_interval = min_interval

    def advance(self, numel: int) -> None:
        self.done += int(numel)
        now = time.monotonic()
        if now - self.last < self.min_interval and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        left = (self.total - self.done) / rate if rate else 0.0
        unit, scale = ("B", 1e9) if self.total >= 1e9 else ("M", 1e6)
        self.stream.write(f"\r{self.label}: {100.0 * self.done / self.total:5.1f} % ({self.done / scale:.2f} of "
                          f"{self.total / scale:.2f} {unit} weights, {rate / 1e6:.1f} M/s, {left:.0f} s left)")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def write_gguf_component(store, dst: Path, component: str, target: str,
                         progress: Optional[Progress] = None) -> Tuple[Dict[str, int], int]:
    """Write every tensor of `store` (a component's `SafetensorsStore`) into `dst` as one GGUF file.

    Returns (tensor count per written type, bytes written). One tensor is in memory at a time.
    """
    if target not in WRITABLE_TYPES:
        raise ValueError(f"--type {target} cannot be written here; choose one of {', '.join(WRITABLE_TYPES)} "
                         "(K-quants: see the README's GGUF section)")
    tensors: List[GGUFTensor] = []
    counts: Dict[str, int] = {}
    for key in sorted(store.tensors):
        info = store.info(key)
        qtype = gguf_tensor_type(key, info.shape, info.torch_dtype, target)
        counts[qtype] = counts.get(qtype, 0) + 1

        def make(key=key, qtype=qtype) -> np.ndarray:
            return encode(store.get_tensor(key), qtype)

        tensors.append(GGUFTensor(key, qtype, tuple(info.shape), make))
    report: Callable[[GGUFTensor], None] = (lambda t: progress.advance(t.numel)) if progress else (lambda t: None)
    metadata = {"general.name": f"MOVA {component}", "general.type": "model", "mova.component": component,
                "mova.quantized_by": "python -m mova_model quantize --format gguf", "mova.target_type": target}
    size = write_gguf_file(dst, tensors, GGUF_ARCHITECTURES.get(component, "mova"), metadata, report)
    return counts, size


def gguf_numel(store) -> int:
    """Weights a component holds (the progress total)."""
    return sum(info.numel for info in store.tensors.values())
