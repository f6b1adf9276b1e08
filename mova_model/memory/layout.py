"""Flat byte layouts of a module's tensors, the unit `BlockStreamer` copies to the compute device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch import nn

ALIGN_BYTES = 256
"""Offset alignment of tensors inside a slot (covers every dtype and CUDA's preferred alignment)."""


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
