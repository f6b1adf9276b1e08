"""Write one GGUF file tensor by tensor with the `gguf` package's `GGUFWriter` (peak memory: one tensor).

The header (metadata, then the tensor table with every offset) is computed from the announced types and shapes
and written first; each tensor's bytes are then produced by its `make()` and written in table order, so a
14B-parameter expert never sits in memory whole. Tensors with more dimensions than llama.cpp's tools handle
(4; the video experts' 5-D patch embedding), and quantized tensors whose last dimension is not a whole number
of blocks, are stored reshaped to 2-D rows of 256 with their real shape under
`comfy.gguf.orig_shape.<name>`, the convention city96's converter introduced and both our reader and ComfyUI-GGUF
understand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from ..network.gguf_dequant import FLOAT_TYPES, GGUF_QUANT_SIZES

ORIG_SHAPE_PREFIX = "comfy.gguf.orig_shape."
MAX_STORED_DIMS = 4
"""llama.cpp (GGML_MAX_DIMS) reads at most 4 dimensions; tensors with more are stored reshaped."""

_NUMPY_FLOATS = {"F32": np.float32, "F16": np.float16}


@dataclass
class GGUFTensor:
    """One tensor to write: `name`, GGUF type name, logical `shape`, and `make()` returning its data.

    make() returns the values as a float numpy array of the logical shape for F32/F16, or the stored bytes as
    a uint8 numpy array (any shape, `nbytes` long) for BF16 and the quantized types.
    """

    name: str
    qtype: str
    shape: Tuple[int, ...]
    make: Callable[[], np.ndarray]
    stored: Optional[Tuple[int, ...]] = None
    """The shape written to the tensor table (same element count); None: see `stored_shape`."""

    @property
    def numel(self) -> int:
        return int(math.prod(self.shape))

    @property
    def nbytes(self) -> int:
        if self.qtype in FLOAT_TYPES:
            return self.numel * FLOAT_TYPES[self.qtype].itemsize
        block, size = GGUF_QUANT_SIZES[self.qtype]
        return self.numel // block * size

    def stored_shape(self) -> Tuple[int, ...]:
        """The shape written to the tensor table: `stored` when given, else the logical one, or 2-D when it has
        more than 4 dimensions."""
        if self.stored is not None:
            return tuple(self.stored)
        block = GGUF_QUANT_SIZES[self.qtype][0] if self.qtype in GGUF_QUANT_SIZES else 1
        if len(self.shape) <= MAX_STORED_DIMS and (not self.shape or int(self.shape[-1]) % block == 0):
            return tuple(self.shape)
        if self.numel % block:
            raise ValueError(f"{self.name}: {self.numel} weights are not whole {self.qtype} blocks of {block}")
        last = 256 if self.numel % 256 == 0 else (block if block > 1 else int(self.shape[-1]))
        return (self.numel // last, last)


def write_gguf_file(path: Path, tensors: Sequence[GGUFTensor], architecture: str,
                    metadata: Optional[Dict[str, object]] = None,
                    progress: Optional[Callable[[GGUFTensor], None]] = None) -> int:
    """Write `tensors` (in order) to the GGUF file `path`; returns the file size in bytes.

    architecture: `general.architecture`; metadata: more key/values (str, int, float or lists of them);
    progress(tensor) is called after each tensor is written.
    """
    from gguf import GGMLQuantizationType, GGUFWriter

    writer = GGUFWriter(path=None, arch=architecture)
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value) if value >= 0 else writer.add_int32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_array(key, list(value))  # type: ignore[arg-type]
    for tensor in tensors:
        stored = tensor.stored_shape()
        if stored != tuple(tensor.shape):
            writer.add_array(ORIG_SHAPE_PREFIX + tensor.name, [int(s) for s in tensor.shape])
        if tensor.qtype in _NUMPY_FLOATS:
            writer.add_tensor_info(tensor.name, stored, np.dtype(_NUMPY_FLOATS[tensor.qtype]), tensor.nbytes)
        else:
            qtype = GGMLQuantizationType[tensor.qtype]
            block, size = (1, 2) if tensor.qtype == "BF16" else GGUF_QUANT_SIZES[tensor.qtype]
            byte_shape = (*stored[:-1], stored[-1] // block * size)
            writer.add_tensor_info(tensor.name, byte_shape, np.dtype(np.uint8), tensor.nbytes, raw_dtype=qtype)
    try:
        writer.write_header_to_file(path=Path(path))
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in tensors:
            data = np.ascontiguousarray(tensor.make())
            expected = np.uint8 if tensor.qtype not in _NUMPY_FLOATS else _NUMPY_FLOATS[tensor.qtype]
            if data.dtype != expected or data.nbytes != tensor.nbytes:
                raise RuntimeError(f"{Path(path).name}: {tensor.name} produced {data.dtype} {data.nbytes} bytes, "
                                   f"announced {tensor.qtype} {tensor.nbytes} bytes")
            writer.write_tensor_data(data.reshape(-1))
            if progress is not None:
                progress(tensor)
    finally:
        writer.close()
    return Path(path).stat().st_size
