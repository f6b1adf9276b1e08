"""Helpers for the DiT / bridge / denoiser tests: parity checkpoint loading, fixture cases, manifests.

The parity weights are loaded with `safetensors.torch.load_file` over a component folder's shards and
assigned with `load_state_dict(assign=True, strict=True)` (the real loader lives in `mova_model.checkpoint.folder`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from safetensors.torch import load_file

from mova_model.network.audio_dit import AudioDiT
from mova_model.network.bridge import DualTowerBridge
from mova_model.checkpoint.configs import AudioDiTConfig, BridgeConfig, VideoDiTConfig
from mova_model.network.ops import Operations
from mova_model.network.video_dit import VideoDiT

COMPONENT_CLASSES = {
    "video_dit": (VideoDiT, VideoDiTConfig),
    "video_dit_2": (VideoDiT, VideoDiTConfig),
    "audio_dit": (AudioDiT, AudioDiTConfig),
    "dual_tower_bridge": (DualTowerBridge, BridgeConfig),
}


def build_meta(component: str, config_path: Path) -> torch.nn.Module:
    """Build a component on the meta device from a config.json."""
    cls, config_cls = COMPONENT_CLASSES[component]
    return cls(config_cls.from_file(config_path), Operations())


def load_component(checkpoint: Path, component: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Build `component` from `checkpoint/<component>/config.json` and assign its safetensors weights."""
    module = build_meta(component, checkpoint / component / "config.json")
    state: Dict[str, torch.Tensor] = {}
    for path in sorted((checkpoint / component).glob("*.safetensors")):
        state.update(load_file(str(path)))
    state = {k: v.to(dtype) for k, v in state.items()}
    module.load_state_dict(state, assign=True, strict=True)
    return module.eval()


def read_cases(parity_dir: Path, kinds: Tuple[str, ...]) -> List[dict]:
    """Cases of `parity_dir/index.json` whose kind is one of `kinds`."""
    index = json.loads((parity_dir / "index.json").read_text())
    return [case for case in index["cases"] if case["kind"] in kinds]


def case_tensors(parity_dir: Path, case: dict) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """(inputs, outputs) tensors of a fixture case."""
    return load_file(str(parity_dir / case["inputs"])), load_file(str(parity_dir / case["outputs"]))


def read_manifest(path: Path) -> Dict[str, List[int]]:
    """key -> shape from a `spec/manifests/*.tsv` file."""
    shapes: Dict[str, List[int]] = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape, _dtype = line.split("\t")
        shapes[key] = json.loads(shape)
    return shapes


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str) -> float:
    """assert_close with a message; returns the max abs error."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")
    return (actual - expected).abs().max().item()
