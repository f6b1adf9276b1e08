"""Flat byte layouts of a module's tensors, the unit `BlockStreamer` copies to the compute device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch import nn

ALIGN_BYTES = 256
"""Offset alignment of tensors inside a slot (covers every dtype and CUDA's preferred alignment)."""

CPU_COMPUTE_ALIGN_BYTES = 64
"""Address alignment of every weight a CPU forward reads (see `align_tensors_`)."""


@dataclass
class _Entry:
    owner: nn.Module
    attr: str
    is_param: bool
    host: torch.Tensor
    offset: int


def byte_view(tensor: torch.Tensor) -> torch.Tensor:
    """1-D uint8 view of a contiguous tensor's bytes (no copy)."""
    if tensor.device.type == "meta":
        raise ValueError("cannot stream a module whose weights are still on the meta device (load them first)")
    if not tensor.is_contiguous():
        raise ValueError("cannot stream a non-contiguous tensor without copying it")
    return tensor.detach().reshape(-1).view(torch.uint8)


class BlockLayout:
    """The parameters and buffers of one module packed into a flat byte range.

    `nbytes` is the size of the range (offsets aligned to `ALIGN_BYTES`). `bind(slot)` points the module at
    views of `slot` (a uint8 buffer already holding the bytes); `unbind()` restores the original (host)
    tensors. A tensor shared by two attributes is stored once.
    """

    def __init__(self, module: nn.Module, tag: str) -> None:
        self.module = module
        self.tag = tag
        self.entries: List[_Entry] = []
        self.sources: List[Tuple[torch.Tensor, int]] = []  # unique (host tensor, offset)
        offsets: Dict[int, int] = {}
        cursor = 0
        for sub in module.modules():
            for is_param, table in ((True, sub._parameters), (False, sub._buffers)):
                for attr, tensor in table.items():
                    if tensor is None:
                        continue
                    key = id(tensor)
                    if key not in offsets:
                        offsets[key] = cursor
                        self.sources.append((tensor, cursor))
                        nbytes = tensor.numel() * tensor.element_size()
                        cursor += (nbytes + ALIGN_BYTES - 1) // ALIGN_BYTES * ALIGN_BYTES
                    self.entries.append(_Entry(sub, attr, is_param, tensor, offsets[key]))
        self.nbytes = cursor
        self.bound = False

    def copy_into(self, dst: torch.Tensor, non_blocking: bool = False) -> None:
        """Copy the host bytes into the flat uint8 buffer `dst` (host or device)."""
        for tensor, offset in self.sources:
            src = byte_view(tensor)
            dst[offset:offset + src.numel()].copy_(src, non_blocking=non_blocking)

    def bind(self, slot: torch.Tensor) -> None:
        """Point every parameter/buffer of the module at its bytes inside `slot`."""
        views: Dict[int, torch.Tensor] = {}
        for entry in self.entries:
            host = entry.host
            key = id(host)
            if key not in views:
                nbytes = host.numel() * host.element_size()
                views[key] = slot[entry.offset:entry.offset + nbytes].view(host.dtype).view(host.shape)
            view = views[key]
            if entry.is_param:
                entry.owner._parameters[entry.attr] = nn.Parameter(view, requires_grad=False)
            else:
                entry.owner._buffers[entry.attr] = view
        self.bound = True

    def unbind(self) -> None:
        """Restore the original tensors (the device views are dropped)."""
        for entry in self.entries:
            table = entry.owner._parameters if entry.is_param else entry.owner._buffers
            table[entry.attr] = entry.host
        self.bound = False


def align_tensors_(module: nn.Module, alignment: int = CPU_COMPUTE_ALIGN_BYTES) -> int:
    """Give every parameter and buffer of `module` an address that is a multiple of `alignment` bytes.

    Why: on CPU, fp32 `linear` goes to MKL's sgemm/sgemv, and MKL chooses its kernel (and so the order of the
    additions) by the operands' address alignment. Weights memory-mapped from a safetensors file sit wherever
    the file puts them (the format aligns to 8 bytes only), while every tensor torch allocates, and every
    block-streamer slot, is 64-byte aligned. Measured on an AMD EPYC (AVX-512) with MKL 2024.2: a [1, 32] x
    [64, 32]^T linear differs by up to 1e-6 between a weight at a 16-byte and at a 4/8-byte aligned address,
    under every ATEN_CPU_CAPABILITY and with one thread; `MKL_CBWR=COMPATIBLE` removes the difference. Copying
    the misaligned tensors once makes resident and streamed weights reach MKL with the same alignment, so both
    paths compute the same numbers on every CPU. Tensors that are already aligned stay memory-mapped.

    GGUF quantized blocks (uint8) stay memory-mapped: a layer dequantizes them into a fresh, aligned tensor.
    A tensor shared by two attributes is copied once and stays shared. Returns the number of bytes copied.
    """
    copies: Dict[int, torch.Tensor] = {}
    copied = 0
    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for attr, tensor in table.items():
                if tensor is None or tensor.device.type != "cpu" or tensor.data_ptr() % alignment == 0:
                    continue
                if tensor.dtype == torch.uint8:  # GGUF blocks: expanded into fresh memory, never a matmul operand
                    continue
                key = id(tensor)
                if key not in copies:
                    fresh = tensor.detach().clone(memory_format=torch.contiguous_format)
                    if fresh.data_ptr() % alignment:
                        raise RuntimeError(f"the CPU allocator returned memory that is not {alignment}-byte aligned")
                    if isinstance(tensor, nn.Parameter):
                        fresh = nn.Parameter(fresh, requires_grad=tensor.requires_grad)
                    copies[key] = fresh
                    copied += tensor.numel() * tensor.element_size()
                table[attr] = copies[key]
    return copied
