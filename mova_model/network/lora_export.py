"""Writing LoRAs for other tools: ComfyUI-native files per video expert, and the official MOVA format.

- `comfy_tensors(weights, component)`: one video expert's part in ComfyUI's native Wan naming,
  `diffusion_model.<layer>.lora_down.weight` [rank, in] / `.lora_up.weight` [out, rank] / `.alpha` (so that
  `alpha / rank` is the layer's scale, ComfyUI core's rule), deltas as `.diff` / `.diff_b`. ComfyUI core,
  other Wan loaders and this pack (`expert` = high / low) read it. A Wan 2.2 LoRA is a pair of such files,
  one per expert: `<name>_high_noise.safetensors` (`video_dit`) and `<name>_low_noise.safetensors` (`video_dit_2`).
- `official_weights(weights)`: every part under the official keys (`<component>.<layer>.lora_A.weight`) with one
  rank/alpha; per-layer scales that differ are folded into `lora_B` (exact when they are all equal).

`python -m mova_model lora-convert IN OUT --to comfy|official [--expert high|low|both] [--checkpoint DIR]
[--video-only]`. The input's safetensors metadata is kept (training notes, kohya `ss_*` fields); the output
records where it came from (`mova_converted_from`). Files are written atomically.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from safetensors.torch import save_file

from ..atomic_write import atomic_write
from ..checks import check_destination, existing_files
from ..cli_args import CliParser, refuse
from .lora import EXPERTS, OFFICIAL_FORMAT, LoraError, LoraWeights, load_lora, official_tensors
from .lora_formats import most_common_rank

logger = logging.getLogger(__name__)

COMFY_PREFIX = "diffusion_model."
EXPERT_SUFFIX = {"video_dit": "_high_noise", "video_dit_2": "_low_noise"}
"""File name suffixes of a Wan 2.2 pair (the convention of published high/low-noise LoRAs)."""
RELEASED_VIDEO_DIT = {
    "dim": 5120, "in_dim": 36, "ffn_dim": 13824, "out_dim": 16, "text_dim": 4096, "freq_dim": 256, "eps": 1e-6,
    "patch_size": [1, 2, 2], "num_heads": 40, "num_layers": 40, "has_image_input": False,
}
"""`video_dit/config.json` of MOVA-360p and MOVA-720p (identical; Wan 2.2 A14B): names and shapes for
`lora-convert` without `--checkpoint`."""


def _alpha_tensor(value: float) -> torch.Tensor:
    single = torch.tensor(value, dtype=torch.float32)
    return single if float(single) == value else torch.tensor(value, dtype=torch.float64)


def comfy_tensors(weights: LoraWeights, component: str) -> Dict[str, torch.Tensor]:
    """`component`'s pairs and deltas in ComfyUI's native Wan naming (see the module docstring)."""
    if component not in weights.components():
        raise LoraError(f"{weights.source}: has no {component} part")
    tensors: Dict[str, torch.Tensor] = {}
    for path, (down, up) in weights.pairs.get(component, {}).items():
        scale = weights.layer_scale(component, path)
        rank = int(down.shape[0])
        alpha = weights.alpha if (component not in weights.scales and rank == weights.rank) else scale * rank
        tensors[f"{COMFY_PREFIX}{path}.lora_down.weight"] = down.contiguous()
        tensors[f"{COMFY_PREFIX}{path}.lora_up.weight"] = up.contiguous()
        tensors[f"{COMFY_PREFIX}{path}.alpha"] = _alpha_tensor(float(alpha))
    for param, (tensor, factor) in weights.deltas.get(component, {}).items():
        owner, _, leaf = param.rpartition(".")
        key = {"weight": f"{owner}.diff", "bias": f"{owner}.diff_b"}.get(leaf, f"{param}.diff")
        value = tensor if factor == 1.0 else tensor * factor  # a peft lora_B.bias: its scale folded in
        tensors[COMFY_PREFIX + key] = value.contiguous()
    return tensors


def official_weights(weights: LoraWeights) -> LoraWeights:
    """`weights` under one rank/alpha (the official format); refuses deltas, which that format cannot hold."""
    count = sum(len(v) for v in weights.deltas.values())
    if count:
        raise LoraError(f"{weights.source}: {count} full-size deltas (.diff / .diff_b) do not fit the official MOVA format, "
                        "which holds LoRA pairs only; convert to comfy instead")
    conv = [f"{c}.{p}" for c, layers in weights.pairs.items() for p, (down, up) in layers.items()
            if down.dim() != 2 or up.dim() != 2]
    if conv:
        raise LoraError(f"{weights.source}: LoRA pairs on convolutions ({', '.join(conv[:3])}) do not fit the official "
                        "MOVA format, which holds Linear pairs only; convert to comfy instead")
    scales = {weights.layer_scale(c, p) for c, layers in weights.pairs.items() for p in layers}
    if not weights.scales:
        return LoraWeights(pairs=weights.pairs, rank=weights.rank, alpha=weights.alpha, source=weights.source,
                           metadata=dict(weights.metadata))
    all_pairs = {f"{c}.{p}": pair for c, layers in weights.pairs.items() for p, pair in layers.items()}
    rank = most_common_rank(all_pairs)
    if len(scales) == 1:
        return LoraWeights(pairs=weights.pairs, rank=rank, alpha=scales.pop() * rank, source=weights.source,
                           metadata=dict(weights.metadata))
    logger.info("%s: per-layer scales differ (%d values): folded into lora_B with alpha = rank", weights.source, len(scales))
    pairs = {c: {p: (down, up * weights.layer_scale(c, p)) for p, (down, up) in layers.items()}
             for c, layers in weights.pairs.items()}
    return LoraWeights(pairs=pairs, rank=rank, alpha=float(rank), source=weights.source, metadata=dict(weights.metadata))


def _metadata(weights: LoraWeights, extra: Mapping[str, str]) -> Dict[str, str]:
    meta = dict(weights.metadata)
    meta.setdefault("mova_converted_from", weights.format)
    meta.update(extra)
    return meta


def save_comfy(weights: LoraWeights, component: str, path: Path | str, metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write `component`'s part as a ComfyUI-native safetensors file (atomically); metadata kept."""
    tensors = comfy_tensors(weights, component)
    meta = _metadata(weights, dict(metadata or {}))
    meta.update({"format": "pt", "mova_lora_format": "comfy", "mova_component": component})
    return atomic_write(path, lambda temp: save_file(tensors, temp, metadata=meta))


