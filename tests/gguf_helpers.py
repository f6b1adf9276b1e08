"""GGUF test material: random quantized blocks with sane scales, and a tiny checkpoint whose DiTs are GGUF files
holding several types in one file, next to a safetensors twin holding the dequantized values."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import save_file

from mova_model.checkpoint.gguf_store import GGUFStore
from mova_model.checkpoint.gguf_write import GGUFTensor, write_gguf_file
from mova_model.checkpoint.tiny import TinySpec, write_tiny_checkpoint
from mova_model.checkpoint.weights import SafetensorsStore
from mova_model.memory.gguf_quantize import encode, keeps_precision
from mova_model.network.gguf_dequant import GGUF_QUANT_SIZES, dequantize

HALF_FIELDS: Dict[str, Tuple[int, ...]] = {
    "Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
}
"""Byte offsets of the float16 scales (d, and dmin/m where the type has one) inside each block."""

PYTHON_QUANTIZED = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

GGUF_SPEC = TinySpec(video_dim=256, audio_dim=64, text_dim=32, video_heads=2, audio_heads=2)
"""Tiny sizes whose video matrices take K-quants (rows of 256) and every other matrix 32-weight blocks."""


def random_blocks(qtype: str, numel: int, generator: np.random.Generator, std: Optional[float] = None) -> np.ndarray:
    """Random `qtype` blocks holding `numel` weights (uint8 [blocks, type_size]) with finite float16 scales; with
    `std`, the scales are set so the dequantized weights have about that standard deviation."""
    block, size = GGUF_QUANT_SIZES[qtype]
    blocks = generator.integers(0, 256, size=(numel // block, size), dtype=np.uint8)
    for offset in HALF_FIELDS[qtype]:
        halves = generator.uniform(0.25, 1.0, size=(blocks.shape[0], 1)).astype(np.float16)
        blocks[:, offset:offset + 2] = halves.view(np.uint8)
    if std is not None:
        current = float(dequantize(torch.from_numpy(blocks.copy()), qtype, (numel,)).std())
        for offset in HALF_FIELDS[qtype]:
            halves = blocks[:, offset:offset + 2].copy().view(np.float16).astype(np.float32) * (std / current)
            blocks[:, offset:offset + 2] = halves.astype(np.float16).view(np.uint8)
    return blocks


def mixed_type(key: str, shape: Tuple[int, ...], index: int) -> str:
    """The type a test file stores `key` in: kept tensors F32, matrices cycling through every quantized type
    (K-quants only where the rows are whole super-blocks), one modulation table quantized (expanded at build)."""
    if key == "blocks.0.modulation":
        return "Q8_0"
    if key == "patch_embedding.weight" and len(shape) == 5 and int(np.prod(shape)) % 256 == 0:
        return "Q4_K"  # 5-D, stored reshaped with comfy.gguf.orig_shape
    if keeps_precision(key, shape):
        return "F32"
    cycle = K_QUANTS + PYTHON_QUANTIZED if shape[-1] % 256 == 0 else PYTHON_QUANTIZED
    return cycle[index % len(cycle)] if shape[-1] % 32 == 0 else "F32"


def _entries(store: SafetensorsStore, generator: np.random.Generator,
             five_d_as_is: bool) -> Iterator[Tuple[GGUFTensor, torch.Tensor]]:
    """GGUF entries for every tensor of `store`, each with the float32 values the GGUF holds."""
    for index, key in enumerate(sorted(store.tensors)):
        info = store.info(key)
        shape = tuple(info.shape)
        qtype = "F32" if (five_d_as_is and len(shape) == 5) else mixed_type(key, shape, index)
        source = store.get_tensor(key).to(torch.float32)
        if qtype in K_QUANTS:  # no Python quantizer: random blocks scaled like the random weights
            data = random_blocks(qtype, source.numel(), generator, std=float(source.std()))
        else:
            data = encode(source.reshape(-1, shape[-1]) if len(shape) > 1 else source, qtype)
        flat = np.ascontiguousarray(data).reshape(-1)
        if qtype == "F32":
            values = torch.from_numpy(flat.view(np.float32).copy()).reshape(shape)
        else:
            values = dequantize(torch.from_numpy(flat.copy()), qtype, shape)
        stored = shape if (len(shape) == 5 and five_d_as_is and qtype == "F32") else None
        yield GGUFTensor(key, qtype, shape, lambda flat=flat: flat, stored=stored), values


def write_gguf_pair(root: Path, seed: int = 0) -> Tuple[Path, Path]:
    """(GGUF checkpoint, safetensors twin) under `root`: the same tiny checkpoint; in the first the four DiT
    components are one GGUF file each with mixed types, in the twin their safetensors hold exactly the values
    the GGUF files dequantize to (float32). video_dit stores its 5-D patch embedding quantized with an
    orig_shape entry, video_dit_2 as-is."""
    source = write_tiny_checkpoint(root / "source", seed=seed, spec=GGUF_SPEC)
    gguf_dir, twin = root / "gguf", root / "twin"
    for target in (gguf_dir, twin):
        shutil.copytree(source, target)
    generator = np.random.default_rng(seed)
    for component in ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge"):
        store = SafetensorsStore(source / component, component).check()
        pairs = list(_entries(store, generator, five_d_as_is=component == "video_dit_2"))
        for path in list((gguf_dir / component).glob("*.safetensors*")):
            path.unlink()
        write_gguf_file(gguf_dir / component / f"{component}.gguf", [t for t, _ in pairs],
                        "wan" if component != "dual_tower_bridge" else "mova_bridge")
        for path in list((twin / component).glob("*.safetensors*")):
            path.unlink()
        save_file({t.name: v.contiguous() for t, v in pairs}, str(twin / component / "diffusion_pytorch_model.safetensors"))
    shutil.rmtree(source)
    return gguf_dir, twin


def gguf_types(folder: Path, component: str) -> Dict[str, int]:
    return dict(GGUFStore(folder / component, component).types())
