"""The operations factory: every Linear / Conv / Norm of the MOVA DiTs, bridge and text encoder is built here.

Model code never instantiates `torch.nn.Linear` & co. directly; it asks an `Operations` object. That keeps
three decisions outside the model code (the idea of ComfyUI's `comfy/ops.py`):

1. **Storage.** Parameters keep the dtype and device they were loaded with (memory-mapped bf16/fp32 from the
   user's safetensors, fp8 e4m3fn with a per-tensor scale, or the raw uint8 blocks of a GGUF quantized type,
   see `set_gguf_weight`). Layers are created on the `meta` device, so building a 14B expert allocates
   nothing until weights are assigned.
2. **Casting.** At forward each layer casts its weight and bias to the dtype and device of its input
   (`cast_weight`), dequantizing fp8 or GGUF blocks on the way, on the compute device, just before the
   matmul. The model decides the compute dtype by the dtype of the activations it feeds in.
3. **Patches.** LoRA adapters are attached to layers (`CastLinear.adapters`) and added as a separate low-rank
   term at forward, the way the official trainer's `LoRALinear` does (`W x + b + B(A x)·scaling`); full-size
   deltas (ComfyUI's `.diff` / `.diff_b`, a low-rank pair on a convolution) are attached as `deltas` and added
   to the cast parameter at forward (`W + ΔW·scale`, ComfyUI's merge, done lazily). The base weight is never
   rewritten.

Block streaming (moving whole blocks to the device ahead of use) lives in `mova_model.memory.streaming` and
works on the parameters of these layers; nothing here depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .fp8_matmul import fp8_matmul_active, scaled_linear
from .gguf_dequant import GGUF_QUANT_SIZES, dequantize

FP8_DTYPE = torch.float8_e4m3fn
"""Storage dtype of fp8 weights (e4m3fn, per-tensor scale stored beside the weight as `<name>_scale`)."""


@dataclass
class LoraAdapter:
    """One low-rank adapter on a Linear: `y += up(down(x)) · scale`.

    down: [rank, in_features]; up: [out_features, rank]; scale = alpha / rank × user strength.
    """

    down: torch.Tensor
    up: torch.Tensor
    scale: float


@dataclass
class WeightDelta:
    """A delta added to one parameter of a layer at forward: `param + delta · scale` (ComfyUI's merged patch).

    name: the parameter ("weight", "bias", "modulation"). Without `down`, delta = `tensor` (same shape as the
    parameter: a ComfyUI `.diff` / `.diff_b`). With `down`, delta = `(tensor.flatten(1) @ down.flatten(1))`
    reshaped to the parameter (a low-rank pair on a convolution: tensor = up [out, rank, 1, ...], down
    [rank, in, *kernel]), computed in the compute dtype as ComfyUI computes its LoRA diff.
    """

    name: str
    tensor: torch.Tensor
    scale: float
    down: Optional[torch.Tensor] = None

    def value(self, like: torch.Tensor) -> torch.Tensor:
        delta = self.tensor.to(device=like.device, dtype=like.dtype)
        if self.down is not None:
            down = self.down.to(device=like.device, dtype=like.dtype)
            delta = torch.mm(delta.flatten(1), down.flatten(1)).reshape(like.shape)
        return delta * self.scale


def add_deltas(tensor: Optional[torch.Tensor], deltas: Tuple[WeightDelta, ...], name: str) -> Optional[torch.Tensor]:
    """`tensor` (a parameter already cast to the compute dtype/device) plus the attached deltas named `name`."""
    for delta in deltas:
        if delta.name == name and tensor is not None:
            tensor = tensor + delta.value(tensor)
    return tensor


def cast_tensor(tensor: Optional[torch.Tensor], dtype: torch.dtype, device: torch.device,
                scale: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """Return `tensor` as `dtype` on `device`; an fp8 tensor is dequantized as `tensor.to(dtype) · scale`.

    No copy is made when the tensor already has that dtype and device.
    """
    if tensor is None:
        return None
    if tensor.dtype == FP8_DTYPE:
        out = tensor.to(device=device, non_blocking=True).to(dtype)
        if scale is not None:
            out = out * scale.to(device=device, dtype=dtype)
        return out
    return tensor.to(device=device, dtype=dtype, non_blocking=True)


class CastMixin:
    """Casts the layer's parameters to the input's dtype/device at forward (fp8 and GGUF aware), plus attached deltas.

    `gguf_type` / `gguf_shape`: set on layers whose `weight` holds GGUF quantized blocks (`set_gguf_weight`).
    """

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    gguf_type: Optional[str] = None
    gguf_shape: Optional[Tuple[int, ...]] = None
    deltas: Tuple[WeightDelta, ...] = ()
    """Attached by `mova_model.network.lora.LoraPatchSet` while a pipeline samples; empty otherwise."""

    def cast_weight(self, like: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.gguf_type is not None:
            # the quantized bytes move (a no-op when streamed or resident there), then expand on that device
            raw = self.weight.to(device=like.device, non_blocking=True)
            weight = dequantize(raw, self.gguf_type, self.gguf_shape, like.dtype)
        else:
            weight = cast_tensor(self.weight, like.dtype, like.device, getattr(self, "weight_scale", None))
        bias = cast_tensor(getattr(self, "bias", None), like.dtype, like.device)
        if self.deltas:
            weight, bias = add_deltas(weight, self.deltas, "weight"), add_deltas(bias, self.deltas, "bias")
        return weight, bias  # type: ignore[return-value]


class CastLinear(CastMixin, nn.Linear):
    """`nn.Linear` that casts at forward and adds attached LoRA adapters. Input [..., in] -> [..., out]."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.adapters: List[LoraAdapter] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        if self.weight.dtype == FP8_DTYPE and fp8_matmul_active() and not self.deltas:
            out = scaled_linear(x, self.weight, getattr(self, "weight_scale", None), self.bias)
        if out is None:
            weight, bias = self.cast_weight(x)
            out = F.linear(x, weight, bias)
        for adapter in self.adapters:
            down = adapter.down.to(device=x.device, dtype=x.dtype)
            up = adapter.up.to(device=x.device, dtype=x.dtype)
            out = out + F.linear(F.linear(x, down), up) * adapter.scale
        return out


class CastConv1d(CastMixin, nn.Conv1d):
    """`nn.Conv1d` that casts at forward. Input [B, C_in, L] -> [B, C_out, L_out]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.cast_weight(x)
        return self._conv_forward(x, weight, bias)


class CastConv3d(CastMixin, nn.Conv3d):
    """`nn.Conv3d` that casts at forward. Input [B, C_in, T, H, W] -> [B, C_out, T', H', W']."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.cast_weight(x)
        return self._conv_forward(x, weight, bias)


class CastLayerNorm(CastMixin, nn.LayerNorm):
    """`nn.LayerNorm` (affine or not) that casts its affine parameters at forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        weight, bias = self.cast_weight(x)
        return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


class CastRMSNorm(CastMixin, nn.RMSNorm):
    """`nn.RMSNorm` (what the official DiT attention uses for q/k) that casts its weight at forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, _ = self.cast_weight(x)  # no bias; LoRA deltas added there like every other layer's
        return F.rms_norm(x, self.normalized_shape, weight, self.eps)


def set_gguf_weight(layer: nn.Module, qtype: str, shape: Tuple[int, ...], raw: torch.Tensor) -> None:
    """Make `layer` (an operations-built Linear or Conv) hold its weight as GGUF quantized blocks.

    qtype: a key of `gguf_dequant.GGUF_QUANT_SIZES`; shape: the weight's logical shape (`[out, in]`,
    `[out, in, t, h, w]`); raw: the stored bytes, uint8 (on the meta device to prepare a module for
    `load_state_dict(assign=True)`, or real bytes). The layer dequantizes them at every forward.
    """
    if not isinstance(layer, CastMixin):
        raise TypeError(f"{type(layer).__name__} is not an operations-built layer; it cannot hold GGUF blocks")
    if qtype not in GGUF_QUANT_SIZES or raw.dtype != torch.uint8:
        raise ValueError(f"GGUF weights are uint8 blocks of {', '.join(GGUF_QUANT_SIZES)}, got {qtype} {raw.dtype}")
    layer.weight = nn.Parameter(raw, requires_grad=False)
    layer.gguf_type = qtype
    layer.gguf_shape = tuple(int(s) for s in shape)


def weight_shape(layer: nn.Module) -> Tuple[int, ...]:
    """The logical shape of a layer's weight: `gguf_shape` for GGUF blocks (whose uint8 tensor has the byte
    shape), else `weight.shape`. What shape checks against a layer (LoRA pairs, deltas) must compare with."""
    shape = getattr(layer, "gguf_shape", None)
    return tuple(shape) if shape is not None else tuple(layer.weight.shape)


class Operations:
    """Factory of layers. `device` is where parameters are created (default `meta`: no allocation, no init).

    Usage in model code: `self.q = ops.Linear(dim, dim)`; the caller then assigns real tensors with
    `module.load_state_dict(state, assign=True)` (see `mova_model.checkpoint.folder`) or `init_random_`.
    """

    def __init__(self, device: torch.device | str = "meta", dtype: Optional[torch.dtype] = None) -> None:
        self.device = torch.device(device)
        self.dtype = dtype

    def _kw(self) -> dict:
        return {"device": self.device, "dtype": self.dtype}

    def Linear(self, in_features: int, out_features: int, bias: bool = True) -> CastLinear:  # noqa: N802
        return CastLinear(in_features, out_features, bias=bias, **self._kw())

    def Conv1d(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,  # noqa: N802
               dilation=1, groups: int = 1, bias: bool = True) -> CastConv1d:
        return CastConv1d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                          dilation=dilation, groups=groups, bias=bias, **self._kw())

    def Conv3d(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,  # noqa: N802
               bias: bool = True) -> CastConv3d:
        return CastConv3d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias, **self._kw())

    def LayerNorm(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True) -> CastLayerNorm:  # noqa: N802
        return CastLayerNorm(dim, eps=eps, elementwise_affine=elementwise_affine, **self._kw())

    def RMSNorm(self, dim: int, eps: float = 1e-6) -> CastRMSNorm:  # noqa: N802
        return CastRMSNorm(dim, eps=eps, **self._kw())

    def Parameter(self, *shape: int) -> nn.Parameter:  # noqa: N802
        """A free parameter (e.g. adaLN `modulation` tables), created like the layers' parameters."""
        return nn.Parameter(torch.empty(*shape, **self._kw()), requires_grad=False)


