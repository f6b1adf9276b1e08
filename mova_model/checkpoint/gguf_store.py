"""Lazy, memory-mapped access to the one `.gguf` file of a component folder (the GGUF twin of `SafetensorsStore`).

A DiT component folder (`video_dit`, `video_dit_2`, `audio_dit`, `dual_tower_bridge`; the text encoder too) may
hold one `.gguf` file instead of its safetensors shards, beside its unchanged `config.json`. The file is read
with the `gguf` package's `GGUFReader`, which memory-maps it and parses only the header (metadata and the
tensor table); tensor bytes are touched when a layer computes. What this store adds:

- **names**: tensor names are the component's state-dict keys (for the video experts exactly Wan's, as the
  community converters write them). A UMT5 text encoder written by llama.cpp's converter (`enc.blk.0.attn_q`,
  `token_embd`, ...) is renamed to the transformers keys the module expects (`LLAMA_T5_NAMES`).
- **shapes**: GGUF stores dimensions innermost first; the logical shape is the reverse. A tensor stored
  reshaped (city96's converter flattens tensors whose last dimension the block size does not divide, e.g. the
  5-D patch embedding, to `[n / 256, 256]`) carries its real shape in `comfy.gguf.orig_shape.<name>`.
- **types**: F32, F16, BF16 (plain tensors) and the quantized types of `gguf_dequant.GGUF_QUANT_SIZES`; any
  other type is refused by name. `TensorInfo.dtype` holds the GGUF type name (`"Q4_K"`).
- **problems** in the same `Problem` form as safetensors: not a GGUF, truncated or corrupt (the reader's own
  complaint), an unsupported type, a bad `orig_shape`, another model's architecture, two weight files.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from ..network.gguf_dequant import FLOAT_TYPES, GGUF_QUANT_SIZES, SUPPORTED_TYPES
from .weights import CheckpointError, Problem, SafetensorsStore, TensorInfo

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
ORIG_SHAPE_PREFIX = "comfy.gguf.orig_shape."
"""Metadata key prefix under which a reshaped tensor's real shape is stored (an array of integers)."""

ARCHITECTURES: Dict[str, Tuple[str, ...]] = {
    "video_dit": ("wan", "mova", "pig"),
    "video_dit_2": ("wan", "mova", "pig"),
    "audio_dit": ("wan", "mova", "pig"),
    "dual_tower_bridge": ("mova", "mova_bridge", "wan", "pig"),
    "text_encoder": ("t5", "t5encoder", "umt5", "mova"),
}
"""`general.architecture` values accepted per component (absent is accepted too): the video experts are Wan 2.2
A14B DiTs ("wan", as city96's and QuantStack's files say; "pig" for gguf-connector's), MOVA's own files say
"mova"/"mova_bridge". A file of another model ("flux", "sdxl", "llama", ...) is refused before its keys are compared."""

