"""CPU compute alignment: every weight a CPU forward reads is 64-byte aligned, whatever the file's layout.

MKL picks its fp32 gemm/gemv kernel by operand alignment, so resident (memory-mapped) and streamed (slot) weights
only compute the same numbers on every CPU when both are aligned alike (see `align_tensors_`)."""
import torch
from torch import nn

from mova_model.memory.layout import CPU_COMPUTE_ALIGN_BYTES, align_tensors_


def _misaligned(shape, offset_elements=2):
    buffer = torch.randn(int(torch.tensor(shape).prod()) + 16)
    start = next(i for i in range(offset_elements, 16) if (buffer[i:].data_ptr() % CPU_COMPUTE_ALIGN_BYTES) != 0)
    return buffer[start:start + int(torch.tensor(shape).prod())].view(*shape)


def test_misaligned_tensors_are_copied_aligned_shared_ones_once():
    layer, other = nn.Linear(32, 64), nn.Linear(32, 64)
    weight = _misaligned((64, 32))
    layer.weight = nn.Parameter(weight, requires_grad=False)
    other.weight = layer.weight  # tied
    model = nn.ModuleList([layer, other])
    aligned_bias = layer.bias
    copied = align_tensors_(model)
    assert copied == 64 * 32 * 4
    assert layer.weight.data_ptr() % CPU_COMPUTE_ALIGN_BYTES == 0
    assert layer.weight is other.weight and torch.equal(layer.weight, weight)
    assert layer.bias is aligned_bias  # already aligned: untouched
    assert align_tensors_(model) == 0


def test_modules_built_for_cpu_compute_are_aligned(tiny_pipe):
    for name in ("video_dit", "audio_dit", "dual_tower_bridge", "text_encoder"):
        module = tiny_pipe.cache.get(name)
        misaligned = [n for n, t in list(module.named_parameters()) + list(module.named_buffers())
                      if t.data_ptr() % CPU_COMPUTE_ALIGN_BYTES]
        assert not misaligned, f"{name}: {misaligned[:5]}"
