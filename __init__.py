"""ComfyUI-MOVA: ComfyUI nodes for the MOVA joint video + audio model.

ComfyUI loads this file as the pack's entry point and calls :func:`comfy_entrypoint`
(the V3 extension API). The node classes are collected from the ``NODES`` list of every
module in ``nodes/``. Importing this package without ComfyUI present (e.g. from plain
``pytest`` or ``python -m mova_model``) defines no entry point and does not fail.
"""
import importlib
import logging
import os
import pkgutil

__version__ = "0.1.0"

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))

logger = logging.getLogger("comfyui_mova")


def _node_modules():
    """Import every ``nodes/<name>.py`` module of this pack (sorted by name) and return them."""
    nodes_dir = os.path.join(_PACK_DIR, "nodes")
    modules = []
    for info in sorted(pkgutil.iter_modules([nodes_dir]), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        modules.append(importlib.import_module(f"{__name__}.nodes.{info.name}"))
    return modules


def collect_nodes() -> list:
    """Node classes from each ``nodes/*.py`` module's ``NODES`` list, in module order, no duplicates."""
    found = []
    for module in _node_modules():
        for node_cls in getattr(module, "NODES", ()):
            if node_cls not in found:
                found.append(node_cls)
    return found


try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # not running inside ComfyUI
    ComfyExtension = None

if ComfyExtension is not None:

    class MovaExtension(ComfyExtension):
        """The pack's V3 extension: registers the ``mova`` model folder and lists the nodes."""

        async def on_load(self) -> None:
            from .nodes.paths import register_model_folder

            register_model_folder()

        async def get_node_list(self) -> list:
            # ComfyUI 0.3.75's loader never calls on_load, so register the folder here too
            # (idempotent).
            await self.on_load()
            nodes = collect_nodes()
            logger.info("ComfyUI-MOVA %s: %d nodes", __version__, len(nodes))
            return nodes

    async def comfy_entrypoint() -> "MovaExtension":
        """Called by ComfyUI (>= 0.3.60 V3 loader) when it loads this pack."""
        return MovaExtension()
