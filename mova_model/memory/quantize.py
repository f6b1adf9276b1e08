"""`python -m mova_model quantize SRC DST`: write an fp8 (or, with `--format gguf`, a GGUF) copy of a MOVA checkpoint.

The copy has the official folder layout, so it loads like any checkpoint (`MovaCheckpoint.open(DST)`):
in the quantized components (`fp8.FP8_COMPONENTS` by default: both video experts, the audio DiT and the
bridge) every Linear matrix chosen by `fp8.is_fp8_candidate` is stored as F8_E4M3 under its own key with a
float32 scalar scale under `<key>_scale`; all other tensors keep their stored bytes. Shards keep their file
names; a sharding index is rewritten with the scale keys and the new total size. Every other file (configs,
scheduler, tokenizer, the text encoder and VAEs) is hard-linked when SRC and DST share a file system, else
copied, unchanged.

Files are written tensor by tensor (the safetensors header is computed from the shapes first), so the
peak memory is one tensor, not one shard. The output goes to `DST.partial` and is renamed when complete.

`--format gguf --type Q8_0` (`gguf_quantize`): each chosen component becomes one `<component>.gguf` file of that
type (the community's keep-high-precision tensors stay as stored), everything else is linked or copied as above.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..checks import check_destination_folder
from ..cli_args import CliParser, refuse
from .fp8 import FP8_COMPONENTS, SCALE_SUFFIX, is_fp8_candidate, quantize_tensor
from ..network.ops import FP8_DTYPE

logger = logging.getLogger(__name__)

_DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                FP8_DTYPE: "F8_E4M3", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
                torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


@dataclass
class ComponentReport:
    """What happened to one component folder. Sizes in bytes; `types`: GGUF tensors per type."""

    name: str
    quantized: int = 0
    kept: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    types: Dict[str, int] = field(default_factory=dict)


@dataclass
class QuantizeReport:
    components: List[ComponentReport] = field(default_factory=list)
    format_name: str = "fp8"

    def format(self) -> str:
        if self.format_name == "gguf":
            lines = ["component            GB in   GB out  GGUF tensors per type"]
            for c in self.components:
                types = ", ".join(f"{t} {n}" for t, n in sorted(c.types.items()))
                lines.append(f"{c.name:<20} {c.bytes_in / 1e9:6.2f} {c.bytes_out / 1e9:8.2f}  {types}")
            return "\n".join(lines)
        lines = ["component            matrices fp8   kept    GB in   GB out"]
        for c in self.components:
            lines.append(f"{c.name:<20} {c.quantized:>12} {c.kept:>6} {c.bytes_in / 1e9:8.2f} {c.bytes_out / 1e9:8.2f}")
        return "\n".join(lines)


_Entry = Tuple[str, torch.dtype, Tuple[int, ...], Callable[[], torch.Tensor]]


def write_safetensors_streaming(path: Path, entries: Sequence[_Entry], metadata: Optional[Dict[str, str]] = None) -> int:
    """Write a safetensors file whose tensors are produced one at a time by `entries` (key, dtype, shape, make).

    The header (with every offset) is written first, then each tensor's bytes in key order; `make()` is
    called once per tensor and must return a tensor of the announced dtype and shape. Returns bytes written.
    """
    entries = sorted(entries, key=lambda e: e[0])
    header: Dict[str, object] = {}
    offset = 0
    for key, dtype, shape, _ in entries:
        nbytes = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        header[key] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        for key, dtype, shape, make in entries:
            tensor = make()
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise RuntimeError(f"{path.name}: {key} produced {tensor.dtype} {tuple(tensor.shape)}, "
                                   f"announced {dtype} {tuple(shape)}")
            data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
            handle.write(memoryview(data))
    return 8 + len(blob) + offset


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _quantize_file(src: Path, dst: Path, report: ComponentReport) -> Dict[str, str]:
    """Quantize one safetensors file; returns key -> file name for the index."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt", device="cpu") as handle:
        metadata = dict(handle.metadata() or {})
        entries: List[_Entry] = []
        for key in handle.keys():
            view = handle.get_slice(key)
            shape = tuple(view.get_shape())
            dtype = _torch_dtype(view.get_dtype())
            if is_fp8_candidate(key, shape, dtype):
                cache: Dict[str, torch.Tensor] = {}

                def weight(key=key, cache=cache) -> torch.Tensor:
                    q, scale = quantize_tensor(handle.get_tensor(key))
                    cache["scale"] = scale
                    return q

                def scale(cache=cache) -> torch.Tensor:
                    return cache.pop("scale")

                # sorted order puts "<key>" right before "<key>_scale", so the scale comes from the cache
                entries.append((key, FP8_DTYPE, shape, weight))
                entries.append((key + SCALE_SUFFIX, torch.float32, (), scale))
                report.quantized += 1
            else:
                entries.append((key, dtype, shape, lambda key=key: handle.get_tensor(key)))
                report.kept += 1
        _check_scale_order(entries)
        metadata["mova_quantization"] = "fp8_e4m3fn, per-tensor float32 scale at <key>_scale"
        report.bytes_in += src.stat().st_size
        report.bytes_out += write_safetensors_streaming(dst, entries, metadata)
    return {e[0]: dst.name for e in entries}


