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


def _whole_tensor_scaled_linear(x, weight, weight_scale, bias):
    """The expression `scaled_linear` used before its activation was quantized in pieces (issue 16 item 6)."""
    rows = x.reshape(-1, x.shape[-1])
    amax = rows.abs().amax().float().clamp(min=1e-12)
    x_scale = (amax / fp8_matmul._FP8_MAX).reshape(())
    x8 = (rows.float() / x_scale).clamp(-fp8_matmul._FP8_MAX, fp8_matmul._FP8_MAX).to(fp8_matmul._FP8)
    out = torch._scaled_mm(x8, weight.t(), scale_a=x_scale, scale_b=weight_scale.float().reshape(()), out_dtype=x.dtype)
    return (out + bias.to(x.dtype)).reshape(*x.shape[:-1], weight.shape[0])


def test_pieces_give_the_whole_tensor_numbers(monkeypatch):
    layer = _layer(in_features=96, out_features=64)
    monkeypatch.setattr(fp8_matmul, "QUANT_CHUNK_BYTES", 96 * 4 * 7)  # 7 rows per piece: the last one is short
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 17, 96, generator=torch.Generator().manual_seed(4)).to(dtype)
        before = x.clone()
        out = fp8_matmul.scaled_linear(x, layer.weight, layer.weight_scale, layer.bias)
        assert torch.equal(out, _whole_tensor_scaled_linear(x, layer.weight, layer.weight_scale, layer.bias))
        assert torch.equal(x, before)  # a float32 input is never scaled in place


def test_temporaries_are_the_e4m3_copy_and_one_piece(monkeypatch):
    """Issue 16 item 6: `abs`, `float() / scale` and `clamp` made one bf16 and two float32 copies of the whole
    activation (~4.8 GB for the FFN input at 360p), none of them in the memory plan. Now: the e4m3 copy (1 byte
    per element) and one float32 piece; the planner counts both (`sizes.activation_bytes`)."""
    from device_meter import DeviceMeter
    from mova_model.memory.sizes import FP8_QUANT_CHUNK_BYTES

    assert FP8_QUANT_CHUNK_BYTES == fp8_matmul.QUANT_CHUNK_BYTES  # the planner counts the same piece
    piece = 256 * 1024
    monkeypatch.setattr(fp8_matmul, "QUANT_CHUNK_BYTES", piece)
    layer = _layer(in_features=512, out_features=64)
    x = torch.randn(4096, 512, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)  # 4 MiB
    with DeviceMeter() as meter:
        out = fp8_matmul.scaled_linear(x, layer.weight, layer.weight_scale, layer.bias)
    temporaries = meter.peak - out.numel() * out.element_size()
    elements = x.numel()
    assert temporaries <= elements * 1 + 2 * piece + 64 * 1024, temporaries  # e4m3 copy + one piece (+ its cast)
    assert meter.current == out.numel() * out.element_size()
