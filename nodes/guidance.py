"""MOVA Guidance: text CFG and the paper's bridge (modality) CFG, per-modality scales, presets -> MOVA_GUIDANCE."""
from __future__ import annotations

from comfy_api.latest import io

from ..mova_model.sampling.guidance import PRESETS, GuidanceConfig, required_branches
from .combos import check_combos
from .types import MovaGuidance

SAME = -1.0
CUSTOM = "custom"


def _optional(value: float):
    return None if value is None or value < 0 else float(value)


class MovaGuidanceNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaGuidance",
            display_name="MOVA Guidance (dual CFG)",
            category="MOVA/sampling",
            description="Dual CFG from the MOVA paper: v = v(∅,∅) + s_B·[v(∅,bridge) − v(∅,∅)] + s_T·[v(text,bridge) − "
                        "v(∅,bridge)]. bridge_scale 1 = the official text CFG (2 passes); bridge = text scale: 2 passes; "
                        "otherwise 3. The lip-sync preset (s_B 3.5) improves sync at some cost in speech quality.",
            inputs=[
                io.Combo.Input("preset", options=list(PRESETS) + [CUSTOM], default="official (text CFG)",
                               tooltip="A named setting; 'custom' uses the scales below."),
                io.Float.Input("text_scale", default=5.0, min=0.0, max=30.0, step=0.1, tooltip="s_T (custom only)."),
                io.Float.Input("bridge_scale", default=1.0, min=0.0, max=30.0, step=0.1, tooltip="s_B (custom only)."),
                io.Float.Input("video_text_scale", default=SAME, min=SAME, max=30.0, step=0.1, optional=True,
                               tooltip="-1 = same as text_scale."),
                io.Float.Input("audio_text_scale", default=SAME, min=SAME, max=30.0, step=0.1, optional=True,
                               tooltip="-1 = same as text_scale."),
                io.Float.Input("video_bridge_scale", default=SAME, min=SAME, max=30.0, step=0.1, optional=True,
                               tooltip="-1 = same as bridge_scale."),
                io.Float.Input("audio_bridge_scale", default=SAME, min=SAME, max=30.0, step=0.1, optional=True,
                               tooltip="-1 = same as bridge_scale."),
                io.Float.Input("a2v_strength", default=1.0, min=0.0, max=5.0, step=0.05, optional=True,
                               tooltip="How much the audio tower steers the video in the bridge (official 1.0)."),
                io.Float.Input("v2a_strength", default=1.0, min=0.0, max=5.0, step=0.05, optional=True,
                               tooltip="How much the video tower steers the audio in the bridge (official 1.0)."),
            ],
            outputs=[MovaGuidance.Output(display_name="guidance"), io.String.Output(display_name="summary")],
        )

    @classmethod
    def execute(cls, preset: str, text_scale: float, bridge_scale: float, video_text_scale=SAME, audio_text_scale=SAME,
                video_bridge_scale=SAME, audio_bridge_scale=SAME, a2v_strength=1.0, v2a_strength=1.0) -> io.NodeOutput:
        check_combos(cls, preset=preset)
        if preset != CUSTOM:
            text_scale, bridge_scale = PRESETS[preset]
        config = GuidanceConfig(
            text_scale=float(text_scale), bridge_scale=float(bridge_scale),
            video_text_scale=_optional(video_text_scale), audio_text_scale=_optional(audio_text_scale),
            video_bridge_scale=_optional(video_bridge_scale), audio_bridge_scale=_optional(audio_bridge_scale),
            a2v_scale=None if a2v_strength == 1.0 else float(a2v_strength),
            v2a_scale=None if v2a_strength == 1.0 else float(v2a_strength))
        config.validate()
        passes = [b.name for b in required_branches(config)]
        summary = (f"video s_T={config.scales('video')[0]:g} s_B={config.scales('video')[1]:g}; "
                   f"audio s_T={config.scales('audio')[0]:g} s_B={config.scales('audio')[1]:g}; "
                   f"{len(passes)} passes per step ({', '.join(passes)})")
        return io.NodeOutput(config, summary)


NODES = [MovaGuidanceNode]
