"""LoRA in the official MOVA trainer's format, applied as a lazy patch (the base weights are never rewritten).

Official format (`save_lora_weights_fsdp`, "peft" layout): `lora_weights.pt`, a dict
`"{component}.{module_path}.lora_A.weight"` `[rank, in]` and `".lora_B.weight"` `[out, rank]`, plus
`lora_config.pt` = `{"rank", "alpha", "target_modules"}`. Both are read with `torch.load(weights_only=True)`,
never a full unpickle. The same tensors may come as one `.safetensors` file (rank/alpha in its metadata, or a
`lora_config.json` beside it); `save_lora_safetensors` converts. Components: `video_dit`, `video_dit_2`,
`audio_dit`, `dual_tower_bridge`.

Each patched Linear computes `W x + b + B(A x)·scaling` with `scaling = alpha / rank × strength`, the
official `LoRALinear` forward with `set_lora_scale(strength)`. Patches are attached to the layers only while a
pipeline samples (`LoraPatchSet.apply` / `clear`), so a patched pipeline and its unpatched original can
share the same memory-mapped modules.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .ops import CastLinear, LoraAdapter

logger = logging.getLogger(__name__)

LORA_COMPONENTS = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")
PART_OF_COMPONENT = {"video_dit": "video", "video_dit_2": "video", "audio_dit": "audio", "dual_tower_bridge": "bridge"}
DEFAULT_RANK_ALPHA = (16, 16.0)
"""What the official loader assumes when no config is saved."""


class LoraError(ValueError):
    """A LoRA file that cannot be used with this model; the message says what and where."""


@dataclass
class LoraWeights:
    """Low-rank pairs per component: `pairs[component][module_path] = (A [rank, in], B [out, rank])`."""

    pairs: Dict[str, Dict[str, Tuple[torch.Tensor, torch.Tensor]]]
    rank: int
    alpha: float
    source: str = ""

    @property
    def base_scaling(self) -> float:
        return self.alpha / self.rank

    def num_tensors(self) -> int:
        return 2 * sum(len(v) for v in self.pairs.values())


def _split_key(key: str, source: str) -> Tuple[str, str, str]:
    """`"audio_dit.blocks.0.ffn.0.lora_A.weight"` -> ("audio_dit", "blocks.0.ffn.0", "A")."""
    for suffix, which in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
        if key.endswith(suffix):
            path = key[: -len(suffix)]
            component, _, module_path = path.partition(".")
            if component not in LORA_COMPONENTS or not module_path:
                raise LoraError(f"{source}: key {key!r} does not start with one of {', '.join(LORA_COMPONENTS)}")
            return component, module_path, which
    raise LoraError(f"{source}: key {key!r} is not a LoRA tensor (expected '<component>.<module>.lora_A.weight' or '.lora_B.weight')")


def _pair_up(tensors: Mapping[str, torch.Tensor], rank: int, alpha: float, source: str) -> LoraWeights:
    halves: Dict[Tuple[str, str], Dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        component, module_path, which = _split_key(key, source)
        if not isinstance(value, torch.Tensor) or value.dim() != 2:
            raise LoraError(f"{source}: {key} must be a 2-D tensor")
        halves.setdefault((component, module_path), {})[which] = value
    pairs: Dict[str, Dict[str, Tuple[torch.Tensor, torch.Tensor]]] = {}
    for (component, module_path), half in sorted(halves.items()):
        if set(half) != {"A", "B"}:
            missing = "lora_B" if "A" in half else "lora_A"
            raise LoraError(f"{source}: {component}.{module_path} has no {missing}.weight")
        down, up = half["A"], half["B"]
        if down.shape[0] != up.shape[1]:
            raise LoraError(f"{source}: {component}.{module_path}: lora_A is {list(down.shape)} and lora_B is {list(up.shape)}; ranks differ")
        pairs.setdefault(component, {})[module_path] = (down, up)
    if not pairs:
        raise LoraError(f"{source}: no LoRA tensors found")
    return LoraWeights(pairs=pairs, rank=int(rank), alpha=float(alpha), source=source)


def _rank_alpha(config: Optional[Mapping], source: str) -> Tuple[int, float]:
    if config is None:
        logger.info("%s: no LoRA config found; using the official default rank %d, alpha %.1f", source, *DEFAULT_RANK_ALPHA)
        return DEFAULT_RANK_ALPHA
    try:
        rank = int(config.get("rank", DEFAULT_RANK_ALPHA[0]))
        alpha = float(config.get("alpha", config.get("lora_alpha", rank)))
    except (TypeError, ValueError) as exc:
        raise LoraError(f"{source}: rank/alpha in the LoRA config are not numbers ({exc})") from exc
    if rank <= 0:
        raise LoraError(f"{source}: LoRA rank must be positive, found {rank}")
    return rank, alpha


def _torch_load_safe(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refused by the allow-list, or a broken file
        raise LoraError(f"{path}: cannot be read as plain tensors with torch.load(weights_only=True) ({exc}); "
                        "only tensor dicts are accepted, never arbitrary pickles") from exc


def load_lora(path: Path | str) -> LoraWeights:
    """Read a LoRA: a folder holding `lora_weights.pt` (+ `lora_config.pt`) or a `.safetensors`, or one such file."""
    path = Path(path)
    if path.is_dir():
        for name in ("lora_weights.safetensors", "lora_weights.pt"):
            if (path / name).is_file():
                return load_lora(path / name)
        candidates = sorted(path.glob("*.safetensors"))
        if len(candidates) == 1:
            return load_lora(candidates[0])
        raise LoraError(f"{path}: no lora_weights.pt or single .safetensors file in this folder")
    if not path.is_file():
        raise LoraError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as exc:
            raise LoraError(f"{path}: not a readable safetensors file ({exc})") from exc
        config: Optional[Dict] = None
        if "rank" in metadata:
            config = {"rank": metadata["rank"], "alpha": metadata.get("alpha", metadata["rank"])}
        elif (path.parent / "lora_config.json").is_file():
            config = json.loads((path.parent / "lora_config.json").read_text())
        rank, alpha = _rank_alpha(config, str(path))
        return _pair_up(tensors, rank, alpha, str(path))
    if path.suffix in (".pt", ".pth", ".bin"):
        tensors = _torch_load_safe(path)
        if not isinstance(tensors, dict):
            raise LoraError(f"{path}: expected a dict of tensors, found {type(tensors).__name__}")
        config_path = path.with_name("lora_config.pt")
        config = _torch_load_safe(config_path) if config_path.is_file() else None
        if config is not None and not isinstance(config, dict):
            raise LoraError(f"{config_path}: expected a dict with rank/alpha, found {type(config).__name__}")
        rank, alpha = _rank_alpha(config, str(path))
        return _pair_up(tensors, rank, alpha, str(path))
    raise LoraError(f"{path}: unsupported LoRA file type {path.suffix!r} (use the official lora_weights.pt + lora_config.pt, or .safetensors)")


def save_lora_safetensors(weights: LoraWeights, path: Path | str) -> Path:
    """Write `weights` as one safetensors file with rank/alpha in its metadata (loads back with `load_lora`)."""
    tensors = {}
    for component, modules in weights.pairs.items():
        for module_path, (down, up) in modules.items():
            tensors[f"{component}.{module_path}.lora_A.weight"] = down.contiguous()
            tensors[f"{component}.{module_path}.lora_B.weight"] = up.contiguous()
    path = Path(path)
    save_file(tensors, str(path), metadata={"rank": str(weights.rank), "alpha": str(weights.alpha), "format": "mova-lora"})
    return path


@dataclass(frozen=True)
class LoraPatch:
    """One LoRA at a strength; `part_strengths` multiplies it per part ("video", "audio", "bridge")."""

    weights: LoraWeights
    strength: float = 1.0
    part_strengths: Tuple[Tuple[str, float], ...] = ()

    def scale_for(self, component: str) -> float:
        parts = dict(self.part_strengths)
        return self.weights.base_scaling * self.strength * parts.get(PART_OF_COMPONENT[component], 1.0)


@dataclass(frozen=True)
class LoraPatchSet:
    """An ordered, immutable stack of LoRA patches. `with_patch` returns a new set; the old one is unchanged."""

    patches: Tuple[LoraPatch, ...] = field(default_factory=tuple)

    def with_patch(self, patch: LoraPatch) -> "LoraPatchSet":
        return LoraPatchSet(self.patches + (patch,))

    def __bool__(self) -> bool:
        return bool(self.patches)

    def check(self, component: str, module: nn.Module) -> None:
        """Raise `LoraError` if a patch names a layer `module` lacks or has the wrong shape."""
        for patch in self.patches:
            for module_path, (down, up) in patch.weights.pairs.get(component, {}).items():
                layer = _linear(module, component, module_path, patch.weights.source)
                if down.shape[1] != layer.in_features or up.shape[0] != layer.out_features:
                    raise LoraError(
                        f"{patch.weights.source}: {component}.{module_path} is {layer.in_features}->{layer.out_features}, "
                        f"the LoRA pair is {down.shape[1]}->{up.shape[0]}: this LoRA was trained for another model size"
                    )

    def apply(self, component: str, module: nn.Module) -> int:
        """Attach this set's adapters to `module` (replacing any attached before); return how many layers."""
        clear(module)
        self.check(component, module)
        count = 0
        for patch in self.patches:
            scale = patch.scale_for(component)
            if scale == 0.0:
                continue
            for module_path, (down, up) in patch.weights.pairs.get(component, {}).items():
                _linear(module, component, module_path, patch.weights.source).adapters.append(LoraAdapter(down, up, scale))
                count += 1
        return count


def _linear(module: nn.Module, component: str, module_path: str, source: str) -> CastLinear:
    try:
        layer = module.get_submodule(module_path)
    except AttributeError:
        layer = None
    if not isinstance(layer, CastLinear):
        raise LoraError(f"{source}: {component}.{module_path} is not a Linear layer of this MOVA {component}")
    return layer


def clear(module: nn.Module) -> None:
    """Remove every attached LoRA adapter from `module`."""
    for child in module.modules():
        if isinstance(child, CastLinear) and child.adapters:
            child.adapters = []


def lora_components(weights: Iterable[LoraWeights]) -> Tuple[str, ...]:
    """Components touched by any of `weights`."""
    seen = {c for w in weights for c in w.pairs}
    return tuple(c for c in LORA_COMPONENTS if c in seen)
