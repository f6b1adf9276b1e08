"""Plain-data copies of the pack's dataclasses, for jobs sent to spawned worker processes.

Inside ComfyUI the pack's modules live under the host's name for the pack folder (e.g.
`comfyui-mova.mova_model.sampling.pipeline`), which a fresh worker process cannot import. `to_portable` turns a
dataclass tree (conditioning, guidance, held streams, LoRA patches, memory options) into tuples that name each
class relative to `mova_model`; `from_portable` rebuilds it in the worker from its own `mova_model` package.
Tensors, numbers, strings, None, tuples, lists and dicts pass through.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import PurePath
from typing import Any

import torch

_TAG = "__mova_dataclass__"
_PATH = "__mova_path__"


def _relative_module(module: str) -> str:
    marker = "mova_model"
    parts = module.split(".")
    if marker not in parts:
        raise TypeError(f"cannot send {module} objects to a worker (not part of mova_model)")
    return ".".join(parts[parts.index(marker):])


def to_portable(value: Any) -> Any:
    """A copy of `value` in which every dataclass is (tag, module relative to mova_model, class name, fields)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: to_portable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return (_TAG, _relative_module(type(value).__module__), type(value).__qualname__, fields)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, PurePath):
        return (_PATH, str(value))
    if isinstance(value, (list, tuple)):
        return type(value)(to_portable(v) for v in value)
    if isinstance(value, dict):
        return {k: to_portable(v) for k, v in value.items()}
    return value


def from_portable(value: Any, package: str = "mova_model") -> Any:
    """The inverse of `to_portable`, with classes from `package` (this process's name for `mova_model`)."""
    if isinstance(value, tuple) and len(value) == 4 and value[0] == _TAG:
        _, module, name, fields = value
        cls = getattr(importlib.import_module(package + module[len("mova_model"):]), name)
        return cls(**{k: from_portable(v, package) for k, v in fields.items()})
    if isinstance(value, tuple) and len(value) == 2 and value[0] == _PATH:
        from pathlib import Path

        return Path(value[1])
    if isinstance(value, (list, tuple)):
        return type(value)(from_portable(v, package) for v in value)
    if isinstance(value, dict):
        return {k: from_portable(v, package) for k, v in value.items()}
    return value