LLAMA_T5_NAMES: Tuple[Tuple[str, str], ...] = (
    (r"^token_embd\.", "shared."),
    (r"^enc\.output_norm\.", "encoder.final_layer_norm."),
    (r"^enc\.blk\.(\d+)\.attn_q\.", r"encoder.block.\1.layer.0.SelfAttention.q."),
    (r"^enc\.blk\.(\d+)\.attn_k\.", r"encoder.block.\1.layer.0.SelfAttention.k."),
    (r"^enc\.blk\.(\d+)\.attn_v\.", r"encoder.block.\1.layer.0.SelfAttention.v."),
    (r"^enc\.blk\.(\d+)\.attn_o\.", r"encoder.block.\1.layer.0.SelfAttention.o."),
    (r"^enc\.blk\.(\d+)\.attn_rel_b\.", r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias."),
    (r"^enc\.blk\.(\d+)\.attn_norm\.", r"encoder.block.\1.layer.0.layer_norm."),
    (r"^enc\.blk\.(\d+)\.ffn_gate\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_0."),
    (r"^enc\.blk\.(\d+)\.ffn_up\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_1."),
    (r"^enc\.blk\.(\d+)\.ffn_down\.", r"encoder.block.\1.layer.1.DenseReluDense.wo."),
    (r"^enc\.blk\.(\d+)\.ffn_norm\.", r"encoder.block.\1.layer.1.layer_norm."),
)
"""llama.cpp's T5 encoder tensor names -> transformers' UMT5EncoderModel keys (the names llama.cpp's
`convert_hf_to_gguf.py` writes for T5; city96's UMT5 GGUFs use them)."""
_LLAMA_T5 = [(re.compile(pattern), replacement) for pattern, replacement in LLAMA_T5_NAMES]

_GGUF_STRING, _GGUF_ARRAY = 8, 9
_INTEGER_TYPES = frozenset({0, 1, 2, 3, 4, 5, 10, 11})  # u8 i8 u16 i16 u32 i32 u64 i64


def weight_format(folder: Path) -> str:
    """"gguf" when a component folder holds a `.gguf` file, else "safetensors" (no file is opened)."""
    folder = Path(folder)
    return "gguf" if folder.is_dir() and any(folder.glob("*.gguf")) else "safetensors"


def open_store(folder: Path, component: Optional[str] = None) -> SafetensorsStore:
    """The store of a component folder: `GGUFStore` when it holds a `.gguf` file, else `SafetensorsStore`."""
    if weight_format(folder) == "gguf":
        return GGUFStore(folder, component)
    return SafetensorsStore(folder, component)


def _field_value(field) -> object:
    """A metadata value from a `gguf.ReaderField`: str, int/float, or a list of them (arrays)."""
    kind = int(field.types[0]) if field.types else -1
    if kind == _GGUF_STRING:
        return bytes(field.parts[field.data[-1]]).decode("utf-8", errors="replace")
    if kind == _GGUF_ARRAY:
        item = int(field.types[-1]) if len(field.types) > 1 else -1
        if item == _GGUF_STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    return field.parts[field.data[-1]].tolist()[0]


class GGUFStore(SafetensorsStore):
    """All tensors of the one `*.gguf` file of a folder, by state-dict key, read lazily and memory-mapped.

    Same interface as `SafetensorsStore` (`tensors`, `problems`, `check`, `load`, `changed_files`, ...);
    `TensorInfo.dtype` is the GGUF type name and `TensorInfo.shape` the logical shape. `types()` counts the
    tensors per type; `architecture` is the file's `general.architecture` (None when absent).
    """

    FILE_PATTERN = "*.gguf"

    def _prepare(self) -> None:
        self.architecture: Optional[str] = None
        self._reader = None
        self._names: Dict[str, int] = {}

    # -- scanning ------------------------------------------------------------------------------------------------
    def _scan(self) -> None:
        if not self.folder.is_dir():
            self._problem("component folder is missing", expected="a folder", found="nothing", file=str(self.folder))
            return
        shards = sorted(self.folder.glob("*.safetensors"))
        if shards:
            self._problem("the folder holds both GGUF and safetensors weight files: keep one format",
                          expected="one .gguf file or the safetensors shards",
                          found=", ".join(p.name for p in self.files + shards), file=str(self.folder))
            return
        if len(self.files) != 1:
            self._problem("a component folder holds exactly one .gguf file (split GGUF files are not read: merge "
                          "them with llama.cpp's gguf-split --merge)", expected="one .gguf file",
                          found=", ".join(p.name for p in self.files), file=str(self.folder))
            return
        path = self.files[0]
        reader = self._open(path)
        if reader is None:
            return
        fields = {name: field for name, field in reader.fields.items()}
        arch_field = fields.get("general.architecture")
        self.architecture = str(_field_value(arch_field)) if arch_field is not None else None
        allowed = ARCHITECTURES.get(self.component)
        if self.architecture is not None and allowed and self.architecture not in allowed:
            self._problem(f"this GGUF file holds another model (general.architecture is {self.architecture!r})",
                          expected=" or ".join(repr(a) for a in allowed), found=repr(self.architecture), file=str(path))
            return
        self.metadata[path] = {k: str(_field_value(f))[:200] for k, f in fields.items()
                               if k.startswith("general.") and f.types and int(f.types[0]) != _GGUF_ARRAY}
        rename = self.component == "text_encoder" and any(t.name.startswith("enc.blk.") for t in reader.tensors)
        size = path.stat().st_size
        for index, tensor in enumerate(reader.tensors):
            self._add_tensor(index, tensor, fields, path, size, rename)
        if self.problems:
            self.tensors.clear()
            return
        self._reader = reader

    def _open(self, path: Path):
        """The `GGUFReader` of `path`, or None with a problem naming what is wrong with the file."""
        from gguf import GGUFReader

        try:
            size = path.stat().st_size
            with open(path, "rb") as handle:
                magic = handle.read(4)
        except OSError as exc:
            self._problem(f"cannot read the file ({exc})", file=str(path))
            return None
        if magic != GGUF_MAGIC:
            self._problem("not a GGUF file: it does not start with the GGUF magic", expected="b'GGUF'",
                          found=repr(magic) if magic else "an empty file", file=str(path))
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return GGUFReader(path, "r")
        except (ValueError, KeyError, IndexError, TypeError, OverflowError, OSError) as exc:
            self._problem(f"corrupt or truncated GGUF file: the gguf reader stopped with: {exc}",
                          expected="a complete GGUF file", found=f"{size} bytes", file=str(path))
            return None

    def _add_tensor(self, index: int, tensor, fields, path: Path, size: int, rename: bool) -> None:
        name = str(tensor.name)
        qtype = getattr(tensor.tensor_type, "name", str(tensor.tensor_type))
        key = self._state_key(name, rename)
        if qtype not in SUPPORTED_TYPES:
            self._problem("unsupported GGUF tensor type", key=key, expected="one of " + ", ".join(SUPPORTED_TYPES),
                          found=qtype, file=str(path))
            return
        stored = tuple(int(d) for d in reversed([int(v) for v in tensor.shape]))
        shape = stored
        field = fields.get(ORIG_SHAPE_PREFIX + name)
        if field is not None:
            value = _field_value(field)
            item = int(field.types[-1]) if len(field.types) > 1 else -1
            if (int(field.types[0]) != _GGUF_ARRAY or item not in _INTEGER_TYPES or not value
                    or not all(isinstance(v, int) and v > 0 for v in value)
                    or math.prod(value) != math.prod(stored)):
                self._problem("bad comfy.gguf.orig_shape entry (an integer array with as many elements as the tensor)",
                              key=key, expected=f"{math.prod(stored)} elements", found=str(value), file=str(path))
                return
            shape = tuple(int(v) for v in value)
        numel = math.prod(shape)
        if qtype in GGUF_QUANT_SIZES:
            block, type_size = GGUF_QUANT_SIZES[qtype]
            if stored and stored[-1] % block:
                self._problem(f"{qtype} rows must be whole blocks of {block}", key=key,
                              expected=f"a last dimension divisible by {block}", found=str(list(stored)), file=str(path))
                return
            nbytes = numel // block * type_size
        else:
            nbytes = numel * FLOAT_TYPES[qtype].itemsize
        begin = int(tensor.data_offset)
        if begin + nbytes > size:
            self._problem("tensor data runs past the end of the file (truncated?)", key=key,
                          expected=f"data up to byte {begin + nbytes}", found=f"{size} bytes", file=str(path))
            return
        if key in self.tensors:
            self._problem("key stored twice in the file", key=key, file=str(path))
            return
        self.tensors[key] = TensorInfo(key, qtype, shape, path, (begin, begin + nbytes))
        self._names[key] = index

    @staticmethod
    def _state_key(name: str, rename: bool) -> str:
        if not rename:
            return name
        for pattern, replacement in _LLAMA_T5:
            if pattern.search(name):
                return pattern.sub(replacement, name)
        return name

    # -- reading -------------------------------------------------------------------------------------------------
    def types(self) -> Counter:
        """Tensor count per GGUF type name (`{"Q4_K": 400, "F32": 820, ...}`)."""
        return Counter(info.dtype for info in self.tensors.values())

    def quantized_keys(self) -> Dict[str, str]:
        """key -> quantized type, for every tensor stored in a quantized type."""
        return {k: info.dtype for k, info in self.tensors.items() if info.dtype in GGUF_QUANT_SIZES}

    def check(self) -> "GGUFStore":
        if self.problems:
            raise CheckpointError.from_problems(f"{self.component}: unusable GGUF file in {self.folder}", self.problems)
        return self

    def load(self, keys: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
        """Memory-mapped tensors for `keys` (default: all), sharing pages with the file (nothing is read whole).

        F32 / F16 / BF16 tensors come back in their dtype and logical shape; quantized tensors as their uint8
        blocks in the stored byte layout (`gguf_dequant.dequantize` with `info(key).shape` expands them).
        """
        self.check()
        wanted = list(self.tensors) if keys is None else list(keys)
        out: Dict[str, torch.Tensor] = {}
        for key in wanted:
            if key not in self.tensors:
                raise KeyError(f"{self.component}: no tensor {key!r} in {self.folder}")
            info = self.tensors[key]
            data = self._reader.tensors[self._names[key]].data
            with warnings.catch_warnings():  # the map is read-only; nothing writes through these tensors
                warnings.simplefilter("ignore")
                tensor = torch.from_numpy(data)
            if info.dtype == "BF16":
                tensor = tensor.reshape(-1).view(torch.bfloat16)
            if info.dtype in FLOAT_TYPES:
                tensor = tensor.reshape(info.shape)
            out[key] = tensor
        return out
