"""One random Wan LoRA for the tiny checkpoint's video expert, written in every naming people publish, and the
reference it must equal: the same deltas merged into the expert's weights by ComfyUI's formula
(`comfy.lora.calculate_weight`: `W += strength · alpha/rank · up @ down`, `param += strength · diff`).

The files are built here from the layer list, independently of the loader under test.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Tuple

import torch
from safetensors.torch import load_file, save_file

PAIR_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
TOP_TARGETS = ("text_embedding.0", "time_projection.1", "head.head", "patch_embedding")
DIFFUSERS = {"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
             "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
             "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "ffn.0": "ffn.net.0.proj",
             "ffn.2": "ffn.net.2", "text_embedding.0": "condition_embedder.text_embedder.linear_1",
             "time_projection.1": "condition_embedder.time_proj", "head.head": "proj_out",
             "patch_embedding": "patch_embedding"}
# (parameter path, file suffix): full deltas. Modulation tables have no `.weight`, so only the dotted namings
# (ComfyUI's generic `diffusion_model.<param>` key) reach them; kohya's `lora_unet_` keys exist for `.weight`
# parameters only (ComfyUI's `model_lora_keys_unet`).
DIFFS = (("blocks.0.norm3.weight", "diff"), ("blocks.0.norm3.bias", "diff_b"), ("blocks.1.self_attn.norm_q.weight", "diff"),
         ("blocks.0.self_attn.q.bias", "diff_b"), ("blocks.1.ffn.2.bias", "diff_b"),
         ("blocks.2.modulation", "diff"), ("head.modulation", "diff"))
DIFF_ONLY_TARGET = "blocks.2.cross_attn.o.weight"
"""A Linear weight with a full 2-D `.diff` and no pair (ComfyUI applies only the `.diff` where both are given)."""

FORMATS = ("comfy_lora_AB", "comfy_down_up", "comfy_unprefixed", "kohya", "wan_fun", "musubi_baked", "diffusers", "peft")
COMFY_CORE_FORMATS = ("comfy_lora_AB", "comfy_down_up", "kohya", "wan_fun", "musubi_baked")
"""The namings ComfyUI 0.3.75 core itself loads for a Wan model (`diffusion_model.` and `lora_unet_` keys)."""


@dataclass
class WanLora:
    """pairs: Wan layer path -> (down, up, alpha); deltas: parameter path -> tensor."""

    pairs: Dict[str, Tuple[torch.Tensor, torch.Tensor, float]]
    deltas: Dict[str, torch.Tensor] = field(default_factory=dict)


def random_wan_lora(shapes: Dict[str, Tuple[int, ...]], seed: int = 0, rank: int = 4, with_deltas: bool = True,
                    num_blocks: int = 3) -> WanLora:
    """A LoRA on every block Linear, the text/time embeddings, the head and the patch embedding (a conv pair),
    with per-layer alphas, plus full deltas (`DIFFS`, `DIFF_ONLY_TARGET`). shapes: the expert's parameter shapes."""
    g = torch.Generator().manual_seed(seed)
    pairs = {}
    targets = [f"blocks.{b}.{t}" for b in range(num_blocks) for t in PAIR_TARGETS] + list(TOP_TARGETS)
    for i, target in enumerate(targets):
        if target + ".weight" == DIFF_ONLY_TARGET:
            continue
        weight = shapes[target + ".weight"]
        fan_in = int(torch.Size(weight[1:]).numel())
        down = torch.randn(rank, *weight[1:], generator=g) / fan_in ** 0.5
        up = torch.randn(weight[0], rank, *([1] * (len(weight) - 2)), generator=g) * 0.3
        pairs[target] = (down, up, float(rank * (0.5 + (i % 3))))  # alpha/rank = 0.5, 1.5, 2.5
    deltas = {}
    if with_deltas:
        for param, _ in DIFFS:
            deltas[param] = torch.randn(shapes[param], generator=g) * 0.05
        deltas[DIFF_ONLY_TARGET] = torch.randn(shapes[DIFF_ONLY_TARGET], generator=g) * 0.05
    return WanLora(pairs, deltas)


def _delta_keys(param: str) -> Tuple[str, str]:
    """(owner, suffix) of a delta: `x.weight` -> (x, diff), `x.bias` -> (x, diff_b), `x.modulation` -> (x.modulation, diff)."""
    owner, _, leaf = param.rpartition(".")
    return {"weight": (owner, "diff"), "bias": (owner, "diff_b")}.get(leaf, (param, "diff"))