def iter_cast_layers(module: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """Yield `(qualified_name, layer)` for every operations-built layer inside `module`."""
    for name, child in module.named_modules():
        if isinstance(child, CastMixin):
            yield name, child


@torch.no_grad()
def init_random_(module: nn.Module, generator: Optional[torch.Generator] = None,
                 dtype: torch.dtype = torch.float32) -> nn.Module:
    """Give every parameter of a (possibly meta) module real random values on the CPU, in place.

    Used to make tiny random-weight checkpoints whose activations stay well scaled: matrices and kernels get
    std 1/sqrt(fan_in), norm weights and Snake `alpha`s 1 + noise, adaLN `modulation` tables std 1/sqrt(dim)
    (as the official init), biases small noise.
    """
    for name, param in list(module.named_parameters(recurse=True)):
        owner = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
        leaf = name.rpartition(".")[2]
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        if leaf == "modulation":
            values = noise / param.shape[-1] ** 0.5
        elif "alpha" in leaf or (leaf == "weight" and param.dim() == 1):
            values = 1.0 + 0.02 * noise
        elif param.dim() >= 2:
            fan_in = max(1, param.numel() // param.shape[0])
            values = noise / fan_in ** 0.5
        else:
            values = 0.02 * noise
        setattr(owner, leaf, nn.Parameter(values.to(dtype), requires_grad=False))
    return module
