"""Classifier-free guidance for the joint video+audio denoiser: the official text CFG and the paper's dual CFG.

The paper (MOVA tech report §5.1, Eq. 6) guides with two conditions, text `c_T` and the bridge `c_B`:

    v = v(∅,∅) + s_B·[v(∅,c_B) − v(∅,∅)] + s_T·[v(c_T,c_B) − v(∅,c_B)]

where "∅ text" is the negative prompt and "∅ bridge" skips the bridge in every interacting layer, both
directions. Each term is a full dual-tower pass (a `Branch`). Special cases need fewer passes:

- s_B = 1: plain text CFG, `neg + s_T·(pos − neg)` — evaluated with exactly the official expression of
  `MOVA.__call__`, so it is bit-identical to the official pipeline (2 passes; 1 pass when s_T = 1 too).
- s_B = s_T = s: `v(∅,∅) + s·[v(c_T,c_B) − v(∅,∅)]` (2 passes).
- otherwise 3 passes.

Video and audio may have their own scales (an extension beyond the paper; equal by default). The passes run
are the union of what the two modalities need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, FrozenSet, Optional, Tuple

import torch


@dataclass(frozen=True)
class Branch:
    """One dual-tower pass: with the prompt (else the negative prompt) and with the bridge (else without)."""

    text: bool
    bridge: bool

    @property
    def name(self) -> str:
        return {(True, True): "full", (False, True): "text_off", (False, False): "both_off",
                (True, False): "bridge_off"}[(self.text, self.bridge)]


FULL = Branch(text=True, bridge=True)
TEXT_OFF = Branch(text=False, bridge=True)
BOTH_OFF = Branch(text=False, bridge=False)

PRESETS: Dict[str, Tuple[float, float]] = {
    "official (text CFG)": (5.0, 1.0),
    "lip-sync (dual CFG)": (5.0, 3.5),
    "text + modality (2 passes)": (3.5, 3.5),
    "no guidance (1 pass)": (1.0, 1.0),
}
"""Named (text scale, bridge scale) settings: the official default, the paper's lip-sync setting
(s_B = 3.5, Tables 4–5), the 2-pass s_B = s_T case and the single conditional pass."""


@dataclass(frozen=True)
class GuidanceConfig:
    """Guidance scales. `None` per-modality values fall back to the shared `text_scale` / `bridge_scale`.

    a2v_scale / v2a_scale: per-direction bridge strength in the conditioned passes (official
    `a2v_condition_scale` / `v2a_condition_scale`; `None` = 1.0, the official pipeline).
    """

    text_scale: float = 5.0
    bridge_scale: float = 1.0
    video_text_scale: Optional[float] = None
    audio_text_scale: Optional[float] = None
    video_bridge_scale: Optional[float] = None
    audio_bridge_scale: Optional[float] = None
    a2v_scale: Optional[float] = None
    v2a_scale: Optional[float] = None

    def scales(self, modality: str) -> Tuple[float, float]:
        """(s_T, s_B) for `"video"` or `"audio"`."""
        if modality == "video":
            text, bridge = self.video_text_scale, self.video_bridge_scale
        elif modality == "audio":
            text, bridge = self.audio_text_scale, self.audio_bridge_scale
        else:
            raise ValueError(f"modality must be 'video' or 'audio', got {modality!r}")
        return (self.text_scale if text is None else float(text), self.bridge_scale if bridge is None else float(bridge))

    def validate(self) -> None:
        """Raise `ValueError` with a readable message for a scale that is not a finite number."""
        for name in ("text_scale", "bridge_scale", "video_text_scale", "audio_text_scale",
                     "video_bridge_scale", "audio_bridge_scale", "a2v_scale", "v2a_scale"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if isinstance(value, (str, bytes)) or not math.isfinite(number):
                raise ValueError(f"guidance {name} must be a finite number, got {value!r}")


def branches_for(text_scale: float, bridge_scale: float) -> FrozenSet[Branch]:
    """The passes one modality needs for (s_T, s_B); see the module docstring for the special cases."""
    if bridge_scale == 1.0:
        return frozenset({FULL}) if text_scale == 1.0 else frozenset({FULL, TEXT_OFF})
    if bridge_scale == text_scale:
        return frozenset({FULL, BOTH_OFF})
    return frozenset({FULL, TEXT_OFF, BOTH_OFF})


def required_branches(config: GuidanceConfig) -> Tuple[Branch, ...]:
    """Passes to run per step for both modalities, in a fixed order (full first, as the official cond pass)."""
    needed = branches_for(*config.scales("video")) | branches_for(*config.scales("audio"))
    return tuple(b for b in (FULL, TEXT_OFF, BOTH_OFF) if b in needed)


def combine(preds: Dict[Branch, torch.Tensor], text_scale: float, bridge_scale: float) -> torch.Tensor:
    """Guided velocity of one modality from its branch predictions (float32 tensors of equal shape).

    Mirrors `MOVA.__call__` exactly for s_B = 1 (`neg + s·(pos − neg)`, or `pos` when s = 1).
    """
    full = preds[FULL]
    if bridge_scale == 1.0:
        if text_scale == 1.0:
            return full
        neg = preds[TEXT_OFF]
        return neg + text_scale * (full - neg)
    both_off = preds[BOTH_OFF]
    if bridge_scale == text_scale:
        return both_off + text_scale * (full - both_off)
    text_off = preds[TEXT_OFF]
    return both_off + bridge_scale * (text_off - both_off) + text_scale * (full - text_off)
