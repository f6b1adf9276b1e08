"""Lazy, memory-mapped access to the safetensors files of one checkpoint component folder.

A `SafetensorsStore` reads only the JSON headers of every `*.safetensors` file in a folder (a few KB to a
few MB, never the tensor bytes), checks each header against the file it came from, and builds the
key -> file map from those headers. A `*.safetensors.index.json` (the diffusers/transformers sharding
index) is optional; when present it must agree with the headers. Tensors are then read with
`safetensors.safe_open(..., framework="pt")`, which memory-maps the file: a tensor costs no RAM until
its pages are touched, and nothing is ever unpickled.

Problems are collected as `Problem`s (component, key, expected, found, file) instead of raised one at a
time, so a caller can report every problem of a checkpoint in one `CheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

logger = logging.getLogger(__name__)

SAFETENSORS_DTYPES: Dict[str, Tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
"""safetensors dtype name -> (torch dtype, bytes per element)."""

DTYPE_NAMES: Dict[torch.dtype, str] = {dtype: name for name, (dtype, _) in SAFETENSORS_DTYPES.items()}
"""torch dtype -> safetensors dtype name (`torch.bfloat16` -> `"BF16"`)."""

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""The safetensors format caps the JSON header at 100 MB; a larger length means a corrupt file."""

MAX_LISTED_PROBLEMS = 20


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a checkpoint: which component, key and file, what was expected and found."""

    component: str
    message: str
    key: Optional[str] = None
    expected: Optional[str] = None
    found: Optional[str] = None
    file: Optional[str] = None

    def __str__(self) -> str:
        where = self.component + (f" / {self.key}" if self.key else "")
        text = f"{where}: {self.message}"
        if self.expected is not None or self.found is not None:
            text += f" (expected {self.expected}, found {self.found})"
        if self.file:
            text += f" [{self.file}]"
        return text


class CheckpointError(ValueError):
    """A checkpoint folder is not a usable MOVA checkpoint. `problems` lists every problem found."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems: List[Problem] = list(problems)

    @classmethod
    def from_problems(cls, title: str, problems: Sequence[Problem], limit: int = MAX_LISTED_PROBLEMS) -> "CheckpointError":
        """One error listing up to `limit` problems, then "... and N more"."""
        return cls(format_problems(title, problems, limit), problems)


def format_problems(title: str, problems: Sequence[Problem], limit: int = MAX_LISTED_PROBLEMS) -> str:
    """`title` followed by one indented line per problem, capped at `limit` lines + "and N more"."""
    lines = [f"{title}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"]
    lines += [f"  - {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


@dataclass(frozen=True)
class TensorInfo:
    """Header entry of one stored tensor. `shape` in elements; `data_offsets` relative to the data section."""

    key: str
    dtype: str
    shape: Tuple[int, ...]
    file: Path
    data_offsets: Tuple[int, int]

    @property
    def numel(self) -> int:
        return int(math.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.data_offsets[1] - self.data_offsets[0]

    @property
    def torch_dtype(self) -> torch.dtype:
        return SAFETENSORS_DTYPES[self.dtype][0]


def format_shape(shape: Iterable[int]) -> str:
    """A shape written as in the manifests: `[5120, 36, 1, 2, 2]` (`[]` for a scalar)."""
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def read_safetensors_header(path: Path, component: str = "") -> Tuple[Dict[str, TensorInfo], Dict[str, str], List[Problem]]:
    """Read and check the header of one safetensors file without reading any tensor bytes.

    Checks: the 8-byte length fits in the file, the header is a JSON object, every entry has a known dtype,
    an integer shape and data offsets whose length is numel x itemsize, the entries tile the data section
    without gaps or overlap, and the file ends exactly at the last offset (a truncated download fails here).
    Returns (tensors by key, `__metadata__`, problems); a file with problems yields no tensors.
    """
    path = Path(path)
    name = str(path)

    def bad(message: str, key: Optional[str] = None, expected: Optional[str] = None, found: Optional[str] = None):
        return {}, {}, [Problem(component, message, key=key, expected=expected, found=found, file=name)]

    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return bad("file is truncated: shorter than the 8-byte safetensors header length",
                           expected=">= 8 bytes", found=f"{size} bytes")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                return bad("corrupt or truncated safetensors file: the header length runs past the end of the file",
                           expected=f"header of <= {size - 8} bytes", found=f"{header_len} bytes")
            raw = handle.read(header_len)
    except OSError as exc:
        return bad(f"cannot read the file ({exc})")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return bad(f"corrupt safetensors header: not valid JSON ({exc})")
    if not isinstance(header, dict):
        return bad("corrupt safetensors header: not a JSON object", found=type(header).__name__)

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        metadata = {}
    problems: List[Problem] = []
    tensors: Dict[str, TensorInfo] = {}
    spans: List[Tuple[int, int, str]] = []
    data_size = size - 8 - header_len
    past_end: List[Tuple[int, str]] = []
    for key, entry in header.items():
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            problems.append(Problem(component, "corrupt header entry (needs dtype, shape, data_offsets)", key=key,
                                    found=json.dumps(entry)[:80], file=name))
            continue
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            problems.append(Problem(component, "unknown dtype in header", key=key, expected="one of " + ", ".join(SAFETENSORS_DTYPES),
                                    found=str(dtype), file=name))
            continue
        if (not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape)
                or not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)):
            problems.append(Problem(component, "corrupt header entry (bad shape or data_offsets)", key=key,
                                    found=f"shape={shape} data_offsets={offsets}", file=name))
            continue
        begin, end = offsets
        want = int(math.prod(shape)) * SAFETENSORS_DTYPES[dtype][1]
        if end - begin != want or begin < 0:
            problems.append(Problem(component, "header data_offsets do not match dtype x shape", key=key,
                                    expected=f"{want} bytes", found=f"{end - begin} bytes", file=name))
            continue
        if end > data_size:
            past_end.append((end, key))
            continue
        spans.append((begin, end, key))
        tensors[key] = TensorInfo(key, dtype, tuple(shape), path, (begin, end))
    if past_end:  # one problem per file: a truncated download cuts off every tensor after the cut
        end, key = max(past_end)
        problems.append(Problem(component, f"tensor data runs past the end of the file (truncated?): {len(past_end)} "
                                f"tensor(s) incomplete", key=key, expected=f"data up to byte {end}",
                                found=f"{data_size} data bytes", file=name))
    if problems:
        return {}, metadata, problems
    cursor = 0
    for begin, end, key in sorted(spans):
        if begin != cursor:
            problems.append(Problem(component, "header offsets leave a gap or overlap", key=key,
                                    expected=f"data starting at byte {cursor}", found=f"byte {begin}", file=name))
            return {}, metadata, problems
        cursor = end
    if cursor != data_size:
        problems.append(Problem(component, "file size does not match the header's last data offset",
                                expected=f"{8 + header_len + cursor} bytes", found=f"{size} bytes", file=name))
        return {}, metadata, problems
    return tensors, metadata, problems