def _check_scale_order(entries: List[_Entry]) -> None:
    """Every `<key>_scale` must directly follow `<key>` in the written (sorted) order."""
    keys = sorted(e[0] for e in entries)
    for i, key in enumerate(keys):
        if key.endswith(SCALE_SUFFIX) and (i == 0 or keys[i - 1] + SCALE_SUFFIX != key):
            raise RuntimeError(f"cannot stream {key}: its weight is not the preceding key")


def _torch_dtype(name: str) -> torch.dtype:
    table = {v: k for k, v in _DTYPE_NAMES.items()}
    table.update({"F8_E4M3FN": FP8_DTYPE})
    if name not in table:
        raise ValueError(f"unsupported safetensors dtype {name}")
    return table[name]


def _quantize_component(src: Path, dst: Path, report: ComponentReport) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    weight_map: Dict[str, str] = {}
    for path in sorted(src.iterdir()):
        if path.suffix == ".safetensors":
            logger.info("quantizing %s", path)
            weight_map.update(_quantize_file(path, dst / path.name, report))
        elif not path.name.endswith(".safetensors.index.json"):
            if path.is_dir():
                shutil.copytree(path, dst / path.name)
            else:
                shutil.copy2(path, dst / path.name)
    for index in src.glob("*.safetensors.index.json"):
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = dict(sorted(weight_map.items()))
        data.setdefault("metadata", {})["total_size"] = sum(
            (dst / name).stat().st_size for name in set(weight_map.values()))
        (dst / index.name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _gguf_component(src: Path, dst: Path, report: ComponentReport, target: str, progress) -> None:
    """One component folder as `<component>.gguf` + its other files (config.json, ...), safetensors dropped."""
    from .gguf_quantize import write_gguf_component

    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.suffix == ".safetensors" or path.name.endswith(".safetensors.index.json"):
            continue
        if path.is_dir():
            shutil.copytree(path, dst / path.name)
        else:
            shutil.copy2(path, dst / path.name)
    store = _source_store(src, report.name)
    report.types, report.bytes_out = write_gguf_component(store, dst / f"{report.name}.gguf", report.name, target,
                                                          progress)
    report.bytes_in = sum(p.stat().st_size for p in store.files)


def _source_store(folder: Path, component: str):
    from ..checkpoint.weights import SafetensorsStore

    if any(folder.glob("*.gguf")):
        raise ValueError(f"{folder} already holds a GGUF file: quantize from a safetensors checkpoint")
    return SafetensorsStore(folder, component).check()


def quantize_checkpoint(src: Path, dst: Path, components: Sequence[str] = FP8_COMPONENTS,
                        overwrite: bool = False, format_name: str = "fp8", gguf_type: str = "Q8_0",
                        progress: bool = False) -> QuantizeReport:
    """Write the fp8 (`format_name="fp8"`) or GGUF (`"gguf"`, of `gguf_type`) copy of checkpoint folder `src` to
    `dst` (see the module docstring). `progress`: a progress line on stderr (GGUF)."""
    from ..checkpoint.configs import MovaConfigs

    src, dst = Path(src), Path(dst)
    if format_name not in ("fp8", "gguf"):
        raise ValueError(f"--format must be fp8 or gguf, got {format_name!r}")
    if format_name == "gguf":
        from .gguf_quantize import WRITABLE_TYPES

        if gguf_type not in WRITABLE_TYPES:
            raise ValueError(f"--type {gguf_type} cannot be written here; choose one of {', '.join(WRITABLE_TYPES)} "
                             "(K-quants such as Q4_K are made with llama.cpp's quantizer: see the README's GGUF section)")
    if not src.is_dir():
        raise ValueError(f"{src} is not a folder (a MOVA checkpoint is a folder with model_index.json)")
    MovaConfigs.from_folder(src)  # a MOVA folder with readable configs, or a ConfigError naming the problem
    unknown = [c for c in components if not (src / c).is_dir()]
    if unknown:
        found = sorted(entry.name for entry in src.iterdir() if entry.is_dir())
        raise ValueError(f"--components {' '.join(unknown)}: no such component folder in {src} "
                         f"(it has {', '.join(found)})")
    if src.resolve() == dst.resolve():
        raise ValueError("DST must differ from SRC")
    check_destination_folder(dst, "DST", companions=(dst.name + ".partial", dst.name + ".replaced"))
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists (pass --overwrite to replace it)")
    partial = dst.with_name(dst.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    report = QuantizeReport(format_name=format_name)
    bar = None
    if format_name == "gguf" and progress:
        from .gguf_quantize import Progress, gguf_numel

        total = sum(gguf_numel(_source_store(src / c, c)) for c in components if (src / c).is_dir())
        bar = Progress(total, f"GGUF {gguf_type}")
    try:
        for entry in sorted(src.iterdir()):
            target = partial / entry.name
            if entry.is_dir() and entry.name in components:
                component = ComponentReport(entry.name)
                if format_name == "gguf":
                    _gguf_component(entry, target, component, gguf_type, bar)
                else:
                    _quantize_component(entry, target, component)
                report.components.append(component)
            elif entry.is_dir():
                shutil.copytree(entry, target, copy_function=_link_or_copy)
            else:
                shutil.copy2(entry, target)
        _replace_folder(partial, dst)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("wrote %s checkpoint %s\n%s", format_name if format_name == "fp8" else f"GGUF {gguf_type}", dst,
                report.format())
    return report


def _replace_folder(new: Path, dst: Path) -> None:
    """Rename the complete folder `new` to `dst`; an existing `dst` (an `--overwrite`) is removed only after
    the new copy is complete, so a failed run leaves the old one in place."""
    if not dst.exists():
        new.rename(dst)
        return
    old = dst.with_name(dst.name + ".replaced")
    if old.exists():
        shutil.rmtree(old)
    dst.rename(old)
    new.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def quantize_cli(argv: Optional[Sequence[str]] = None) -> int:
    """`quantize SRC DST [--components ...] [--overwrite]`. Exit 0 on success; a refused input is one `error:`
    line and exit 2, before anything is written."""
    parser = CliParser(prog="python -m mova_model quantize",
                       description="Write an fp8 (e4m3fn, per-tensor scale) or GGUF copy of a MOVA checkpoint folder.")
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--components", nargs="+", default=list(FP8_COMPONENTS),
                        help=f"component folders to quantize (default: {' '.join(FP8_COMPONENTS)})")
    parser.add_argument("--format", dest="format_name", choices=("fp8", "gguf"), default="fp8",
                        help="fp8: safetensors with fp8 matrices; gguf: one .gguf file per component")
    parser.add_argument("--type", dest="gguf_type", default="Q8_0",
                        help="GGUF type of the matrices: Q8_0, Q5_1, Q5_0, Q4_1, Q4_0, F16 or BF16 (default Q8_0)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_or_status(list(argv or []))
    if isinstance(args, int):  # --help, or the parser's one `error:` line
        return args
    try:
        report = quantize_checkpoint(args.src, args.dst, args.components, args.overwrite, args.format_name,
                                     args.gguf_type.upper(), progress=True)
    except (ValueError, OSError) as exc:
        return refuse(str(exc))
    sys.stdout.write(report.format() + "\n")
    return 0


def stored_format(folder: Path, component: str = "video_dit") -> str:
    """"fp8" when `folder/component` stores F8_E4M3 matrices (a pre-quantized checkpoint), "gguf" when it is a
    GGUF file, else "bf16".

    Reads headers only; what `planner.PlanInputs.stored` expects.
    """
    from ..checkpoint.gguf_store import weight_format
    from ..checkpoint.weights import SafetensorsStore

    if weight_format(Path(folder) / component) == "gguf":
        return "gguf"
    store = SafetensorsStore(Path(folder) / component, component)
    return "fp8" if any(info.dtype == "F8_E4M3" for info in store.tensors.values()) else "bf16"
