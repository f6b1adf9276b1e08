"""GGUF dequantization in torch: equal to the `gguf` package's own `dequantize` and to ggml's per-block reference
loops for every supported type; a layer holding GGUF blocks computes with exactly the dequantized weight
(LoRA on top, inside `inference_mode` on a worker thread, from streamed slot bytes, under torch.compile)."""

import threading

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gguf_helpers import K_QUANTS, PYTHON_QUANTIZED, random_blocks
from gguf_reference import dequantize_blocks
from mova_model.memory.layout import BlockLayout
from mova_model.network import gguf_dequant
from mova_model.network.gguf_dequant import GGUF_QUANT_SIZES, bytes_per_weight, dequantize
from mova_model.network.lora import LoraAdapter
from mova_model.network.ops import Operations, set_gguf_weight, weight_shape

ALL_TYPES = PYTHON_QUANTIZED + K_QUANTS


def test_block_constants_are_the_gguf_package_ones():
    for name, sizes in GGUF_QUANT_SIZES.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]] == sizes
    assert bytes_per_weight("Q4_K") == 144 / 256 and bytes_per_weight("Q8_0") == 34 / 32
    assert bytes_per_weight("BF16") == 2


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_random_blocks_equal_the_gguf_package(qtype):
    block, _ = GGUF_QUANT_SIZES[qtype]
    rows = 3
    blocks = random_blocks(qtype, rows * 2 * 256, np.random.default_rng(1))
    raw = blocks.reshape(rows, -1)
    expected = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
    got = dequantize(torch.from_numpy(raw.copy()), qtype, expected.shape)
    assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(expected))
    # every code and scale bit pattern, not only finite-scaled ones: still identical (nan where gguf has nan)
    wild = np.random.default_rng(2).integers(0, 256, size=raw.shape, dtype=np.uint8)
    with np.errstate(all="ignore"):
        expected = torch.from_numpy(gguf.quants.dequantize(wild, gguf.GGMLQuantizationType[qtype]))
    got = dequantize(torch.from_numpy(wild), qtype, tuple(expected.shape))
    assert torch.equal(got.nan_to_num(nan=7.0), expected.nan_to_num(nan=7.0))


@pytest.mark.parametrize("qtype", PYTHON_QUANTIZED)
def test_quantized_weights_equal_the_gguf_package(qtype):
    weights = np.random.default_rng(3).standard_normal((8, 512)).astype(np.float32)
    raw = gguf.quants.quantize(weights, gguf.GGMLQuantizationType[qtype])
    expected = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
    got = dequantize(torch.from_numpy(raw), qtype, (8, 512))
    assert torch.equal(got, torch.from_numpy(expected))
    assert float(np.abs(expected - weights).max()) < 0.5  # it is the same matrix, coarsely


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_vectorized_equals_the_per_block_reference(qtype):
    block, _ = GGUF_QUANT_SIZES[qtype]
    blocks = random_blocks(qtype, 4 * max(block, 64), np.random.default_rng(4))
    expected = dequantize_blocks(blocks, qtype)
    got = dequantize(torch.from_numpy(blocks.copy()), qtype, expected.shape)
    assert torch.equal(got, torch.from_numpy(expected))


@pytest.mark.parametrize("qtype", ("Q4_K", "Q5_0"))
def test_pieces_dtype_and_shapes(qtype, monkeypatch):
    blocks = random_blocks(qtype, 16 * 512, np.random.default_rng(5))
    raw = torch.from_numpy(blocks.copy())
    whole = dequantize(raw, qtype, (16, 512))
    monkeypatch.setattr(gguf_dequant, "CHUNK_WEIGHTS", 600)  # several pieces, the last one short
    assert torch.equal(dequantize(raw, qtype, (16, 512)), whole)
    assert torch.equal(dequantize(raw, qtype, (16, 512), torch.bfloat16), whole.to(torch.bfloat16))
    assert torch.equal(dequantize(raw, qtype, (16, 2, 2, 2, 64)), whole.reshape(16, 2, 2, 2, 64))  # 5-D
    with pytest.raises(ValueError, match="do not hold"):
        dequantize(raw[:-1], qtype, (16, 512))
    with pytest.raises(TypeError):
        dequantize(raw.to(torch.int16), qtype, (16, 512))


def _gguf_linear(qtype: str, out_features: int = 32, in_features: int = 256):
    blocks = random_blocks(qtype, out_features * in_features, np.random.default_rng(6), std=0.1)
    raw = torch.from_numpy(blocks.reshape(out_features, -1).copy())
    layer = Operations(device="cpu").Linear(in_features, out_features)
    layer.bias = torch.nn.Parameter(torch.randn(out_features) * 0.1, requires_grad=False)
    set_gguf_weight(layer, qtype, (out_features, in_features), raw)
    return layer, dequantize(raw, qtype, (out_features, in_features))


@pytest.mark.parametrize("qtype", ("Q8_0", "Q4_K", "Q6_K"))
def test_gguf_linear_computes_with_the_dequantized_weight_and_lora_on_top(qtype):
    layer, weight = _gguf_linear(qtype)
    x = torch.randn(5, 256)
    assert torch.equal(layer(x), F.linear(x, weight, layer.bias))
    down, up = torch.randn(4, 256) * 0.1, torch.randn(32, 4) * 0.1
    layer.adapters.append(LoraAdapter(down, up, 0.5))
    expected = F.linear(x, weight, layer.bias) + F.linear(F.linear(x, down), up) * 0.5
    assert torch.equal(layer(x), expected)
    assert layer.weight.dtype == torch.uint8  # the base weight stays quantized
    assert weight_shape(layer) == (32, 256) != tuple(layer.weight.shape)
    assert weight_shape(Operations(device="meta").Linear(256, 32)) == (32, 256)
    bf16 = layer(x.to(torch.bfloat16))
    assert bf16.dtype == torch.bfloat16
    assert torch.equal(layer.cast_weight(x.to(torch.bfloat16))[0], weight.to(torch.bfloat16))


def test_gguf_linear_in_inference_mode_on_a_worker_thread_from_slot_bytes():
    """ComfyUI's conditions: a worker thread, inference_mode; the weight bound to a view of a streaming slot."""
    layer, weight = _gguf_linear("Q5_K")
    x = torch.randn(3, 256)
    layout = BlockLayout(layer, "layer")
    slot = torch.zeros(layout.nbytes + 512, dtype=torch.uint8)[256:]  # an offset view, as slots are
    layout.copy_into(slot)
    assert layout.nbytes < weight.numel() * 2  # the quantized bytes are what a slot holds
    out = {}

    def run():
        with torch.inference_mode():
            layout.bind(slot)
            try:
                assert layer.weight.data_ptr() == slot.data_ptr() + [o for t, o in layout.sources if t.dtype == torch.uint8][0]
                assert layer.weight.is_contiguous()
                out["y"] = layer(x)
            finally:
                layout.unbind()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert torch.equal(out["y"], F.linear(x, weight, layer.bias))


def test_gguf_linear_compiles_without_graph_breaks():
    layer, weight = _gguf_linear("Q4_K")
    x = torch.randn(3, 256)
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    assert torch.equal(compiled(x), F.linear(x, weight, layer.bias))
    torch._dynamo.reset()