GGUF_STAMP_BYTES = 4 * 1024 * 1024
"""A GGUF file's stamp hashes its first 4 MiB: the header (metadata and tensor table) of a DiT file and more."""

WEIGHT_FILE_PATTERNS: Tuple[str, ...] = ("*.safetensors*", "*.gguf")
"""The files whose change between two runs makes a component be checked again (weights and sharding index)."""

FileStamp = Tuple[int, int, int, str]
"""(size in bytes, mtime in ns, inode, digest of the 8-byte length + JSON header) of one file."""


def file_stamp(path: Path) -> Optional[FileStamp]:
    """What identifies the validated version of a weight file, or None when it cannot be read.

    Size and mtime catch a truncation or a rewrite, the inode a file replaced by another (a re-download
    renamed over it), the header digest a rewrite that kept size and mtime (`cp -p`, `touch -r`). Only the
    header is read (a few KB to a few MB), never tensor bytes.
    """
    try:
        stat = path.stat()
        digest = hashlib.blake2b(digest_size=16)
        if path.name.endswith(".safetensors"):
            with open(path, "rb") as handle:
                prefix = handle.read(8)
                digest.update(prefix)
                if len(prefix) == 8:
                    (header_len,) = struct.unpack("<Q", prefix)
                    if 8 + header_len <= stat.st_size and header_len <= MAX_HEADER_BYTES:
                        digest.update(handle.read(header_len))
        elif path.name.endswith(".gguf"):
            with open(path, "rb") as handle:
                digest.update(handle.read(GGUF_STAMP_BYTES))
        else:  # the sharding index: small JSON, hash it whole
            digest.update(path.read_bytes())
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns, stat.st_ino, digest.hexdigest()


