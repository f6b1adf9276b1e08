"""Cheap checks of a component's `config.json` against its tensor headers, run before any module is built.

What a component must contain is derived by building its module on the meta device from `config.json`
(`folder.component_layout`). That costs time and memory in proportion to the config's numbers, so a config
that does not match its tensors (`"num_layers": 1000000`) must be caught first, from arithmetic alone:

1. `header_problems`: numbers that the headers show directly (layer counts from the `blocks.<i>` indices,
   widths from the shapes of a few known tensors) compared with the config; the message names the key, the
   config's value and the value the files hold.
2. `bound_problems`: every architecture number within a sane range (generous around the released models).
3. `skeleton_limit`: while the module is built, the parameters and buffers it registers are counted; the
   build stops as soon as the skeleton is larger than the stored tensors could fill.
"""

from __future__ import annotations

import math
import re
import threading
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from torch import nn
from torch.nn.modules.module import (register_module_buffer_registration_hook,
                                     register_module_parameter_registration_hook)

from .weights import Problem, SafetensorsStore

LAYERS = (1, 1024)
WIDTH = (1, 131072)
HEADS = (1, 1024)

ARCHITECTURE_BOUNDS: Dict[str, Dict[str, Tuple[int, int]]] = {
    "video_dit": {"dim": WIDTH, "in_dim": (1, 4096), "ffn_dim": (1, 4 * WIDTH[1]), "out_dim": (1, 4096),
                  "text_dim": WIDTH, "freq_dim": WIDTH, "num_heads": HEADS, "num_layers": LAYERS, "patch_size": (1, 64)},
    "dual_tower_bridge": {"visual_layers": LAYERS, "audio_layers": LAYERS, "visual_hidden_dim": WIDTH,
                          "audio_hidden_dim": WIDTH, "head_dim": (1, 4096)},
    "text_encoder": {"d_model": WIDTH, "d_ff": (1, 4 * WIDTH[1]), "d_kv": (1, 4096), "num_heads": HEADS,
                     "num_layers": LAYERS, "vocab_size": (1, 4_000_000),
                     "relative_attention_num_buckets": (1, 4096)},
    "video_vae": {"z_dim": (1, 1024), "base_dim": (1, 4096), "num_res_blocks": (1, 64), "dim_mult": (1, 64),
                  "in_channels": (1, 64), "out_channels": (1, 64)},
    "audio_vae": {"encoder_dim": (1, 4096), "decoder_dim": (1, 65536), "latent_dim": (1, 4096),
                  "encoder_rates": (1, 1024), "decoder_rates": (1, 1024), "sample_rate": (1, 768_000)},
}
"""Component -> key -> (lowest, highest) allowed value (each entry of a list key). The released MOVA models use
at most 40 layers, width 5120, FFN 13824, a 256,384-token vocabulary."""
ARCHITECTURE_BOUNDS["video_dit_2"] = ARCHITECTURE_BOUNDS["video_dit"]
ARCHITECTURE_BOUNDS["audio_dit"] = ARCHITECTURE_BOUNDS["video_dit"]
MAX_LIST_LENGTH = 16


def config_values(config) -> Dict[str, Any]:
    """Every key of a parsed config as in its file (the whole file for configs handed to a library)."""
    raw = getattr(config, "raw", None)
    return {**config.to_dict(), **raw} if raw else config.to_dict()


def _problem(component: str, key: str, message: str, expected: Any, found: Any, file: Optional[str]) -> Problem:
    return Problem(component, message, key=key, expected=str(expected), found=str(found), file=file)


def bound_problems(component: str, config: Dict[str, Any], source: Optional[str] = None) -> List[Problem]:
    """Every architecture number of `config` (a parsed `config.json`) outside `ARCHITECTURE_BOUNDS`."""
    problems = []
    for key, (low, high) in ARCHITECTURE_BOUNDS.get(component, {}).items():
        if config.get(key) is None:
            continue
        value = config[key]
        values = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)) and len(value) > MAX_LIST_LENGTH:
            problems.append(_problem(component, key, f"config.json {key} has too many entries",
                                     f"at most {MAX_LIST_LENGTH}", len(value), source))
            continue
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                problems.append(_problem(component, key, f"config.json {key} is outside the range a MOVA "
                                         "architecture can have", f"an integer in {low}..{high}", value, source))
                break
    return problems


# --------------------------------------------------------------------------------------------------------------
# numbers the headers show


