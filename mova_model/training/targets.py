"""Which Linear layers get a LoRA: the presets `official` and `attention`, or a custom list.

Mirrors the official `inject_lora_to_model` (`mova/engine/trainer/accelerate/lora_utils.py`): each target
name `t` becomes the regular expression `.*t.*` matched (`re.match`) against the module's path inside its
component; `time_projection` and `time_embedding` are excluded the same way, and an excluded module's
children are not visited; a matching `nn.Linear` gets a LoRA and is not descended into. With the official
default list every Linear inside the blocks and the bridge layers matches (single letters like `o` match
`blocks`), the time embeddings are excluded and `text_embedding.*` / `head.head` match nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from torch import nn

from ..network.ops import CastLinear

OFFICIAL_TARGETS: Tuple[str, ...] = ("q", "k", "v", "o", "to_q", "to_k", "to_v", "proj")
"""The official trainer's default `lora.target_modules` (configs/training/mova_train_accelerate.py)."""
OFFICIAL_EXCLUDES: Tuple[str, ...] = ("time_projection", "time_embedding")
ATTENTION_PATTERN = re.compile(r"(?:.*\.)?(?:self_attn|cross_attn|inner)\.(?:q|k|v|o)")
"""`attention` preset: q/k/v/o of the DiT self- and cross-attention and of the bridge attention."""
TRAINABLE_COMPONENTS: Tuple[str, ...] = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")


class TargetError(ValueError):
    """A target specification that selects nothing or cannot be read."""


@dataclass(frozen=True)
class LoraTargets:
    """What to wrap: `preset` is "official", "attention" or "custom" (then `names` are official-style patterns)."""

    preset: str = "official"
    names: Tuple[str, ...] = OFFICIAL_TARGETS

    @classmethod
    def parse(cls, spec: str | Sequence[str]) -> "LoraTargets":
        """`"official"`, `"attention"`, or a comma-separated / listed set of official-style target names."""
        if isinstance(spec, str):
            key = spec.strip().lower()
            if key in ("official", "default", ""):
                return cls("official", OFFICIAL_TARGETS)
            if key == "attention":
                return cls("attention", ())
            names = tuple(n.strip() for n in spec.split(",") if n.strip())
        else:
            names = tuple(str(n).strip() for n in spec if str(n).strip())
        if not names:
            raise TargetError("LoRA targets: give 'official', 'attention' or a comma-separated list of module names")
        for name in names:
            try:
                re.compile(f".*{name}.*")
            except re.error as exc:
                raise TargetError(f"LoRA target {name!r} is not a valid pattern ({exc})") from exc
        if tuple(names) == OFFICIAL_TARGETS:
            return cls("official", OFFICIAL_TARGETS)
        return cls("custom", names)

    def describe(self) -> str:
        return self.preset if self.preset != "custom" else ",".join(self.names)

    def _matches(self, path: str) -> bool:
        if self.preset == "attention":
            return ATTENTION_PATTERN.fullmatch(path) is not None
        return any(re.match(f".*{name}.*", path) for name in self.names)

    def select(self, module: nn.Module) -> List[str]:
        """Paths (inside `module`) of the Linear layers that get a LoRA, in module order."""
        excludes = [re.compile(f".*{name}.*") for name in OFFICIAL_EXCLUDES]
        found: List[str] = []

        def visit(parent: nn.Module, prefix: str) -> None:
            for name, child in parent.named_children():
                path = f"{prefix}.{name}" if prefix else name
                if any(p.match(path) for p in excludes):
                    continue
                if isinstance(child, nn.Linear) and self._matches(path):
                    found.append(path)
                else:
                    visit(child, path)

        visit(module, "")
        return found


def linear_shapes(module: nn.Module, paths: Sequence[str]) -> Dict[str, Tuple[int, int]]:
    """`{path: (in_features, out_features)}` of the selected layers (works on `meta` modules)."""
    shapes = {}
    for path in paths:
        layer = module.get_submodule(path)
        if not isinstance(layer, CastLinear):
            raise TargetError(f"{path} is not an operations-built Linear layer")
        shapes[path] = (layer.in_features, layer.out_features)
    return shapes
