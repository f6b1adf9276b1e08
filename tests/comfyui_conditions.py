"""Run test code the way ComfyUI runs a node: on another thread, inside `torch.inference_mode()`.

ComfyUI's prompt worker is a thread of its own and executes every node under `torch.inference_mode()`
(execution.py). Tensors made there are inference tensors, and both the mode and the grad mode are thread-local,
so code that hands work to threads of its own (the block streamer's copy worker) meets conditions a plain
pytest call never shows. `CONDITIONS` parametrizes a test over both ways of calling.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from bench.comfyui_thread import run_as_comfyui  # noqa: F401  (the tests import it from here)

CONDITIONS = ("plain", "comfyui")
"""plain: called directly; comfyui: on a worker thread inside `torch.inference_mode()`."""


def run_in(condition: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """`fn(*args, **kwargs)` called as `condition` (one of `CONDITIONS`) says."""
    if condition == "plain":
        return fn(*args, **kwargs)
    if condition == "comfyui":
        return run_as_comfyui(fn, *args, **kwargs)
    raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")


def mova_threads() -> list:
    """Names of the live threads the pack started (copy workers are named `mova-...`)."""
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("mova-"))
