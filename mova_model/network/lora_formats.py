"""Community Wan LoRA files: which format a file is in, and which layer of the chosen expert(s) each key changes.

A Wan 2.x LoRA names the layers of one Wan DiT and no MOVA component, so the user says where it goes
(`expert` = high → `video_dit`, low → `video_dit_2`, both). Every key is resolved against the expert's own
parameter names (`lora_names.ComponentIndex`), whatever the prefix:

| format | keys (one layer) |
|---|---|
| ComfyUI native | `diffusion_model.blocks.0.self_attn.q.lora_A.weight` + `.lora_B.weight` (or `.lora_down` / `.lora_up`), optional `.alpha`; `.diff` (full delta of a weight, a norm weight or a `modulation` table), `.diff_b` (bias delta) |
| kohya / musubi-tuner | `lora_unet_blocks_0_self_attn_q.lora_down.weight` + `.lora_up.weight` + `.alpha`; Wan-Fun: `lora_unet__blocks_...` |
| diffusers / peft | `transformer.blocks.0.attn1.to_q.lora_A.weight` (`attn2.*`, `ffn.net.0.proj`, `ffn.net.2`, `proj_out`, ...); `base_model.model.` prefix, `.lora_A.default.weight` adapter names, `.lora_B.bias` |

Scale per layer, as ComfyUI core's `LoRAAdapter.calculate_weight`: `alpha / rank` with an `.alpha` (rank = rows of
the down matrix), else 1 (diffusers files and musubi-tuner's converted files, which bake alpha into the matrices).
`.diff` / `.diff_b` apply as `param + strength · diff` (ComfyUI's `diff` patch); a peft `.lora_B.bias` as a
bias delta times the layer's scale (peft's `LoraLayer`). LyCORIS types (LoHa, LoKr, OFT, GLoRA), DoRA, Tucker
cores and weight replacements are refused by name: their math is not implemented here.

Strict by default: a key that names no layer of the chosen expert(s), or has the wrong shape, refuses the file
(naming the first such keys and the detected format); `allow_partial` keeps what matches and lists the rest.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .lora_names import WAN_21_I2V_ONLY, ComponentIndex, LoraError, describe_layer, from_diffusers
from .ops import CastLinear

logger = logging.getLogger(__name__)

ROLES = (
    (re.compile(r"\.lora_down\.weight$"), "down"),
    (re.compile(r"\.lora_up\.weight$"), "up"),
    (re.compile(r"\.lora_A(?:\.[A-Za-z0-9_\-]+)?\.weight$"), "down"),
    (re.compile(r"\.lora_B(?:\.[A-Za-z0-9_\-]+)?\.weight$"), "up"),
    (re.compile(r"\.lora_B(?:\.[A-Za-z0-9_\-]+)?\.bias$"), "up_bias"),
    (re.compile(r"\.alpha$"), "alpha"),
    (re.compile(r"\.diff$"), "diff"),
    (re.compile(r"\.diff_b$"), "diff_b"),
)
UNSUPPORTED = (
    (re.compile(r"\.hada_(?:w1_a|w1_b|w2_a|w2_b|t1|t2)$"), "LoHa (LyCORIS)"),
    (re.compile(r"\.lokr_(?:w1|w2|w1_a|w1_b|w2_a|w2_b|t2)$"), "LoKr (LyCORIS)"),
    (re.compile(r"\.(?:oft_blocks|oft_diag|rescale)$"), "OFT / BOFT"),
    (re.compile(r"\.(?:a1|a2|b1|b2)\.weight$"), "GLoRA"),
    (re.compile(r"\.dora_scale$"), "DoRA (dora_scale)"),
    (re.compile(r"\.lora_mid\.weight$"), "LoCon with a Tucker core (lora_mid)"),
    (re.compile(r"\.(?:set_weight|w_norm|b_norm|reshape_weight)$"), "weight replacement (set_weight / w_norm / reshape_weight)"),
)


@dataclass(frozen=True)
class Family:
    """A key prefix. flat: layer names are written with `_` for `.` (kohya)."""

    prefix: str
    kind: str
    flat: bool


FAMILIES = (
    Family("lora_unet__", "kohya Wan-Fun", True),
    Family("lora_unet_", "kohya/musubi", True),
    Family("lycoris_", "LyCORIS naming (SimpleTuner)", True),
    Family("lora_transformer_", "OneTrainer", True),
    Family("model.diffusion_model.", "ComfyUI native", False),
    Family("diffusion_model.", "ComfyUI native", False),
    Family("base_model.model.", "peft", False),
    Family("transformer.", "diffusers", False),
    Family("", "ComfyUI native", False),
)
_DIFFUSERS_MARK = re.compile(r"(?:^|[._])(?:attn[12]|proj_out|condition_embedder|scale_shift_table|ffn[._]net)(?:[._]|$)")
_WAN_MARK = re.compile(r"(?:^|[._])(?:self_attn|cross_attn|head[._]head|modulation|text_embedding|time_embedding|"
                       r"time_projection|ffn[._][02])(?:[._]|$)")
_DIFFUSERS_I2V = ("add_k_proj", "add_v_proj", "norm_added_k", "image_embedder")
WAN_WIDTHS = {1536: "Wan 2.1 1.3B", 3072: "Wan 2.2 TI2V 5B", 5120: "Wan 14B"}
LISTED = 5
"""Problems named in a refusal; the rest are counted."""


@dataclass
class Key:
    key: str
    role: str
    family: Family
    name: str


@dataclass
class Resolved:
    """What a community file changes in one component layout (the same for each chosen expert).

    pairs: layer path -> (down, up); scales: layer path -> alpha/rank or 1; deltas: parameter path -> (tensor,
    factor) applied as `param + tensor · factor · strength`; skipped: (key, reason) left out by allow_partial.
    """

    format: str
    pairs: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    scales: Dict[str, float] = field(default_factory=dict)
    deltas: Dict[str, Tuple[torch.Tensor, float]] = field(default_factory=dict)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    used: int = 0


def role_of(key: str) -> Tuple[Optional[str], str]:
    """(role, key without the role suffix), or (None, key)."""
    for pattern, role in ROLES:
        match = pattern.search(key)
        if match:
            return role, key[: match.start()]
    return None, key


def unsupported_type(key: str) -> Optional[str]:
    for pattern, name in UNSUPPORTED:
        if pattern.search(key):
            return name
    return None


def family_of(name: str) -> Family:
    return next(f for f in FAMILIES if name.startswith(f.prefix))


def format_label(family: Family, naming: str) -> str:
    kind = "diffusers/peft" if (naming == "diffusers" and not family.flat) else family.kind
    if family.flat and naming == "diffusers":
        kind += " with diffusers layer names"
    prefix = f"prefix {family.prefix!r}" if family.prefix else "no prefix"
    return f"{kind} ({prefix})"


def refuse_unsupported(keys: Sequence[str], source: str) -> None:
    found: Dict[str, List[str]] = {}
    for key in keys:
        kind = unsupported_type(key)
        if kind:
            found.setdefault(kind, []).append(key)
    if found:
        parts = [f"{kind} ({len(k)} tensors, e.g. {k[0]!r})" for kind, k in found.items()]
        raise LoraError(f"{source}: {'; '.join(parts)}: this adapter type is not supported. The MOVA LoRA loader applies "
                        "LoRA pairs (lora_A/lora_B, lora_down/lora_up, with .alpha) and full deltas (.diff, .diff_b) "
                        "only; convert the file to a plain LoRA (e.g. by extraction) first")


def classify(keys: Sequence[str], source: str) -> Tuple[List[Key], List[Tuple[str, str]], str, Family]:
    """Sort the keys by role and prefix; refuse mixed formats. Returns (keys, unknown (key, reason), naming, family)."""
    refuse_unsupported(keys, source)
    parsed: List[Key] = []
    unknown: List[Tuple[str, str]] = []
    for key in keys:
        role, stem = role_of(key)
        if role is None:
            reason = ("lightx2v's `diff_m` modulation delta, which ComfyUI core does not load either" if key.endswith(".diff_m")
                      else "not a LoRA tensor name (expected .lora_A/.lora_B/.lora_down/.lora_up .weight, .alpha, .diff or .diff_b)")
            unknown.append((key, reason))
            continue
        family = family_of(stem)
        parsed.append(Key(key, role, family, stem[len(family.prefix):]))
    families = {k.family for k in parsed if k.family.prefix}
    if len(families) > 1:
        examples = [next(k.key for k in parsed if k.family == f) for f in sorted(families, key=lambda f: f.prefix)]
        raise LoraError(f"{source}: mixed LoRA formats in one file: "
                        + ", ".join(f"{f.kind} ({f.prefix!r}, e.g. {e!r})" for f, e in
                                    zip(sorted(families, key=lambda f: f.prefix), examples))
                        + "; a file must use one naming")
    if families and any(not k.family.prefix for k in parsed):
        family = families.pop()
        stray = [k for k in parsed if not k.family.prefix]
        unknown.extend((k.key, f"no {family.prefix!r} prefix like the file's other keys") for k in stray)
        parsed = [k for k in parsed if k.family.prefix]
    family = parsed[0].family if parsed else FAMILIES[-1]
    diffusers = [k.key for k in parsed if _DIFFUSERS_MARK.search(k.name)]
    wan = [k.key for k in parsed if _WAN_MARK.search(k.name)]
    if diffusers and wan:
        raise LoraError(f"{source}: mixed LoRA formats in one file: Wan layer names (e.g. {wan[0]!r}) and diffusers "
                        f"layer names (e.g. {diffusers[0]!r}); a file must use one naming")
    return parsed, unknown, "diffusers" if diffusers else "wan", family


def _unresolved_reason(name: str, index: ComponentIndex, naming: str, flat: bool) -> str:
    wan = (from_diffusers(name) or name) if naming == "diffusers" and not flat else name
    flat_name = wan.replace(".", "_")
    if any(tag.rstrip(".").replace(".", "_") in flat_name for tag in WAN_21_I2V_ONLY) or \
            any(tag in name for tag in _DIFFUSERS_I2V):
        return ("a Wan 2.1 image-to-video layer (its CLIP image branch); MOVA's experts, like Wan 2.2 A14B, have no "
                "such layer")
    block = re.match(r"^blocks[._](\d+)[._]", name)
    if block and int(block.group(1)) >= index.num_blocks:
        return f"block {block.group(1)}: {index.component} has blocks 0-{index.num_blocks - 1} (a LoRA for another Wan size?)"
    return f"no layer {name!r} in MOVA's {index.component}"


def _pair_problem(index: ComponentIndex, target: str, down: Tuple[int, ...], up: Tuple[int, ...]) -> Optional[str]:
    layer = index.layers.get(target)
    if layer is None:
        return f"{target} is a parameter, not a layer; a LoRA pair needs a Linear or convolution"
    weight = index.shapes.get(f"{target}.weight")
    if weight is None or len(weight) < 2:
        return f"{target} is a {describe_layer(layer)}, not a Linear or convolution"
    rank = down[0] if down else 0
    if len(up) < 2 or up[1] != rank or any(n != 1 for n in up[2:]):
        return f"lora_up {list(up)} and lora_down {list(down)} do not make a rank-{rank} pair"
    if len(down) == 2 and len(weight) > 2:  # a Linear-shaped pair on a convolution
        fits = up[0] == weight[0] and down[1] == int(torch.Size(weight[1:]).numel())
    else:
        fits = len(down) == len(weight) and up[0] == weight[0] and tuple(down[1:]) == tuple(weight[1:])
    if fits:
        return None
    wanted = f"{describe_layer(layer)}"
    reason = f"{index.component}.{target} is a {wanted}, the LoRA pair is {down[1]}->{up[0]}"
    if target == "patch_embedding" and down[1] != weight[1]:
        reason += (f": this LoRA's patch embedding takes {down[1]} input channels, MOVA's experts take {weight[1]} "
                   "(a Wan text-to-video LoRA, 16 latent channels, does not fit MOVA's image-to-video experts)")
    elif isinstance(layer, CastLinear) and index.width and down[1] in WAN_WIDTHS and down[1] != index.width:
        reason += f" (made for {WAN_WIDTHS[down[1]]}, width {down[1]}; this expert is {index.width} wide)"
    return reason


def _delta_problem(index: ComponentIndex, target: str, role: str, shape: Tuple[int, ...]) -> Optional[str]:
    param = index.param_of(target, "diff" if role == "diff" else "diff_b")
    if param is None:
        what = "weight" if role == "diff" else "bias"
        return f"{index.component}.{target} has no {what} to add a .{role} to"
    if tuple(index.shapes[param]) != tuple(shape):
        return f"{index.component}.{param} is {list(index.shapes[param])}, the .{role} is {list(shape)}"
    return None


def resolve(shapes: Mapping[str, Tuple[int, ...]], load: Callable[[str], torch.Tensor], indexes: Sequence[ComponentIndex],
            source: str, allow_partial: bool, where: str) -> Resolved:
    """Map every key of a community file onto the layers of `indexes` (one per chosen expert, same layout).

    shapes: key -> tensor shape (from the file header); load(key) reads one tensor (memory-mapped).
    """
    if not shapes:
        raise LoraError(f"{source}: the file holds no tensors")
    parsed, problems, naming, family = classify(list(shapes), source)
    label = format_label(family, naming)
    first = indexes[0]
    table = first.table(naming + ("_" if family.flat else ""))
    groups: Dict[str, Dict[str, str]] = {}
    for key in parsed:
        target = table.get(key.name)
        if target is None:
            problems.append((key.key, _unresolved_reason(key.name, first, naming, family.flat)))
            continue
        roles = groups.setdefault(target, {})
        if key.role in roles:
            problems.append((key.key, f"a second {key.role} tensor for {target} (also {roles[key.role]!r})"))
            continue
        roles[key.role] = key.key
    result = Resolved(format=label)
    for target, roles in sorted(groups.items()):
        _resolve_target(result, target, roles, shapes, load, indexes, problems)
    problems_out = report(problems, len(shapes), result.used, source, label, where, allow_partial)
    result.skipped = problems_out
    return result


def _resolve_target(result: Resolved, target: str, roles: Dict[str, str], shapes, load, indexes, problems) -> None:
    down_key, up_key = roles.get("down"), roles.get("up")
    pair_keys = [k for k in (down_key, up_key, roles.get("alpha"), roles.get("up_bias")) if k]
    if down_key or up_key:
        if not (down_key and up_key):
            missing = "lora_up/lora_B" if down_key else "lora_down/lora_A"
            problems.extend((k, f"{target} has no {missing} tensor") for k in pair_keys)
        else:
            reason = next((r for r in (_pair_problem(i, target, tuple(shapes[down_key]), tuple(shapes[up_key]))
                                       for i in indexes) if r), None)
            if reason is None and roles.get("up_bias"):
                reason = next((r for r in (_delta_problem(i, target, "diff_b", tuple(shapes[roles["up_bias"]]))
                                           for i in indexes) if r), None)
            if reason:
                problems.extend((k, reason) for k in pair_keys)
            else:
                down, up = load(down_key), load(up_key)
                scale = 1.0
                if roles.get("alpha"):
                    scale = float(load(roles["alpha"]).float().reshape(-1)[0]) / down.shape[0]
                result.pairs[target] = (down, up)
                result.scales[target] = scale
                if roles.get("up_bias"):
                    result.deltas[indexes[0].param_of(target, "diff_b")] = (load(roles["up_bias"]), scale)
                result.used += len(pair_keys)
    elif roles.get("alpha") or roles.get("up_bias"):
        problems.extend((roles[r], f"{target} has a .{r.replace('up_bias', 'lora_B.bias')} but no LoRA pair")
                        for r in ("alpha", "up_bias") if roles.get(r))
    for role in ("diff", "diff_b"):
        key = roles.get(role)
        if key is None:
            continue
        if role == "diff" and down_key and up_key:
            problems.append((key, f"{target} has both a LoRA pair and a .diff for its weight (ComfyUI would apply "
                                  "only the .diff)"))
            continue
        reason = next((r for r in (_delta_problem(i, target, role, tuple(shapes[key])) for i in indexes) if r), None)
        if reason:
            problems.append((key, reason))
            continue
        param = indexes[0].param_of(target, role)
        if param in result.deltas:  # a .diff_b beside a peft lora_B.bias: both add to the bias
            problems.append((key, f"{param} gets two bias deltas (.diff_b and .lora_B.bias)"))
            continue
        result.deltas[param] = (load(key), 1.0)
        result.used += 1


def report(problems: List[Tuple[str, str]], total: int, used: int, source: str, label: str, where: str,
           allow_partial: bool) -> List[Tuple[str, str]]:
    """Refuse the file when a key did not match (or nothing did); with allow_partial return the skipped keys."""
    if not problems:
        return []
    problems = sorted(problems)
    listing = describe_problems(problems)
    if used == 0:
        raise LoraError(f"{source}: {label} LoRA: none of its {total} tensors match {where} ({listing})")
    if not allow_partial:
        raise LoraError(f"{source}: {label} LoRA: {len(problems)} of {total} tensors do not match {where} ({listing}). "
                        f"Switch on allow_partial to load the {used} that match and skip these")
    logger.warning("%s: %s LoRA: skipped %d of %d tensors that do not match %s: %s", source, label, len(problems),
                   total, where, listing)
    return problems


def describe_problems(problems: Sequence[Tuple[str, str]], limit: int = LISTED) -> str:
    """The first `limit` keys, grouped by reason: `reason: key, key; reason: key; and N more`."""
    groups: Dict[str, List[str]] = {}
    for key, reason in problems[:limit]:
        groups.setdefault(reason, []).append(key)
    text = "; ".join(f"{', '.join(keys)}: {reason}" for reason, keys in groups.items())
    if len(problems) > limit:
        text += f"; and {len(problems) - limit} more"
    return text


def most_common_rank(pairs: Mapping[str, Tuple[torch.Tensor, torch.Tensor]]) -> int:
    counts = Counter(int(down.shape[0]) for down, _ in pairs.values())
    return counts.most_common(1)[0][0] if counts else 1