def _indices(store: SafetensorsStore, prefix: str) -> List[int]:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for key in store.tensors if (m := pattern.match(key))})


def _shape(store: SafetensorsStore, *keys: str) -> Optional[Tuple[int, ...]]:
    """Shape of the first of `keys` that is stored (a weight-norm `weight_v` stands for its `weight`)."""
    for key in keys:
        for candidate in (key, key + "_v") if key.endswith(".weight") else (key,):
            if candidate in store.tensors:
                return store.tensors[candidate].shape
    return None


Fact = Tuple[str, Any, Any, str]
"""(config key, value the config implies, value the headers show, which tensor shows it)."""


def _count(store: SafetensorsStore, prefix: str) -> Optional[Tuple[int, str]]:
    found = _indices(store, prefix)
    if not found:
        return None
    return len(found), f"the files hold {len(found)} {prefix} ({prefix}.{found[0]} .. {prefix}.{found[-1]})"


def _dim(store: SafetensorsStore, axis: int, *keys: str) -> Optional[Tuple[int, str]]:
    shape = _shape(store, *keys)
    if shape is None or len(shape) <= axis:
        return None
    return int(shape[axis]), f"{keys[0]} has shape {list(shape)}"


def _dit_facts(config: Dict[str, Any], store: SafetensorsStore) -> Iterator[Tuple[str, Any, Optional[Tuple[Any, str]]]]:
    patch = config.get("patch_size") or []
    patch_volume = math.prod(patch) if all(isinstance(p, int) for p in patch) else None
    yield "num_layers", config.get("num_layers"), _count(store, "blocks")
    yield "dim", config.get("dim"), _dim(store, 0, "patch_embedding.weight")
    yield "in_dim", config.get("in_dim"), _dim(store, 1, "patch_embedding.weight")
    shape = _shape(store, "patch_embedding.weight")
    if shape is not None and len(shape) > 2:
        yield "patch_size", list(patch), (list(shape[2:]), f"patch_embedding.weight has shape {list(shape)}")
    head = _dim(store, 0, "head.head.weight")
    if head is not None and patch_volume and head[0] % patch_volume == 0:
        yield "out_dim", config.get("out_dim"), (head[0] // patch_volume, head[1] + f" (out_dim x {patch_volume})")
    yield "ffn_dim", config.get("ffn_dim"), _dim(store, 0, "blocks.0.ffn.0.weight")
    yield "text_dim", config.get("text_dim"), _dim(store, 1, "text_embedding.0.weight")
    yield "freq_dim", config.get("freq_dim"), _dim(store, 1, "time_embedding.0.weight")


def _bridge_facts(config: Dict[str, Any], store: SafetensorsStore):
    from ..network.bridge import interaction_layers

    a2v, v2a = _indices(store, "audio_to_video_conditioners"), _indices(store, "video_to_audio_conditioners")
    yield "visual_hidden_dim", config.get("visual_hidden_dim"), _dim(
        store, 0, f"audio_to_video_conditioners.{a2v[0] if a2v else 0}.inner.q.weight")
    yield "audio_hidden_dim", config.get("audio_hidden_dim"), _dim(
        store, 0, f"video_to_audio_conditioners.{v2a[0] if v2a else 0}.inner.q.weight")
    visual, audio = config.get("visual_layers"), config.get("audio_layers")
    if a2v and all(isinstance(v, int) and LAYERS[0] <= v <= LAYERS[1] for v in (visual, audio)):
        try:
            expected = len(interaction_layers(config.get("interaction_strategy", "shallow_focus"), visual, audio))
        except ValueError:
            return
        yield ("visual_layers/audio_layers", f"{expected} interacting layers ({visual}/{audio}, "
               f"{config.get('interaction_strategy', 'shallow_focus')})",
               (len(a2v), f"{len(a2v)} audio_to_video_conditioners in the weight files"))


def _text_encoder_facts(config: Dict[str, Any], store: SafetensorsStore):
    embed = ("shared.weight", "encoder.embed_tokens.weight")
    yield "num_layers", config.get("num_layers"), _count(store, "encoder.block")
    yield "vocab_size", config.get("vocab_size"), _dim(store, 0, *embed)
    yield "d_model", config.get("d_model"), _dim(store, 1, *embed)
    ffn = "encoder.block.0.layer.1.DenseReluDense."
    yield "d_ff", config.get("d_ff"), _dim(store, 0, ffn + "wi_0.weight", ffn + "wi.weight")
    heads, d_kv = config.get("num_heads"), config.get("d_kv")
    if isinstance(heads, int) and isinstance(d_kv, int):
        yield ("num_heads x d_kv", heads * d_kv,
               _dim(store, 0, "encoder.block.0.layer.0.SelfAttention.q.weight"))


def _video_vae_facts(config: Dict[str, Any], store: SafetensorsStore):
    yield "z_dim", config.get("z_dim"), _dim(store, 0, "post_quant_conv.weight")
    yield "base_dim", config.get("base_dim"), _dim(store, 0, "encoder.conv_in.weight")


def _audio_vae_facts(config: Dict[str, Any], store: SafetensorsStore):
    yield "encoder_dim", config.get("encoder_dim"), _dim(store, 0, "encoder.block.0.weight")
    yield "decoder_dim", config.get("decoder_dim"), _dim(store, 0, "decoder.model.0.weight")


FACTS: Dict[str, Callable[[Dict[str, Any], SafetensorsStore], Iterator]] = {
    "video_dit": _dit_facts, "video_dit_2": _dit_facts, "audio_dit": _dit_facts,
    "dual_tower_bridge": _bridge_facts, "text_encoder": _text_encoder_facts,
    "video_vae": _video_vae_facts, "audio_vae": _audio_vae_facts,
}


def header_problems(component: str, config: Dict[str, Any], store: SafetensorsStore,
                    source: Optional[str] = None) -> List[Problem]:
    """Config numbers that disagree with what the tensor headers show (headers only, no module built)."""
    facts = FACTS.get(component)
    if facts is None or not store.tensors:
        return []
    problems = []
    for key, wanted, seen in facts(config, store):
        if seen is None or wanted is None:
            continue
        found, evidence = seen
        expected_n = int(wanted.split()[0]) if isinstance(wanted, str) else wanted
        if expected_n != found:
            problems.append(Problem(component, f"config.json {key} does not match the weight files: {evidence}",
                                    key=key, expected=f"{wanted} (config.json)", found=f"{found} (weights)",
                                    file=source))
    return problems


def config_problems(component: str, config: Dict[str, Any], store: SafetensorsStore,
                    source: Optional[str] = None) -> List[Problem]:
    """`header_problems`, then `bound_problems` for what the headers could not show (each key reported once)."""
    problems = header_problems(component, config, store, source)
    named = {p.key for p in problems}
    return problems + [p for p in bound_problems(component, config, source) if p.key not in named]


# --------------------------------------------------------------------------------------------------------------
# the skeleton guard


class SkeletonTooLarge(ValueError):
    """The module a config describes is larger than the stored tensors could fill."""


SKELETON_FACTOR = 3
"""How many times the stored tensors (count and elements) a skeleton may register while it is built: builders
register some tensors twice (the text encoder's Linears are built by transformers, then swapped for ops
layers), a weight-norm pair stores one weight as two tensors, non-persistent buffers are not stored."""
SKELETON_SLACK = 256


@contextmanager
def skeleton_limit(component: str, store: SafetensorsStore, source: Optional[str] = None) -> Iterator[None]:
    """Stop a module build (in this thread) as soon as it registers more parameters and buffers, in count or
    in elements, than `SKELETON_FACTOR` x what `store` holds: raises `SkeletonTooLarge`."""
    stored_elements = sum(info.numel for info in store.tensors.values())
    max_tensors = SKELETON_FACTOR * len(store.tensors) + SKELETON_SLACK
    max_elements = SKELETON_FACTOR * stored_elements + SKELETON_SLACK ** 2
    thread = threading.get_ident()
    seen = [0, 0]

    def on_tensor(module: nn.Module, name: str, tensor) -> None:
        if tensor is None or threading.get_ident() != thread:
            return
        seen[0] += 1
        seen[1] += tensor.numel()
        if seen[0] > max_tensors or seen[1] > max_elements:
            raise SkeletonTooLarge(
                f"the module config.json describes is larger than the weight files can fill (stopped "
                f"building it at {seen[0]} tensors / {seen[1]:,} elements; the files hold {len(store.tensors)} "
                f"tensors / {stored_elements:,} elements): check {source or 'config.json'}")

    handles = [register_module_parameter_registration_hook(on_tensor),
               register_module_buffer_registration_hook(on_tensor)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