def save_official(weights: LoraWeights, path: Path | str, metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write every part in the official MOVA keys, rank/alpha in the metadata (atomically); metadata kept."""
    official = official_weights(weights)
    meta = _metadata(weights, {})
    meta.update(metadata or {})
    meta.update({"rank": str(official.rank), "alpha": str(official.alpha), "format": "mova-lora"})
    tensors = official_tensors(official)
    return atomic_write(path, lambda temp: save_file(tensors, temp, metadata=meta))


def expert_paths(out: Path, components: Sequence[str], always_suffix: bool = False) -> Dict[str, Path]:
    """One component: `out` itself (unless `always_suffix`); otherwise `<stem>_high_noise<suffix>` for `video_dit`
    and `<stem>_low_noise<suffix>` for `video_dit_2`."""
    if len(components) == 1 and not always_suffix:
        return {components[0]: out}
    return {c: out.with_name(out.stem + EXPERT_SUFFIX[c] + out.suffix) for c in components}


def save_comfy_experts(weights: LoraWeights, out: Path | str, metadata: Optional[Mapping[str, str]] = None,
                       video_only: bool = False, always_suffix: bool = False) -> List[Path]:
    """The video experts' parts of `weights` as ComfyUI-native files (see `expert_paths`)."""
    out = Path(out)
    others = [c for c in weights.components() if c not in EXPERT_SUFFIX]
    if others and not video_only:
        raise LoraError(f"{weights.source}: has {', '.join(others)} parts, which a Wan (ComfyUI-native) LoRA cannot hold; "
                        "they would be left out (pass --video-only to accept that)")
    experts = [c for c in EXPERT_SUFFIX if c in weights.components()]
    if not experts:
        raise LoraError(f"{weights.source}: has no video expert part (video_dit / video_dit_2) to write for ComfyUI")
    if others:
        logger.info("%s: the %s part(s) stay in the MOVA file only (a Wan LoRA holds video layers)", weights.source,
                    ", ".join(others))
    return [save_comfy(weights, c, path, metadata) for c, path in expert_paths(out, experts, always_suffix).items()]


def _modules_for(checkpoint: Optional[str]):
    from ..checkpoint.configs import VideoDiTConfig
    from ..checkpoint.folder import MovaCheckpoint, build_meta_module

    if checkpoint:
        ckpt = MovaCheckpoint.open(Path(checkpoint))
        return lambda component: build_meta_module(component, ckpt.config(component))
    config = VideoDiTConfig.from_dict(dict(RELEASED_VIDEO_DIT), source="MOVA-360p/720p video_dit")

    def released(component: str):
        if component not in EXPERT_SUFFIX:
            logger.info("%s: not checked (no --checkpoint given; the released layout here covers the video experts)", component)
            return None
        return build_meta_module(component, config)

    return released


def _convert_outputs(weights: LoraWeights, out: Path, to: str) -> List[Path]:
    """The files `lora-convert ... --to <to>` writes for `weights` (checked for existing files first)."""
    if to == "official" or weights.format != OFFICIAL_FORMAT:
        return [out]
    return list(expert_paths(out, [c for c in EXPERT_SUFFIX if c in weights.components()] or ["video_dit"]).values())


def lora_convert_cli(argv: Optional[Sequence[str]] = None) -> int:
    """`lora-convert IN OUT --to comfy|official`: prints the written path(s), one per line; exit 2 on bad input."""
    p = CliParser(prog="python -m mova_model lora-convert",
                  description="Convert a LoRA between the official MOVA format and ComfyUI's native Wan naming.")
    p.add_argument("input", help="a LoRA in any supported format (.safetensors, or the official lora_weights.pt folder)")
    p.add_argument("output", help="the .safetensors to write (two video experts: <stem>_high_noise / _low_noise)")
    p.add_argument("--to", required=True, choices=("comfy", "official"))
    p.add_argument("--expert", default="both", choices=tuple(EXPERTS),
                   help="a Wan LoRA: which MOVA expert(s) it is for; an official file: which video parts to keep")
    p.add_argument("--checkpoint", default=None,
                   help="MOVA checkpoint folder to check names and shapes against (default: the released MOVA layout)")
    p.add_argument("--video-only", action="store_true", help="--to comfy: leave out audio DiT and bridge parts")
    p.add_argument("--allow-partial", action="store_true", help="keep the keys that match, list the rest")
    p.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    args = p.parse_or_status(list(argv or []))
    if isinstance(args, int):  # --help, or the parser's one `error:` line
        return args
    out = Path(args.output)
    try:
        if out.suffix != ".safetensors":
            raise LoraError(f"output must end in .safetensors, got {str(out)!r}")
        check_destination(out, "output", companions=[out.stem + s + out.suffix for s in EXPERT_SUFFIX.values()])
        weights = load_lora(args.input, modules=_modules_for(args.checkpoint), expert=args.expert,
                            allow_partial=args.allow_partial)
        existing = [] if args.overwrite else existing_files(_convert_outputs(weights, out, args.to))
        if existing:
            raise LoraError(f"{', '.join(map(str, existing))} already exists; pass --overwrite to replace it, or "
                            "give another output name")
        for key, reason in weights.skipped:
            sys.stderr.write(f"skipped {key}: {reason}\n")
        if args.to == "official":
            paths = [save_official(weights, out)]
        elif weights.format != OFFICIAL_FORMAT:  # a Wan LoRA: the same layers for every expert, one file
            paths = [save_comfy(weights, weights.components()[0], out)]
        else:
            paths = save_comfy_experts(weights, out, video_only=args.video_only)
    except (LoraError, ValueError, OSError) as exc:
        return refuse(str(exc))
    for path in paths:
        sys.stdout.write(f"{path}\n")
    return 0