class SafetensorsStore:
    """All tensors of the `*.safetensors` files of one folder, by key, read lazily and memory-mapped.

    `folder`: a component folder (single-file or sharded, with or without `*.safetensors.index.json`).
    `component`: the name used in problem messages. Construction reads headers only; `problems` holds
    everything wrong with the files (see `read_safetensors_header`), duplicate keys across shards, and
    disagreements with the index. `check()` raises them as one `CheckpointError`.
    """

    FILE_PATTERN = "*.safetensors"
    """The weight files of a component folder this store reads."""

    def __init__(self, folder: Path, component: Optional[str] = None) -> None:
        self.folder = Path(folder)
        self.component = component or self.folder.name
        self.problems: List[Problem] = []
        self.tensors: Dict[str, TensorInfo] = {}
        self.metadata: Dict[Path, Dict[str, str]] = {}
        self.files: List[Path] = sorted(self.folder.glob(self.FILE_PATTERN)) if self.folder.is_dir() else []
        self._prepare()
        self._stamps = self._file_stamps()
        self._scan()

    def _prepare(self) -> None:
        """Subclasses set up their own state here, before the files are stamped and scanned."""

    def _file_stamps(self) -> Dict[str, FileStamp]:
        stamps = {}
        if self.folder.is_dir():
            for path in sorted(p for pattern in WEIGHT_FILE_PATTERNS for p in self.folder.glob(pattern)):
                stamp = file_stamp(path)
                if stamp is not None:
                    stamps[path.name] = stamp
        return stamps

    def changed_files(self) -> List[str]:
        """Names of the safetensors/index/GGUF files added, removed or rewritten (size, mtime, inode or header)
        since the headers were checked; empty when the folder still holds exactly the validated files."""
        now = self._file_stamps()
        return sorted(name for name in now.keys() | self._stamps.keys() if now.get(name) != self._stamps.get(name))

    def is_stale(self) -> bool:
        """True when the folder's safetensors/index files changed (added, removed, rewritten) since the scan."""
        return bool(self.changed_files())

    def _problem(self, message: str, **kw) -> None:
        self.problems.append(Problem(self.component, message, **kw))

    def _scan(self) -> None:
        if not self.folder.is_dir():
            self._problem("component folder is missing", expected="a folder", found="nothing", file=str(self.folder))
            return
        if not self.files:
            others = sorted(p.name for p in self.folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            hint = (f"; found {', '.join(others)}, which this loader does not read (safetensors only, or one .gguf "
                    "file)" if others else "")
            self._problem("no *.safetensors weight file in the folder (nor a .gguf file)" + hint,
                          expected="*.safetensors or one *.gguf",
                          found="none", file=str(self.folder))
            return
        for path in self.files:
            tensors, metadata, problems = read_safetensors_header(path, self.component)
            self.problems.extend(problems)
            self.metadata[path] = metadata
            for key, info in tensors.items():
                if key in self.tensors:
                    self._problem("key stored in two files", key=key, expected=self.tensors[key].file.name,
                                  found=path.name, file=str(path))
                    continue
                self.tensors[key] = info
        for index_path in sorted(self.folder.glob("*.safetensors.index.json")):
            self._check_index(index_path)

    def _check_index(self, index_path: Path) -> None:
        """The sharding index must map exactly the stored keys to the files whose headers hold them."""
        where = str(index_path)
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            self._problem(f"unreadable sharding index ({exc})", file=where)
            return
        if any(p.file and Path(p.file).name.endswith(".safetensors") for p in self.problems):
            return  # a broken shard already explains the disagreements
        for key, file_name in weight_map.items():
            info = self.tensors.get(key)
            if info is None:
                missing = not (self.folder / str(file_name)).is_file()
                self._problem("index lists a key that no safetensors header holds", key=key, expected=str(file_name),
                              found="missing file" if missing else "absent from that file", file=where)
            elif info.file.name != file_name:
                self._problem("index and headers disagree on the file holding the key", key=key,
                              expected=str(file_name), found=info.file.name, file=where)
        for key in self.tensors.keys() - weight_map.keys():
            self._problem("key stored in a shard but not listed in the index", key=key,
                          expected="listed", found=self.tensors[key].file.name, file=where)

    def check(self) -> "SafetensorsStore":
        """Raise a `CheckpointError` listing every header problem; return self when there is none."""
        if self.problems:
            raise CheckpointError.from_problems(f"{self.component}: unusable safetensors files in {self.folder}", self.problems)
        return self

    # --- mapping-like access -------------------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self.tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def keys(self) -> List[str]:
        return list(self.tensors)

    def info(self, key: str) -> TensorInfo:
        return self.tensors[key]

    @property
    def nbytes(self) -> int:
        """Total stored tensor bytes (what loading everything would map)."""
        return sum(info.nbytes for info in self.tensors.values())

    def get_tensor(self, key: str) -> torch.Tensor:
        """One tensor, memory-mapped from its file (no copy until written or cast)."""
        return self.load([key])[key]

    def load(self, keys: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
        """Memory-mapped tensors for `keys` (default: all), opening each file once.

        Refuses to read from a store with header problems. Tensors keep their stored dtype; the
        returned tensors share pages with the page cache (safetensors `safe_open` mmap), so loading a
        14B-parameter expert does not copy it into process memory.
        """
        from safetensors import safe_open

        self.check()
        wanted = list(self.tensors) if keys is None else list(keys)
        by_file: Dict[Path, List[str]] = {}
        for key in wanted:
            if key not in self.tensors:
                raise KeyError(f"{self.component}: no tensor {key!r} in {self.folder}")
            by_file.setdefault(self.tensors[key].file, []).append(key)
        out: Dict[str, torch.Tensor] = {}
        for path, file_keys in by_file.items():
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for key in file_keys:
                    out[key] = handle.get_tensor(key)
        return {key: out[key] for key in wanted}
