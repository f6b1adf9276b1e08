"""What a checkpoint folder's DiT files store, measured from their headers, for the memory planner.

A GGUF file is rarely one type throughout: llama.cpp's "Q4_K_M" keeps some matrices in Q6_K, community files
keep norms, modulation and embeddings in F32. So for components read from GGUF the planner takes the bytes per
parameter of the streamed modules (video blocks, audio blocks, each bridge direction) and the bytes of the
towers' embeddings and heads from the tensor table itself, and labels the weights by the file's main
quantized type (`gguf:Q4_K`). Headers only; no weight is read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

from ..checkpoint.gguf_store import GGUFStore, open_store, weight_format
from ..network.gguf_dequant import GGUF_QUANT_SIZES

STREAMED_PREFIXES: Dict[str, Tuple[str, str]] = {
    "video": ("video_dit", "blocks."),
    "audio": ("audio_dit", "blocks."),
    "a2v": ("dual_tower_bridge", "audio_to_video_conditioners."),
    "v2a": ("dual_tower_bridge", "video_to_audio_conditioners."),
}
"""Planner module kind -> (component, key prefix of its streamed modules)."""

GGUF_COMPONENTS = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge", "text_encoder")


@dataclass
class StoredWeights:
    """`weights` / `stored` / `bytes_per_param` / `stem_bytes` for `PlanInputs`, and the GGUF types per component."""

    weights: str = "bf16"
    stored: str = "bf16"
    bytes_per_param: Tuple[Tuple[str, float], ...] = ()
    stem_bytes: Optional[float] = None
    types: Dict[str, Counter] = field(default_factory=dict)

    def describe(self) -> str:
        """One line per GGUF component: `video_dit: GGUF Q4_K x360, Q6_K x40, F32 x620` (empty when none)."""
        return "\n".join(f"{name}: GGUF " + ", ".join(f"{t} x{n}" for t, n in counts.most_common())
                         for name, counts in self.types.items())


def _ratio(store, prefix: str) -> Optional[float]:
    infos = [info for key, info in store.tensors.items() if key.startswith(prefix)]
    params = sum(info.numel for info in infos)
    return sum(info.nbytes for info in infos) / params if params else None


def _main_type(stores: Iterable[GGUFStore]) -> str:
    """The quantized type holding the most parameters of the video experts' blocks ("mixed" when none is)."""
    weights: Counter = Counter()
    for store in stores:
        for key, info in store.tensors.items():
            if key.startswith("blocks.") and info.dtype in GGUF_QUANT_SIZES:
                weights[info.dtype] += info.numel
    return weights.most_common(1)[0][0] if weights else "mixed"


def stored_weights(root: Path, stores: Optional[Dict[str, object]] = None) -> StoredWeights:
    """Measure the DiT files of checkpoint `root` (or the already opened `stores` by component name)."""
    root = Path(root)
    stores = dict(stores or {})
    gguf: Dict[str, GGUFStore] = {}
    for name in GGUF_COMPONENTS:
        store = stores.get(name)
        if store is None and weight_format(root / name) == "gguf":
            store = open_store(root / name, name)
        if isinstance(store, GGUFStore) and store.tensors:
            gguf[name] = store
    result = StoredWeights(types={name: store.types() for name, store in gguf.items()})
    if "video_dit" not in gguf and "video_dit_2" not in gguf:
        return result

    def store_of(component: str):  # GGUF, or the safetensors headers of a component stored as before
        if component in gguf:
            return gguf[component]
        if stores.get(component) is None:
            stores[component] = open_store(root / component, component)
        return stores[component]

    measured = []
    for kind, (component, prefix) in STREAMED_PREFIXES.items():
        candidates = [component] + (["video_dit_2"] if component == "video_dit" else [])
        ratios = [r for c in candidates if (r := _ratio(store_of(c), prefix))]
        if ratios:
            measured.append((kind, max(ratios)))  # the larger expert decides
    stem = 0.0
    for component in ("video_dit", "audio_dit"):
        options = [component] + (["video_dit_2"] if component == "video_dit" else [])
        stem += max(sum(i.nbytes for k, i in store_of(c).tensors.items() if not k.startswith("blocks."))
                    for c in options)
    label = _main_type(gguf[c] for c in ("video_dit", "video_dit_2") if c in gguf)
    result.weights, result.stored = f"gguf:{label}", "gguf"
    result.bytes_per_param, result.stem_bytes = tuple(measured), stem
    return result
