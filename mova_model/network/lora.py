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

Community Wan LoRAs (ComfyUI native, kohya / musubi-tuner, diffusers / peft; see `lora_formats.py`) name no
component: `load_lora(path, modules=..., expert=...)` maps them onto the chosen video expert(s), with a scale
per layer and full-size deltas (`.diff`, `.diff_b`) applied as `ops.WeightDelta`s. Given the components'
modules (meta modules are enough), every key must name a layer of them with the right shape, or the file is
refused (`allow_partial` keeps what matches and records the rest in `LoraWeights.skipped`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .dit_block import Modulated
from .lora_formats import Resolved, most_common_rank, report, resolve
from .lora_names import ComponentIndex, LoraError, describe_layer  # noqa: F401  (LoraError: imported from here)
from .ops import CastLinear, CastMixin, LoraAdapter, WeightDelta, weight_shape

logger = logging.getLogger(__name__)

LORA_COMPONENTS = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")
PART_OF_COMPONENT = {"video_dit": "video", "video_dit_2": "video", "audio_dit": "audio", "dual_tower_bridge": "bridge"}
DEFAULT_RANK_ALPHA = (16, 16.0)
"""What the official loader assumes when no config is saved."""
EXPERTS = {"both": ("video_dit", "video_dit_2"), "high": ("video_dit",), "low": ("video_dit_2",)}
"""Where a LoRA goes: `expert` -> video components (high noise = `video_dit`, low noise = `video_dit_2`)."""
EXPERT_NAMES = {"video_dit": "high-noise expert (video_dit)", "video_dit_2": "low-noise expert (video_dit_2)"}
OFFICIAL_FORMAT = "MOVA official"

@dataclass
class LoraWeights:
    """Low-rank pairs per component: `pairs[component][module_path] = (A [rank, in], B [out, rank])`.

    A convolution's pair is `A [rank, in, *kernel]`, `B [out, rank, 1, ...]` (or flattened, as ComfyUI reshapes it).
    scales: per-layer `alpha / rank` (or 1) where the file gives its own (community formats); a layer without
    one uses `alpha / rank` of the file. deltas: `deltas[component][parameter_path] = (tensor, factor)`, added as
    `param + tensor · factor · strength` (ComfyUI `.diff` / `.diff_b`). format: the detected format; skipped:
    `(key, reason)` left out under `allow_partial`; metadata: the file's safetensors metadata.
    """

    pairs: Dict[str, Dict[str, Tuple[torch.Tensor, torch.Tensor]]]
    rank: int
    alpha: float
    source: str = ""
    scales: Dict[str, Dict[str, float]] = field(default_factory=dict)
    deltas: Dict[str, Dict[str, Tuple[torch.Tensor, float]]] = field(default_factory=dict)
    format: str = OFFICIAL_FORMAT
    skipped: Tuple[Tuple[str, str], ...] = ()
    metadata: Dict[str, str] = field(default_factory=dict)

    @property
    def base_scaling(self) -> float:
        return self.alpha / self.rank

    def layer_scale(self, component: str, module_path: str) -> float:
        """alpha / rank of one pair (the file's per-layer value, else the global one)."""
        return self.scales.get(component, {}).get(module_path, self.base_scaling)

    def components(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys([*self.pairs, *self.deltas]))

    def num_tensors(self) -> int:
        return 2 * sum(len(v) for v in self.pairs.values()) + sum(len(v) for v in self.deltas.values())

    def summary(self) -> str:
        """One line: format, components, pair and delta counts, skipped keys."""
        parts = []
        for component in self.components():
            pairs, deltas = len(self.pairs.get(component, {})), len(self.deltas.get(component, {}))
            parts.append(f"{component}: {pairs} pairs" + (f" + {deltas} deltas" if deltas else ""))
        text = f"{self.format} LoRA -> " + ", ".join(parts)
        if self.skipped:
            text += f"; skipped {len(self.skipped)} tensors that do not match"
        return text


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


ModuleSource = Callable[[str], Optional[nn.Module]]
"""component name -> its module (a meta-device build is enough: names and shapes are all that is read); None: that
component of an official file is not checked here (it still is when the patch is applied to a model)."""


def _read_safetensors(path: Path) -> Tuple[Dict[str, Tuple[int, ...]], Dict[str, str], Callable[[str], torch.Tensor]]:
    """(key -> shape from the header, metadata, a reader of one tensor); tensors are read memory-mapped, on demand."""
    try:
        handle = safe_open(str(path), framework="pt")  # one memory map for every tensor read; closed when dropped
        metadata = dict(handle.metadata() or {})
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as exc:
        raise LoraError(f"{path}: not a readable safetensors file ({exc})") from exc
    return shapes, metadata, handle.get_tensor


def _is_official(keys: Iterable[str], source: str) -> bool:
    keys = list(keys)
    official = [k for k in keys if k.partition(".")[0] in LORA_COMPONENTS]
    if official and len(official) != len(keys):
        other = next(k for k in keys if k.partition(".")[0] not in LORA_COMPONENTS)
        raise LoraError(f"{source}: mixed LoRA formats in one file: MOVA component keys (e.g. {official[0]!r}) and "
                        f"others (e.g. {other!r}); a file must use one naming")
    return bool(official)


def load_lora(path: Path | str, modules: Optional[ModuleSource] = None, expert: str = "both",
              allow_partial: bool = False) -> LoraWeights:
    """Read a LoRA: a folder holding `lora_weights.pt` (+ `lora_config.pt`) or a `.safetensors`, or one such file.

    modules: where the component modules come from (e.g. `MovaPipeline.lora_module`). Without it only the official
    MOVA format can be read (its keys name their components; layers are checked when the patch is applied). With
    it, every key must name a layer of its component with the right shape (`allow_partial`: keep what matches).
    expert: "high" / "low" / "both": the video expert(s) a community Wan LoRA goes to; for an official file, which
    of its video parts are kept (its audio DiT and bridge parts always are).
    """
    if expert not in EXPERTS:
        raise LoraError(f"expert must be one of {', '.join(EXPERTS)} (high = video_dit, low = video_dit_2), got {expert!r}")
    path = Path(path)
    if path.is_dir():
        for name in ("lora_weights.safetensors", "lora_weights.pt"):
            if (path / name).is_file():
                return load_lora(path / name, modules, expert, allow_partial)
        candidates = sorted(path.glob("*.safetensors"))
        if len(candidates) == 1:
            return load_lora(candidates[0], modules, expert, allow_partial)
        raise LoraError(f"{path}: no lora_weights.pt or single .safetensors file in this folder")
    if not path.is_file():
        raise LoraError(f"{path}: file not found")
    source = str(path)
    if path.suffix == ".safetensors":
        shapes, metadata, read = _read_safetensors(path)
        if not shapes:
            raise LoraError(f"{source}: the file holds no tensors")
        if not _is_official(shapes, source):
            if modules is None:
                raise LoraError(f"{source}: a LoRA without MOVA component names (a Wan LoRA?) is mapped onto a video "
                                "expert of a loaded model: use the MOVA LoRA Loader, `generate --lora`, or "
                                "MovaPipeline.load_lora")
            return _community(shapes, read, metadata, modules, expert, allow_partial, source)
        config: Optional[Dict] = None
        if "rank" in metadata:
            config = {"rank": metadata["rank"], "alpha": metadata.get("alpha", metadata["rank"])}
        elif (path.parent / "lora_config.json").is_file():
            config = json.loads((path.parent / "lora_config.json").read_text())
        rank, alpha = _rank_alpha(config, source)
        weights = _pair_up({key: read(key) for key in shapes}, rank, alpha, source)
        weights.metadata = metadata
    elif path.suffix in (".pt", ".pth", ".bin"):
        tensors = _torch_load_safe(path)
        if not isinstance(tensors, dict):
            raise LoraError(f"{path}: expected a dict of tensors, found {type(tensors).__name__}")
        config_path = path.with_name("lora_config.pt")
        config = _torch_load_safe(config_path) if config_path.is_file() else None
        if config is not None and not isinstance(config, dict):
            raise LoraError(f"{config_path}: expected a dict with rank/alpha, found {type(config).__name__}")
        rank, alpha = _rank_alpha(config, source)
        weights = _pair_up(tensors, rank, alpha, source)
    else:
        raise LoraError(f"{path}: unsupported LoRA file type {path.suffix!r} (use .safetensors, or the official "
                        "lora_weights.pt + lora_config.pt)")
    return _official_routed(weights, modules, expert, allow_partial)


def _where(components: Tuple[str, ...]) -> str:
    if len(components) == 1:
        return f"MOVA's {EXPERT_NAMES.get(components[0], components[0])}"
    return "MOVA's " + " and ".join(EXPERT_NAMES.get(c, c) for c in components)


def _community(shapes, read, metadata, modules: ModuleSource, expert: str, allow_partial: bool, source: str) -> LoraWeights:
    components = EXPERTS[expert]
    indexes = [ComponentIndex.of(c, modules(c)) for c in components]
    found: Resolved = resolve(shapes, read, indexes, source, allow_partial, _where(components))
    rank = most_common_rank(found.pairs)
    weights = LoraWeights(pairs={c: dict(found.pairs) for c in components if found.pairs}, rank=rank, alpha=float(rank),
                          source=source, scales={c: dict(found.scales) for c in components if found.scales},
                          deltas={c: dict(found.deltas) for c in components if found.deltas}, format=found.format,
                          skipped=tuple(found.skipped), metadata=metadata)
    logger.info("%s: %s", source, weights.summary())
    return weights


def _official_routed(weights: LoraWeights, modules: Optional[ModuleSource], expert: str, allow_partial: bool) -> LoraWeights:
    """Keep the video parts `expert` selects; with `modules`, check every pair (strictness / allow_partial)."""
    dropped = [c for c in ("video_dit", "video_dit_2") if c in weights.pairs and c not in EXPERTS[expert]]
    for component in dropped:
        del weights.pairs[component]
    if dropped and not weights.pairs:
        raise LoraError(f"{weights.source}: this MOVA LoRA has video parts for {', '.join(dropped)} only; expert={expert!r} "
                        f"keeps none of them")
    if dropped:
        logger.info("%s: expert=%s: left out its %s part(s)", weights.source, expert, ", ".join(dropped))
    if modules is None:
        return weights
    problems: List[Tuple[str, str]] = []
    used = 0
    for component in list(weights.pairs):
        module = modules(component)
        if module is None:  # the caller cannot build this component (e.g. lora-convert without a checkpoint)
            used += 2 * len(weights.pairs[component])
            continue
        for module_path, (down, up) in list(weights.pairs[component].items()):
            reason = _official_problem(module, component, module_path, down, up)
            if reason:
                keys = [f"{component}.{module_path}.lora_{x}.weight" for x in "AB"]
                problems.extend((key, reason) for key in keys)
                del weights.pairs[component][module_path]
            else:
                used += 2
        if not weights.pairs[component]:
            del weights.pairs[component]
    weights.skipped = tuple(report(problems, used + len(problems), used, weights.source, OFFICIAL_FORMAT,
                                   "this MOVA model", allow_partial))
    return weights


def _official_problem(module: nn.Module, component: str, module_path: str, down: torch.Tensor, up: torch.Tensor) -> Optional[str]:
    try:
        layer = module.get_submodule(module_path)
    except AttributeError:
        layer = None
    if not isinstance(layer, CastLinear):
        what = f"a {describe_layer(layer)}" if isinstance(layer, CastMixin) else "not a layer"
        return f"{component}.{module_path} is {what} of this MOVA {component}, not a Linear layer"
    if down.shape[1] != layer.in_features or up.shape[0] != layer.out_features:
        return (f"{component}.{module_path} is {layer.in_features}->{layer.out_features}, the LoRA pair is "
                f"{down.shape[1]}->{up.shape[0]}: this LoRA was trained for another model size")
    return None


def official_tensors(weights: LoraWeights) -> Dict[str, torch.Tensor]:
    """The official keys (`<component>.<module>.lora_A.weight` / `.lora_B.weight`) of `weights`' pairs."""
    tensors = {}
    for component, modules in weights.pairs.items():
        for module_path, (down, up) in modules.items():
            tensors[f"{component}.{module_path}.lora_A.weight"] = down.contiguous()
            tensors[f"{component}.{module_path}.lora_B.weight"] = up.contiguous()
    return tensors


def save_lora_safetensors(weights: LoraWeights, path: Path | str, metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write `weights` as one safetensors file with rank/alpha in its metadata (loads back with `load_lora`).

    Only the official format's content: low-rank pairs under one alpha/rank (see `lora_export.to_official` for
    files with per-layer scales or deltas). `metadata` is kept beside rank/alpha/format.
    """
    if weights.deltas or any(weights.layer_scale(c, m) != weights.base_scaling for c, ms in weights.scales.items() for m in ms):
        raise LoraError(f"{weights.source}: per-layer scales or deltas do not fit the official format; "
                        "convert with `python -m mova_model lora-convert ... --to official`")
    path = Path(path)
    meta = dict(metadata or {})
    meta.update({"rank": str(weights.rank), "alpha": str(weights.alpha), "format": "mova-lora"})
    save_file(official_tensors(weights), str(path), metadata=meta)
    return path


@dataclass(frozen=True)
class LoraPatch:
    """One LoRA at a strength; `part_strengths` multiplies it per part ("video", "audio", "bridge")."""

    weights: LoraWeights
    strength: float = 1.0
    part_strengths: Tuple[Tuple[str, float], ...] = ()

    def factor_for(self, component: str) -> float:
        """strength × the part's strength (what multiplies every scale and delta of `component`)."""
        return self.strength * dict(self.part_strengths).get(PART_OF_COMPONENT[component], 1.0)

    def scale_for(self, component: str) -> float:
        """The file-wide alpha/rank × `factor_for` (per-layer scales of community files: `LoraWeights.layer_scale`)."""
        return self.weights.base_scaling * self.factor_for(component)


@dataclass(frozen=True)
class LoraPatchSet:
    """An ordered, immutable stack of LoRA patches. `with_patch` returns a new set; the old one is unchanged."""

    patches: Tuple[LoraPatch, ...] = field(default_factory=tuple)

    def with_patch(self, patch: LoraPatch) -> "LoraPatchSet":
        return LoraPatchSet(self.patches + (patch,))

    def __bool__(self) -> bool:
        return bool(self.patches)

    def check(self, component: str, module: nn.Module) -> None:
        """Raise `LoraError` if a patch names a layer or parameter `module` lacks, or has the wrong shape."""
        for patch in self.patches:
            source = patch.weights.source
            for module_path, (down, up) in patch.weights.pairs.get(component, {}).items():
                layer = _layer(module, component, module_path, source)
                if isinstance(layer, CastLinear):
                    if down.dim() == 2 and up.dim() == 2 and down.shape[1] == layer.in_features \
                            and up.shape[0] == layer.out_features and down.shape[0] == up.shape[1]:
                        continue
                    raise LoraError(
                        f"{source}: {component}.{module_path} is {layer.in_features}->{layer.out_features}, "
                        f"the LoRA pair is {down.shape[1]}->{up.shape[0]}: this LoRA was trained for another model size")
                if not _conv_pair_fits(torch.Size(weight_shape(layer)), down, up):
                    raise LoraError(f"{source}: {component}.{module_path} is a {describe_layer(layer)}; the LoRA pair "
                                    f"{list(down.shape)} / {list(up.shape)} does not fit it")
            for param_path, (tensor, _) in patch.weights.deltas.get(component, {}).items():
                owner, leaf = _owner(module, component, param_path, source)
                param = owner._parameters.get(leaf)
                # a GGUF layer's weight holds uint8 blocks: compare the delta with its logical shape
                shape = None if param is None else (weight_shape(owner) if leaf == "weight" else tuple(param.shape))
                if shape is None or shape != tuple(tensor.shape):
                    found = "no such parameter" if shape is None else f"{list(shape)}"
                    raise LoraError(f"{source}: {component}.{param_path} is {found}, the delta is {list(tensor.shape)}")

    def apply(self, component: str, module: nn.Module) -> int:
        """Attach this set's adapters and deltas to `module` (replacing any attached before); return how many."""
        clear(module)
        self.check(component, module)
        count = 0
        for patch in self.patches:
            factor = patch.factor_for(component)
            if factor == 0.0:
                continue
            weights = patch.weights
            for module_path, (down, up) in weights.pairs.get(component, {}).items():
                layer = module.get_submodule(module_path)
                scale = weights.layer_scale(component, module_path) * factor
                if isinstance(layer, CastLinear):
                    layer.adapters.append(LoraAdapter(down, up, scale))
                else:
                    layer.deltas = layer.deltas + (WeightDelta("weight", up, scale, down=down),)
                count += 1
            for param_path, (tensor, delta_factor) in weights.deltas.get(component, {}).items():
                owner, leaf = _owner(module, component, param_path, weights.source)
                owner.deltas = owner.deltas + (WeightDelta(leaf, tensor, delta_factor * factor),)
                count += 1
        return count


def _conv_pair_fits(weight_shape: torch.Size, down: torch.Tensor, up: torch.Tensor) -> bool:
    """ComfyUI's reshape rule: `up.flatten(1) @ down.flatten(1)` must have the weight's numel and out rows."""
    if len(weight_shape) < 3 or up.dim() < 2 or up.shape[0] != weight_shape[0]:
        return False
    rank = down.shape[0]
    return up.flatten(1).shape[1] == rank and down.flatten(1).shape[1] == weight_shape[1:].numel()


def _layer(module: nn.Module, component: str, module_path: str, source: str) -> nn.Module:
    try:
        layer = module.get_submodule(module_path)
    except AttributeError:
        layer = None
    if isinstance(layer, CastLinear) or (isinstance(layer, CastMixin) and layer.weight is not None and len(weight_shape(layer)) > 2):
        return layer
    raise LoraError(f"{source}: {component}.{module_path} is not a Linear layer of this MOVA {component}")


def _owner(module: nn.Module, component: str, param_path: str, source: str) -> Tuple[nn.Module, str]:
    """The module owning `param_path` (a layer of the ops factory, or a block's `modulation`) and the leaf name."""
    owner_path, _, leaf = param_path.rpartition(".")
    try:
        owner = module.get_submodule(owner_path) if owner_path else module
    except AttributeError:
        owner = None
    if not isinstance(owner, (CastMixin, Modulated)):
        raise LoraError(f"{source}: {component}.{param_path} is not a parameter this loader can patch")
    return owner, leaf


def clear(module: nn.Module) -> None:
    """Remove every attached LoRA adapter and delta from `module`."""
    for child in module.modules():
        if isinstance(child, CastLinear) and child.adapters:
            child.adapters = []
        if "deltas" in vars(child):
            del child.deltas  # back to the class default: none


def lora_components(weights: Iterable[LoraWeights]) -> Tuple[str, ...]:
    """Components touched by any of `weights`."""
    seen = {c for w in weights for c in w.components()}
    return tuple(c for c in LORA_COMPONENTS if c in seen)
