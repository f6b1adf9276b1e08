"""The LoRA being trained: fp32 `nn.Parameter` pairs attached to the frozen model's Linear layers.

The pairs are attached as ordinary `LoraAdapter`s of `mova_model.network.ops.CastLinear` (the same term the
sampler adds: `W x + b + B(A x)·alpha/rank`, the official `LoRALinear` forward), so training reuses the
model code unchanged. Initialisation mirrors the official `LoRALinear`: A with `kaiming_uniform_(a=√5)`,
B zero. Keys are the official ones: `"{component}.{path}.lora_A.weight"` [rank, in] and `.lora_B.weight`
[out, rank], which the LoRA loader (`mova_model.network.lora.load_lora`) reads back unchanged.
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..network.lora import LoraError, LoraWeights
from ..network.ops import CastLinear, LoraAdapter
from .targets import LoraTargets, TRAINABLE_COMPONENTS, linear_shapes


class TrainableLora(nn.Module):
    """LoRA pairs for the train components; `pairs["video_dit.blocks.0.self_attn.q"] = (A, B)` parameters.

    shapes: `{component: {path: (in, out)}}` from `TargetSpec.select` on each component (meta modules are
    enough). Parameters live in fp32 on `device` regardless of the base weights' storage.
    """

    def __init__(self, shapes: Mapping[str, Mapping[str, Tuple[int, int]]], rank: int, alpha: float,
                 targets: LoraTargets, device: torch.device | str = "cpu") -> None:
        super().__init__()
        if int(rank) < 1:
            raise LoraError(f"LoRA rank must be at least 1, got {rank}")
        self.rank, self.alpha, self.targets = int(rank), float(alpha), targets
        self.down = nn.ParameterDict()
        self.up = nn.ParameterDict()
        self.index: Dict[str, Tuple[str, str]] = {}
        for component in TRAINABLE_COMPONENTS:
            for path, (fan_in, fan_out) in (shapes.get(component) or {}).items():
                key = f"{component}.{path}"
                slot = key.replace(".", "__")
                self.down[slot] = nn.Parameter(torch.zeros(self.rank, fan_in, device=device))
                self.up[slot] = nn.Parameter(torch.zeros(fan_out, self.rank, device=device))
                self.index[key] = (component, path)

    @classmethod
    def for_modules(cls, modules: Mapping[str, nn.Module], rank: int, alpha: float, targets: LoraTargets,
                    device: torch.device | str = "cpu") -> "TrainableLora":
        """Select the target layers in each `{component: module}` and make zero pairs for them."""
        shapes = {name: linear_shapes(module, targets.select(module)) for name, module in modules.items()}
        if not any(shapes.values()):
            raise LoraError(f"LoRA targets {targets.describe()!r} match no Linear layer in {', '.join(modules)}")
        return cls(shapes, rank, alpha, targets, device)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def keys(self) -> List[str]:
        """Module keys `"component.path"` in the official (sorted) order."""
        return sorted(self.index)

    def components(self) -> Tuple[str, ...]:
        seen = {c for c, _ in self.index.values()}
        return tuple(c for c in TRAINABLE_COMPONENTS if c in seen)

    def pair(self, key: str) -> Tuple[nn.Parameter, nn.Parameter]:
        slot = key.replace(".", "__")
        return self.down[slot], self.up[slot]

    def named_lora_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        """`("video_dit.blocks.0.self_attn.q.lora_A.weight", A)`, then B, for every key in sorted order."""
        for key in self.keys():
            down, up = self.pair(key)
            yield f"{key}.lora_A.weight", down
            yield f"{key}.lora_B.weight", up

    def lora_parameters(self, components: Optional[Sequence[str]] = None) -> List[nn.Parameter]:
        out = []
        for key in self.keys():
            if components is None or self.index[key][0] in components:
                out.extend(self.pair(key))
        return out

    @torch.no_grad()
    def reset_official(self, generator: Optional[torch.Generator] = None) -> None:
        """Official `LoRALinear` init: A ~ kaiming_uniform(a=√5) i.e. U(±1/√in), B = 0."""
        for key in self.keys():
            down, up = self.pair(key)
            bound = 1.0 / math.sqrt(down.shape[1])
            down.copy_(torch.rand(down.shape, generator=generator) * (2 * bound) - bound)
            up.zero_()

    @torch.no_grad()
    def load_pairs(self, tensors: Mapping[str, torch.Tensor], strict: bool = True) -> int:
        """Copy `"<key>.lora_A.weight"` / `.lora_B.weight` tensors in; returns how many pairs were loaded."""
        loaded = 0
        for key in self.keys():
            down, up = self.pair(key)
            a, b = tensors.get(f"{key}.lora_A.weight"), tensors.get(f"{key}.lora_B.weight")
            if a is None or b is None:
                if strict:
                    raise LoraError(f"no LoRA pair for {key}")
                continue
            if tuple(a.shape) != tuple(down.shape) or tuple(b.shape) != tuple(up.shape):
                raise LoraError(f"{key}: LoRA pair is {list(a.shape)}/{list(b.shape)}, "
                                f"expected {list(down.shape)}/{list(up.shape)} (rank {self.rank})")
            down.copy_(a)
            up.copy_(b)
            loaded += 1
        return loaded

    def load_weights(self, weights: LoraWeights) -> int:
        """Continue from an existing LoRA (same rank and targets); returns the pairs it covered."""
        if weights.scales or weights.deltas:
            raise LoraError(f"{weights.source}: a {weights.format} LoRA (per-layer scales or full deltas) cannot seed "
                            "training; continue from a MOVA LoRA of the same rank and targets")
        if weights.rank != self.rank:
            raise LoraError(f"{weights.source}: rank {weights.rank} differs from the training rank {self.rank}")
        flat = {}
        for component, modules in weights.pairs.items():
            for path, (a, b) in modules.items():
                flat[f"{component}.{path}.lora_A.weight"] = a
                flat[f"{component}.{path}.lora_B.weight"] = b
        unknown = sorted({k.rsplit(".lora_", 1)[0] for k in flat} - set(self.index))
        if unknown:
            raise LoraError(f"{weights.source}: holds layers outside the training targets, e.g. {unknown[0]}")
        count = self.load_pairs(flat, strict=False)
        if count == 0:
            raise LoraError(f"{weights.source}: no layer in common with the training targets")
        return count

    def attach(self, component: str, module: nn.Module) -> int:
        """Add this LoRA's adapters (scale alpha/rank) to `module`'s layers, after any already there."""
        count = 0
        for key in self.keys():
            owner, path = self.index[key]
            if owner != component:
                continue
            layer = module.get_submodule(path)
            if not isinstance(layer, CastLinear):
                raise LoraError(f"{key} is not a Linear layer of this {component}")
            down, up = self.pair(key)
            layer.adapters.append(LoraAdapter(down, up, self.scaling))
            count += 1
        return count

    def detach_from(self, module: nn.Module) -> None:
        """Remove this LoRA's adapters from `module` (others stay)."""
        mine = {id(p) for p in self.parameters()}
        for child in module.modules():
            if isinstance(child, CastLinear) and child.adapters:
                child.adapters = [a for a in child.adapters if id(a.down) not in mine]

    def to_weights(self, source: str = "trained") -> LoraWeights:
        """A detached copy as `LoraWeights` (what the LoRA loader and `LoraPatchSet` use)."""
        pairs: Dict[str, Dict[str, Tuple[torch.Tensor, torch.Tensor]]] = {}
        for key in self.keys():
            component, path = self.index[key]
            down, up = self.pair(key)
            pairs.setdefault(component, {})[path] = (down.detach().float().cpu().clone(), up.detach().float().cpu().clone())
        return LoraWeights(pairs=pairs, rank=self.rank, alpha=self.alpha, source=source)

    def state_tensors(self) -> Dict[str, torch.Tensor]:
        """Official-key tensors, detached fp32 CPU copies."""
        return {name: p.detach().float().cpu().contiguous().clone() for name, p in self.named_lora_parameters()}
