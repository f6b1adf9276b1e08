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
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
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


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reference: q [B, Sq, H*D], k/v [B, Sk, H*D] -> [B, Sq, H*D] with `F.scaled_dot_product_attention`."""
    q, k, v = (rearrange(t, "b s (n d) -> b n s d", n=num_heads) for t in (q, k, v))
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
        return rearrange(fn(q, k, v), "b s n d -> b s (n d)")
    return run


def _sage(fn: Callable) -> Callable:
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
        q, k, v = (rearrange(t, "b s (n d) -> b s n d", n=num_heads) for t in (q, k, v))
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


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Softmax attention with the active backend: q [B, Sq, H*D], k/v [B, Sk, H*D] -> [B, Sq, H*D]."""
    kernel = _ACTIVE.kernel
    if kernel is None:
        return sdpa_attention(q, k, v, num_heads)
    if q.dtype not in (torch.float16, torch.bfloat16) or q.device.type != "cuda":
        if not _ACTIVE.warned:
            _ACTIVE.warned = True
            logger.warning("attention backend %s needs fp16/bf16 on CUDA; %s on %s runs with SDPA",
                           _ACTIVE.name, q.dtype, q.device.type)
        return sdpa_attention(q, k, v, num_heads)
    return kernel(q, k, v, num_heads)
