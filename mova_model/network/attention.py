"""Attention backends: PyTorch SDPA (default), FlashAttention and SageAttention, chosen per sampling run.

`dit_block.attention` (every self-, cross- and bridge attention of MOVA) calls `attend`, which runs the
backend active in this process: SDPA unless a run is inside `use_attention_backend(name)`. All backends
compute unmasked softmax attention with scale 1/sqrt(head_dim) on q [B, Sq, H*D], k/v [B, Sk, H*D].

* `sdpa`: `F.scaled_dot_product_attention` on [B, H, S, D] — the reference (what the official code runs).
* `flash`: `flash_attn.flash_attn_func` (package `flash-attn`, CUDA, fp16/bf16) on [B, S, H, D]. Same
  math as SDPA's flash kernel; differs from SDPA by bf16 rounding only.
* `sage`: `sageattention.sageattn` (package `sageattention`, CUDA, fp16/bf16): q·k in int8 with per-block
  smoothing, p·v in fp16/fp8. Faster, and further from SDPA (its authors report end-to-end quality equal to
  full precision on Wan/HunyuanVideo; the per-layer error is larger than flash's).
* `auto`: on a CUDA device the best installed one (sage, then flash), else SDPA.

flash/sage only take fp16/bf16 on CUDA: a float32 or CPU call inside such a run goes to SDPA (logged once).
A backend whose package is missing raises `AttentionBackendError` naming what to install.

Kernel layout: every fused kernel needs q, k and v with a unit stride in their last (head) dimension; SDPA
silently falls back to its math kernel otherwise (which materializes the [B, H, Sq, Sk] score matrix: out of
memory at 360p) and sage asserts. `kernel_inputs` is the one gate every call passes through (SDPA, flash,
sage, and the masked SDPA of Ulysses): a tensor with another stride is copied (logged once). With
`MOVA_STRICT_ATTENTION_LAYOUT=1` (the test suite sets it) such a tensor raises `AttentionLayoutError`
instead, and so does an SDPA call that `torch._fused_sdp_choice` sends to the math kernel only because of
its layout, so the CPU suite sees what a GPU would refuse.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange

logger = logging.getLogger(__name__)

ATTENTION_BACKENDS = ("sdpa", "flash", "sage", "auto")


class AttentionBackendError(ValueError):
    """A backend that cannot run here (package missing, no CUDA); the message says what to do."""


@dataclass(frozen=True)
class BackendInfo:
    """name: backend; module: import name; package: what `pip install` needs; function: attribute called."""

    name: str
    module: str
    package: str
    function: str


OPTIONAL_BACKENDS: Dict[str, BackendInfo] = {
    "flash": BackendInfo("flash", "flash_attn", "flash-attn", "flash_attn_func"),
    "sage": BackendInfo("sage", "sageattention", "sageattention", "sageattn"),
}
AUTO_ORDER = ("sage", "flash")
"""`auto` on CUDA: the first installed of these (fastest first), else SDPA."""


STRICT_LAYOUT_ENV = "MOVA_STRICT_ATTENTION_LAYOUT"
"""Set to 1 to make a kernel-layout problem an error instead of a logged copy (the test suite sets it)."""


class AttentionLayoutError(RuntimeError):
    """q/k/v reached an attention kernel in a memory layout its fused kernels refuse (strict mode only)."""


_SDP_KERNELS = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


def fused_sdpa_choice(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      attn_mask: Optional[torch.Tensor] = None) -> str:
    """The kernel `F.scaled_dot_product_attention` picks for q/k/v [B, H, S, D] on their device, by PyTorch's
    own dispatcher (`torch._fused_sdp_choice`): "flash", "efficient", "cudnn", or "math" (the unfused
    fallback that materializes the whole score matrix)."""
    return _SDP_KERNELS.get(int(torch._fused_sdp_choice(q, k, v, attn_mask=attn_mask)), "math")


class _Layout:
    strict: bool = os.environ.get(STRICT_LAYOUT_ENV, "").strip() == "1"
    warned: bool = False


def set_strict_layout(strict: bool) -> bool:
    """Turn strict kernel-layout checking on or off; returns the previous setting."""
    previous, _Layout.strict = _Layout.strict, bool(strict)
    return previous


def kernel_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: str,
                  attn_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as the attention `kernel` ("sdpa", "flash", "sage") gets them ([B, H, S, D] for SDPA, [B, S, H, D]
    for flash/sage), each with a unit stride in its last dimension: a tensor without one is copied (logged
    once), or, in strict mode, refused with `AttentionLayoutError`. In strict mode an SDPA call is also refused
    when PyTorch would run its math kernel for these tensors but a fused one for contiguous copies of them."""
    bad = [name for name, t in zip("qkv", (q, k, v)) if t.stride(-1) != 1]
    if _Layout.strict:
        if bad:
            raise AttentionLayoutError(
                f"attention ({kernel}): {', '.join(bad)} reached the kernel with last-dim strides "
                f"{[t.stride(-1) for t in (q, k, v)]} (shapes {[tuple(t.shape) for t in (q, k, v)]}); fused "
                f"kernels need stride 1 (SDPA would run its math kernel, sage would assert)")
        if kernel == "sdpa" and not torch.compiler.is_compiling() and fused_sdpa_choice(q, k, v, attn_mask) == "math":
            copies = [t.contiguous() for t in (q, k, v)]
            if fused_sdpa_choice(*copies, attn_mask) != "math":
                raise AttentionLayoutError(
                    f"attention (sdpa): PyTorch runs its math kernel for q/k/v of strides "
                    f"{[t.stride() for t in (q, k, v)]} but a fused kernel for contiguous copies")
    if bad:
        if not _Layout.warned:
            _Layout.warned = True
            logger.warning("attention (%s): %s not contiguous in the head dimension; copied so a fused kernel runs",
                           kernel, ", ".join(bad))
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return q, k, v


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reference: q [B, Sq, H*D], k/v [B, Sk, H*D] -> [B, Sq, H*D] with `F.scaled_dot_product_attention`."""
    q, k, v = (rearrange(t, "b s (n d) -> b n s d", n=num_heads) for t in (q, k, v))
    q, k, v = kernel_inputs(q, k, v, "sdpa")
    out = F.scaled_dot_product_attention(q, k, v)
    return rearrange(out, "b n s d -> b s (n d)")


def installed(name: str) -> bool:
    """True when the optional backend's package can be imported (without importing it)."""
    info = OPTIONAL_BACKENDS[name]
    return importlib.util.find_spec(info.module) is not None


