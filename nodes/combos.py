"""Combo values checked against the node's own options at execution (ComfyUI 0.3.75 does not check V3 combos)."""
from __future__ import annotations

from comfy_api.latest import io

from ..mova_model.choices import check_choice

# Where the options of the file-backed combos come from, said when a value is not among them.
HINTS = {
    "checkpoint": "Each is a folder under models/mova holding a model_index.json.",
    "lora_name": "Each is a .pt/.safetensors file under models/loras.",
    "local_model": "Each is a Hugging Face model folder under models/mova_llm.",
}


def check_combos(node_cls: type[io.ComfyNode], **values) -> None:
    """Raise a ``ValueError`` listing the allowed values when one of ``values`` (input name -> value) is not an
    option of that combo input in ``node_cls``'s schema (rebuilt, so file lists are current)."""
    schema = node_cls.define_schema()
    combos = {item.id: item for item in schema.inputs if isinstance(item, io.Combo.Input)}
    for name, value in values.items():
        check_choice(name, value, list(combos[name].options or []), where=f"{schema.display_name}: ",
                     hint=HINTS.get(name, ""))


NODES = []