def write(lora: WanLora, path: Path, fmt: str) -> WanLora:
    """Write `lora` in naming `fmt`; returns what that file carries (its reference)."""
    tensors: Dict[str, torch.Tensor] = {}
    deltas = {}
    flat = fmt in ("kohya", "wan_fun")
    prefix = {"comfy_lora_AB": "diffusion_model.", "comfy_down_up": "diffusion_model.", "comfy_unprefixed": "",
              "kohya": "lora_unet_", "wan_fun": "lora_unet__", "musubi_baked": "diffusion_model.",
              "diffusers": "transformer.", "peft": "base_model.model."}[fmt]
    diffusers = fmt in ("diffusers", "peft")

    def name(target: str) -> str:
        if diffusers:
            block, sep, rest = target.partition(".") if target.startswith("blocks.") else ("", "", target)
            if block:
                number, _, layer = rest.partition(".")
                return f"blocks.{number}.{DIFFUSERS[layer]}"
            return DIFFUSERS[target]
        return target.replace(".", "_") if flat else target

    down_suffix, up_suffix = {"comfy_down_up": (".lora_down.weight", ".lora_up.weight"),
                              "kohya": (".lora_down.weight", ".lora_up.weight"),
                              "wan_fun": (".lora_down.weight", ".lora_up.weight"),
                              "peft": (".lora_A.default.weight", ".lora_B.default.weight")}.get(
        fmt, (".lora_A.weight", ".lora_B.weight"))
    baked = fmt in ("musubi_baked", "diffusers", "peft")
    for target, (down, up, alpha) in lora.pairs.items():
        key = prefix + name(target)
        if baked:  # musubi-tuner's conversion: sqrt(alpha/rank) into both matrices, no alpha
            root = (alpha / down.shape[0]) ** 0.5
            tensors[key + down_suffix], tensors[key + up_suffix] = down * root, up * root
        else:
            tensors[key + down_suffix], tensors[key + up_suffix] = down, up
            tensors[key + ".alpha"] = torch.tensor(alpha)
    for param, value in lora.deltas.items():
        owner, suffix = _delta_keys(param)
        if diffusers or (flat and not param.endswith((".weight", ".bias"))):
            continue
        tensors[f"{prefix}{name(owner)}.{suffix}"] = value
        deltas[param] = value
    if fmt == "peft":  # peft's lora_B bias: a bias delta times the layer's scale (1: no alpha)
        bias = torch.randn(lora.pairs["blocks.0.ffn.0"][1].shape[0], generator=torch.Generator().manual_seed(9)) * 0.05
        tensors[f"{prefix}{name('blocks.0.ffn.0')}.lora_B.default.bias"] = bias
        deltas["blocks.0.ffn.0.bias"] = bias
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"ss_network_dim": "4", "note": fmt})
    return WanLora(lora.pairs, deltas)


def merge_state(state: Dict[str, torch.Tensor], lora: WanLora, strength: float = 1.0) -> Dict[str, torch.Tensor]:
    """ComfyUI's merge of `lora` into an expert state dict (fp32)."""
    out = dict(state)
    for target, (down, up, alpha) in lora.pairs.items():
        weight = out[target + ".weight"]
        diff = torch.mm(up.flatten(1).float(), down.flatten(1).float()).reshape(weight.shape)
        out[target + ".weight"] = weight + (strength * alpha / down.shape[0]) * diff
    for param, value in lora.deltas.items():
        out[param] = out[param] + strength * value.to(out[param].dtype)
    return out


def merged_checkpoint(src: Path, dst: Path, merges: Dict[str, Dict[str, torch.Tensor]]) -> Path:
    """Copy the checkpoint folder `src` to `dst`, replacing the given tensors per component (`merges[component]`)."""
    shutil.copytree(src, dst)
    for component, tensors in merges.items():
        for file in sorted((dst / component).glob("*.safetensors")):
            state = load_file(str(file))
            state.update({k: v.contiguous() for k, v in tensors.items() if k in state})
            save_file(state, str(file))
    return dst


def expert_state(checkpoint_dir: Path, component: str) -> Dict[str, torch.Tensor]:
    state = {}
    for file in sorted((checkpoint_dir / component).glob("*.safetensors")):
        state.update(load_file(str(file)))
    return state


def shapes_of(state: Dict[str, torch.Tensor]) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def only(lora: WanLora, keep: Iterable[str]) -> WanLora:
    keep = set(keep)
    return WanLora({k: v for k, v in lora.pairs.items() if k in keep}, {k: v for k, v in lora.deltas.items() if k in keep})