def resolve_backend(name: str, device: torch.device | str) -> str:
    """The concrete backend ("sdpa", "flash", "sage") for a user choice on `device`.

    Raises `AttentionBackendError` for an unknown name, a missing package or a non-CUDA device.
    """
    device = torch.device(device)
    if name not in ATTENTION_BACKENDS:
        raise AttentionBackendError(f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {name!r}")
    if name == "sdpa":
        return "sdpa"
    if name == "auto":
        if device.type != "cuda":
            return "sdpa"
        return next((b for b in AUTO_ORDER if installed(b)), "sdpa")
    info = OPTIONAL_BACKENDS[name]
    if not installed(name):
        raise AttentionBackendError(
            f"attention backend {name!r} needs the Python package '{info.package}', which is not installed in "
            f"ComfyUI's Python environment; install it with `pip install {info.package}` (it needs a CUDA GPU "
            f"and a matching PyTorch build), or choose 'sdpa' or 'auto'")
    if device.type != "cuda":
        raise AttentionBackendError(f"attention backend {name!r} runs on CUDA GPUs only; the model computes on "
                                    f"{device.type}; choose 'sdpa' or 'auto'")
    return name


def _load(name: str) -> Callable:
    info = OPTIONAL_BACKENDS[name]
    return getattr(importlib.import_module(info.module), info.function)


def _flash(fn: Callable) -> Callable:
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
        q, k, v = (rearrange(t, "b s (n d) -> b s n d", n=num_heads) for t in (q, k, v))
        q, k, v = kernel_inputs(q, k, v, "flash")
        return rearrange(fn(q, k, v), "b s n d -> b s (n d)")
    return run


def _sage(fn: Callable) -> Callable:
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
        q, k, v = (rearrange(t, "b s (n d) -> b s n d", n=num_heads) for t in (q, k, v))
        q, k, v = kernel_inputs(q, k, v, "sage")
        return rearrange(fn(q, k, v, tensor_layout="NHD", is_causal=False), "b s n d -> b s (n d)")
    return run


_WRAPPERS = {"flash": _flash, "sage": _sage}


class _Active:
    """The backend of the running generation (a plain global: one sampling run at a time per process)."""

    name: str = "sdpa"
    kernel: Optional[Callable] = None
    warned: bool = False


_ACTIVE = _Active()


def active_backend() -> str:
    """Name of the backend `attend` uses now."""
    return _ACTIVE.name


@contextlib.contextmanager
def use_attention_backend(name: str, device: torch.device | str = "cuda") -> Iterator[str]:
    """Run the enclosed code with backend `name` (resolved for `device`); yields the concrete backend name."""
    concrete = resolve_backend(name, device)
    previous: Tuple[str, Optional[Callable], bool] = (_ACTIVE.name, _ACTIVE.kernel, _ACTIVE.warned)
    _ACTIVE.name = concrete
    _ACTIVE.kernel = None if concrete == "sdpa" else _WRAPPERS[concrete](_load(concrete))
    _ACTIVE.warned = False
    if concrete != "sdpa" or name != "sdpa":
        logger.info("attention backend: %s (chosen: %s)", concrete, name)
    try:
        yield concrete
    finally:
        _ACTIVE.name, _ACTIVE.kernel, _ACTIVE.warned = previous


def _runs_fused_backend(q: torch.Tensor) -> bool:
    """Whether flash/sage can take this call: fp16/bf16 on CUDA."""
    return q.dtype in (torch.float16, torch.bfloat16) and q.device.type == "cuda"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Softmax attention with the active backend: q [B, Sq, H*D], k/v [B, Sk, H*D] -> [B, Sq, H*D]."""
    kernel = _ACTIVE.kernel
    if kernel is None:
        return sdpa_attention(q, k, v, num_heads)
    if not _runs_fused_backend(q):
        if not _ACTIVE.warned:
            _ACTIVE.warned = True
            logger.warning("attention backend %s needs fp16/bf16 on CUDA; %s on %s runs with SDPA",
                           _ACTIVE.name, q.dtype, q.device.type)
        return sdpa_attention(q, k, v, num_heads)
    return kernel(q, k, v, num_heads)
