"""fp8 (e4m3fn) weight storage with one float32 scale per tensor.

A matrix `W` is stored as `q = round_e4m3(W / s)` with `s = max|W| / 448` (448 is the largest finite e4m3fn
value), and read back as `q.to(dtype) * s` — exactly the dequantization `mova_model.network.ops.cast_tensor` performs
at forward, so a layer holding `q` in `weight` and `s` in a `weight_scale` buffer computes with the same
numbers these functions return.

Which tensors are quantized (`is_fp8_candidate`): the 2-D Linear matrices of the DiTs and the bridge. Norm
weights, biases and adaLN `modulation` tables keep their dtype (they are vectors or 3-D tables), and so do the
timestep MLPs and the output head (`time_embedding`, `time_projection`, `head`), whose outputs scale every
block's modulation; they hold under 2 % of an expert's parameters. In the text encoder, embeddings
(`shared`, `embed_tokens`) and the relative-attention bias tables are lookups, not matrices, and stay as stored.

On-disk naming (pre-quantized checkpoints written by `python -m mova_model quantize`): the fp8 matrix keeps
its key, its scale is a float32 scalar stored as `<key>_scale` (`blocks.0.self_attn.q.weight_scale`). That is
also the state-dict key of the `weight_scale` buffer `prepare_fp8_layers` registers, so a strict
`load_state_dict` accepts a pre-quantized file.
"""

from __future__ import annotations

import logging
import re
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch
from torch import nn

from ..network.ops import FP8_DTYPE, CastMixin

logger = logging.getLogger(__name__)

FP8_MAX = float(torch.finfo(FP8_DTYPE).max)
"""Largest finite e4m3fn value (448)."""

SCALE_SUFFIX = "_scale"
"""A quantized tensor `<key>` has its scale at `<key>_scale`."""

FP8_COMPONENTS: Tuple[str, ...] = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")
"""Components quantized by default (the ones streamed block by block)."""

_KEEP_PATTERNS = (
    re.compile(r"(^|\.)time_embedding\."),
    re.compile(r"(^|\.)time_projection\."),
    re.compile(r"(^|\.)head\."),
    re.compile(r"(^|\.)shared\."),
    re.compile(r"(^|\.)embed_tokens\."),
    re.compile(r"relative_attention_bias"),
)


def is_fp8_candidate(key: str, shape: Iterable[int], dtype: torch.dtype) -> bool:
    """True when the tensor stored under `key` is a Linear matrix that fp8 storage applies to.

    key: state-dict key; shape: tensor shape; dtype: stored dtype (only bf16/fp16/fp32 qualify).
    """
    shape = tuple(shape)
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return False
    if not key.endswith(".weight") or len(shape) != 2:
        return False
    return not any(p.search(key) for p in _KEEP_PATTERNS)


def quantize_tensor(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor e4m3fn quantization: weight [..] (any float dtype) -> (q fp8 [..], scale float32 []).

    scale = max|weight| / 448 computed in float32 (1.0 for an all-zero tensor); q = weight / scale rounded
    to nearest e4m3fn. Non-finite inputs are rejected rather than silently saturated.
    """
    w32 = weight.detach().to(torch.float32)
    amax = w32.abs().max() if w32.numel() else torch.tensor(0.0)
    if not torch.isfinite(amax):
        raise ValueError("cannot quantize a tensor holding inf or nan to fp8")
    scale = (amax / FP8_MAX) if amax > 0 else torch.tensor(1.0)
    scale = scale.to(torch.float32).reshape(())
    q = (w32 / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def dequantize_tensor(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Inverse of `quantize_tensor` in `dtype`: `q.to(dtype) * scale.to(dtype)` (what `ops.cast_tensor` does)."""
    return q.to(dtype) * scale.to(device=q.device, dtype=dtype)


def quantize_state_dict(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Quantize every candidate matrix of a state dict; add `<key>_scale` entries. Other tensors pass through."""
    out: Dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if is_fp8_candidate(key, tensor.shape, tensor.dtype):
            out[key], out[key + SCALE_SUFFIX] = quantize_tensor(tensor)
        else:
            out[key] = tensor
    return out


def prepare_fp8_layers(module: nn.Module, state_keys: Iterable[str]) -> int:
    """Register a `weight_scale` buffer on every layer whose `<prefix>.weight_scale` key is in `state_keys`.

    Call on a (meta) module before `load_state_dict(state, assign=True, strict=True)` of a pre-quantized
    state dict, so the scale keys are expected. Returns the number of layers prepared.
    """
    count = 0
    for key in state_keys:
        if not key.endswith(".weight" + SCALE_SUFFIX):
            continue
        layer_name = key[: -len(".weight" + SCALE_SUFFIX)]
        layer = module.get_submodule(layer_name)
        if "weight_scale" not in layer._buffers:
            layer.register_buffer("weight_scale", torch.ones((), dtype=torch.float32, device="meta"))
            count += 1
    return count


@torch.no_grad()
def quantize_module_(module: nn.Module, prefix: str = "", counter=None) -> int:
    """Quantize the candidate Linear weights of `module` in place (fp8 on load from bf16/fp32 weights).

    Each qualifying ops layer gets an fp8 `weight` parameter and a float32 `weight_scale` buffer; layers
    already in fp8 are left alone. `prefix` is the component name used for the candidate rule and for the
    `counter` (a `MaterializationCounter`, which records one "convert" event per component). Returns the
    number of layers converted. The new tensors live in host RAM (1 byte per weight).
    """
    converted = 0
    nbytes = 0
    for name, layer in module.named_modules():
        if not isinstance(layer, CastMixin) or not isinstance(getattr(layer, "weight", None), torch.Tensor):
            continue
        weight = layer.weight
        key = f"{name}.weight" if name else "weight"
        if weight.device.type == "meta" or not is_fp8_candidate(key, weight.shape, weight.dtype):
            continue
        q, scale = quantize_tensor(weight)
        layer.weight = nn.Parameter(q.to(weight.device), requires_grad=False)
        layer.register_buffer("weight_scale", scale.to(weight.device))
        converted += 1
        nbytes += q.numel()
    if counter is not None and converted:
        counter.record(prefix or type(module).__name__, nbytes, "convert")
    logger.info("fp8: quantized %d matrices of %s (%.2f GB)", converted, prefix or type(module).__name__, nbytes / 1e9)
    return converted


def fp8_error(reference: torch.Tensor, other: torch.Tensor) -> Dict[str, float]:
    """Error summary of `other` against `reference`: max abs, mean abs, relative L2 (float64 arithmetic)."""
    ref = reference.detach().to(torch.float64)
    diff = other.detach().to(torch.float64) - ref
    denom = ref.norm().item() or 1.0
    return {"max_abs": diff.abs().max().item(), "mean_abs": diff.abs().mean().item(),
            "rel_l2": diff.norm().item() / denom}


def optional_scale(state: Mapping[str, torch.Tensor], key: str) -> Optional[torch.Tensor]:
    """The stored scale of `key` in a pre-quantized state dict, or None."""
    return state.get(key + SCALE_SUFFIX)
