"""What a LoRA key can name in one MOVA component, and the other namings of the same Wan layers.

MOVA's video experts have exactly the Wan 2.2 A14B layout and parameter names (`blocks.0.self_attn.q`,
`blocks.0.ffn.0`, `head.head`, `blocks.0.modulation`, ...). Community LoRAs name those layers in one of three
ways, all derived here from the expert's *own* names rather than from a fixed list:

- Wan names, dotted (`blocks.0.self_attn.q`): ComfyUI native files, musubi-tuner's converted files;
- Wan names with every `.` written `_` (`blocks_0_self_attn_q`): kohya / musubi-tuner (`lora_unet_...`);
- diffusers `WanTransformer3DModel` names (`blocks.0.attn1.to_q`, `blocks.0.ffn.net.0.proj`, `proj_out`,
  `condition_embedder.time_embedder.linear_1`, ...), dotted (diffusers / peft) or underscored.

The diffusers renames mirror diffusers' `scripts/convert_wan_to_diffusers.py` (`TRANSFORMER_KEYS_RENAME_DICT`),
including its swap of the block norms: Wan's affine `norm3` (before cross-attention) is diffusers' `norm2`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from torch import nn

from .dit_block import Modulated
from .ops import CastConv1d, CastConv3d, CastLinear, CastMixin

class LoraError(ValueError):
    """A LoRA file that cannot be used with this model; the message says what and where."""


_TOP_TO_DIFFUSERS = {
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
    "patch_embedding": "patch_embedding",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
}
_BLOCK_TO_DIFFUSERS = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "self_attn.norm_q": "attn1.norm_q", "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0", "cross_attn.norm_q": "attn2.norm_q", "cross_attn.norm_k": "attn2.norm_k",
    "cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
    "norm1": "norm1", "norm2": "norm3", "norm3": "norm2", "modulation": "scale_shift_table",
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")

WAN_21_I2V_ONLY = ("cross_attn.k_img", "cross_attn.v_img", "cross_attn.norm_k_img", "img_emb.")
"""Wan 2.1 image-to-video layers (its CLIP image branch), which Wan 2.2 A14B and so MOVA's experts lack."""


def to_diffusers(path: str) -> Optional[str]:
    """The diffusers name of a Wan module/parameter path (`blocks.3.ffn.0` -> `blocks.3.ffn.net.0.proj`), or None."""
    if path in _TOP_TO_DIFFUSERS:
        return _TOP_TO_DIFFUSERS[path]
    match = _BLOCK.match(path)
    if match and match.group(2) in _BLOCK_TO_DIFFUSERS:
        return f"blocks.{match.group(1)}.{_BLOCK_TO_DIFFUSERS[match.group(2)]}"
    return None


def from_diffusers(name: str) -> Optional[str]:
    """The Wan name of a diffusers module path (inverse of `to_diffusers`), or None."""
    for wan, diffusers in _TOP_TO_DIFFUSERS.items():
        if name == diffusers:
            return wan
    match = _BLOCK.match(name)
    if match:
        for wan, diffusers in _BLOCK_TO_DIFFUSERS.items():
            if match.group(2) == diffusers:
                return f"blocks.{match.group(1)}.{wan}"
    return None


def describe_layer(layer: nn.Module) -> str:
    if isinstance(layer, CastLinear):
        return f"Linear {layer.in_features}->{layer.out_features}"
    if isinstance(layer, (CastConv3d, CastConv1d)):
        return f"Conv {layer.in_channels}->{layer.out_channels} kernel {list(layer.kernel_size)}"
    return type(layer).__name__.replace("Cast", "")


@dataclass
class ComponentIndex:
    """The patchable names of one component (built on the meta device: names and shapes, no weights).

    layers: module path -> layer built by the ops factory (targets of LoRA pairs, `.diff`, `.diff_b`);
    bare: path of a parameter owned directly by a block (the adaLN `modulation` tables; targets of `.diff`);
    shapes: every parameter path -> shape.
    """

    component: str
    layers: Dict[str, nn.Module]
    bare: Dict[str, nn.Module]
    shapes: Dict[str, Tuple[int, ...]]
    _tables: Dict[str, Dict[str, str]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, component: str, module: nn.Module) -> "ComponentIndex":
        layers = {name: child for name, child in module.named_modules() if isinstance(child, CastMixin) and name}
        bare = {}
        for name, child in module.named_modules():
            if isinstance(child, Modulated):
                bare[f"{name}.modulation" if name else "modulation"] = child
        shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
        return cls(component, layers, bare, shapes)

    @property
    def width(self) -> Optional[int]:
        shape = self.shapes.get("blocks.0.self_attn.q.weight")
        return shape[0] if shape else None

    @property
    def num_blocks(self) -> int:
        return len({int(m.group(1)) for m in map(_BLOCK.match, self.layers) if m})

    def table(self, naming: str) -> Dict[str, str]:
        """Name -> Wan path for `naming` in ("wan", "diffusers", "wan_", "diffusers_") (the last two underscored)."""
        if naming not in self._tables:
            wan = {path: path for path in (*self.layers, *self.bare)}
            if naming == "wan":
                result = wan
            elif naming == "diffusers":
                result = {to_diffusers(path): path for path in wan if to_diffusers(path)}
            else:
                result, ambiguous = {}, set()
                for name, path in self.table(naming[:-1]).items():
                    flat = name.replace(".", "_")
                    if result.get(flat, path) != path:
                        ambiguous.add(flat)
                    result[flat] = path
                for flat in ambiguous:  # two paths that flatten alike cannot be told apart: map neither
                    del result[flat]
            self._tables[naming] = result
        return self._tables[naming]

    def param_of(self, target: str, role: str) -> Optional[str]:
        """The parameter a `.diff` (role "diff") or `.diff_b` ("diff_b") of `target` changes, if it has one."""
        if target in self.bare:
            return target if role == "diff" else None
        leaf = "weight" if role == "diff" else "bias"
        path = f"{target}.{leaf}"
        return path if path in self.shapes else None
