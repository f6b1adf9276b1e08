"""fp8 matmul: `torch._scaled_mm` with the stored per-tensor scales agrees with the cast path within fp8
tolerance (measured here on PyTorch's CPU kernel), and outside a supporting GPU the cast path is untouched."""

import torch
import torch.nn.functional as F

from mova_model.memory.fp8 import quantize_module_
from mova_model.network import fp8_matmul
from mova_model.network.ops import LoraAdapter, Operations, init_random_

# e4m3 has 3 mantissa bits: activations rounded to it carry up to 2^-4 relative error per element, which
# averages to ~2 % relative L2 over a reduction of 96+ terms (measured 1.7 %); 5 % leaves room for other CPUs.
REL_L2_TOLERANCE = 0.05


def _layer(in_features=96, out_features=64, seed=0):
    holder = torch.nn.Sequential(Operations().Linear(in_features, out_features))  # keys "0.weight" like a model's
    init_random_(holder, torch.Generator().manual_seed(seed)).eval()
    assert quantize_module_(holder) == 1
    return holder[0]


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_scaled_linear_matches_the_cast_path_within_fp8_tolerance():
    layer = _layer()
    x = torch.randn(2, 10, 96, generator=torch.Generator().manual_seed(1))
    for dtype in (torch.float32, torch.bfloat16):
        weight, bias = layer.cast_weight(x.to(dtype))
        reference = F.linear(x.to(dtype), weight, bias)
        out = fp8_matmul.scaled_linear(x.to(dtype), layer.weight, layer.weight_scale, layer.bias)
        assert out.dtype == dtype and out.shape == reference.shape
        assert _rel(out, reference) < REL_L2_TOLERANCE


def test_cast_linear_uses_scaled_mm_only_while_active(monkeypatch):
    layer = _layer()
    layer.adapters.append(LoraAdapter(torch.randn(4, 96), torch.randn(64, 4), 0.5))
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(2))
    cast = layer(x)
    with fp8_matmul.use_fp8_matmul(True, "cpu") as on:  # no fp8 tensor cores on a CPU: cast path
        assert on is False
        assert torch.equal(layer(x), cast)
    monkeypatch.setattr(fp8_matmul._STATE, "enabled", True)
    scaled = layer(x)
    assert not torch.equal(scaled, cast)
    assert _rel(scaled, cast) < REL_L2_TOLERANCE  # the LoRA term is still added


def test_shapes_scaled_mm_cannot_take_fall_back_to_the_cast_path(monkeypatch):
    layer = _layer(in_features=24, out_features=40)  # 40 is not a multiple of 16
    x = torch.randn(5, 24)
    cast = layer(x)
    monkeypatch.setattr(fp8_matmul._STATE, "enabled", True)
    assert torch.equal(layer(x), cast)


def test_support_needs_cuda_capability_8_9():
    assert fp8_matmul.fp8_matmul_supported("cpu") is False
    assert fp8_matmul.MIN_CAPABILITY == (8, 9)
