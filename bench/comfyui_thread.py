"""Call a function the way ComfyUI calls a node: on a worker thread, inside `torch.inference_mode()`.

Used by `bench.gpu_check` (its rows run under ComfyUI's conditions) and by the test suite
(`tests/comfyui_conditions.py`), so both reproduce the same conditions.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch


def run_as_comfyui(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """`fn(*args, **kwargs)` on a fresh thread inside `torch.inference_mode()`; its result, or its error re-raised."""
    outcome: dict = {}

    def target() -> None:
        try:
            with torch.inference_mode():
                outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="comfyui-prompt-worker")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
