"""MOVA LoRA Loader: a LoRA from ComfyUI's `loras` folder applied to a copy of the MOVA_MODEL handle (stackable).

Accepted: the official trainer's `lora_weights.pt` (with `lora_config.pt` beside it; read with
`torch.load(weights_only=True)`, never a full unpickle) or a `.safetensors` with the same keys, and community
Wan LoRAs (ComfyUI native, kohya / musubi-tuner, diffusers / peft `.safetensors`), routed by `expert` to the
high-noise (`video_dit`), low-noise (`video_dit_2`) or both video experts (`mova_model/network/lora_formats.py`).
"""
from __future__ import annotations

import dataclasses

import folder_paths
from comfy_api.latest import io

from ..mova_model import bounds
from ..mova_model.network.lora import EXPERTS, LoraPatch
from ..mova_model.training.files import is_state_file
from .combos import check_combos
from .types import MovaModel, handle_of

LORA_EXTENSIONS = (".pt", ".pth", ".safetensors")


def lora_files() -> list:
    """LoRA files in models/loras (a `lora_config.pt` is the companion of a `lora_weights.pt`, not a LoRA; nor is
    a training state, `<stem>.state.safetensors` as earlier versions named it)."""
    return [name for name in folder_paths.get_filename_list("loras")
            if name.lower().endswith(LORA_EXTENSIONS) and not name.lower().endswith("lora_config.pt")
            and not is_state_file(name)]


class MovaLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaLoraLoader",
            display_name="MOVA LoRA Loader",
            category="MOVA/loaders",
            description="Applies a MOVA LoRA (official lora_weights.pt + lora_config.pt, or .safetensors) or a Wan LoRA "
                        "(ComfyUI native, kohya/musubi, diffusers/peft .safetensors) at a strength, a Wan LoRA on the "
                        "expert(s) you choose. Returns a patched copy of the model; the input model is untouched. "
                        "Chain several to stack. The report output says what was applied and what was left out.",
            inputs=[
                MovaModel.Input("model"),
                io.Combo.Input("lora_name", options=lora_files(), tooltip="A file in models/loras."),
                io.Float.Input("strength", default=1.0, **bounds.LORA_STRENGTH.widget(), step=0.05,
                               tooltip="Multiplies alpha/rank (the official lora_scale; 1 per layer for Wan files "
                                       "without .alpha) and every .diff delta."),
                io.Float.Input("video_strength", default=1.0, **bounds.LORA_STRENGTH.widget(), step=0.05, optional=True,
                               tooltip="Extra factor for both video experts."),
                io.Float.Input("audio_strength", default=1.0, **bounds.LORA_STRENGTH.widget(), step=0.05, optional=True,
                               tooltip="Extra factor for the audio DiT."),
                io.Float.Input("bridge_strength", default=1.0, **bounds.LORA_STRENGTH.widget(), step=0.05, optional=True,
                               tooltip="Extra factor for the dual-tower bridge."),
                io.Combo.Input("expert", options=list(EXPERTS), default="both", optional=True,
                               tooltip="Where a Wan LoRA goes: high = the high-noise expert (video_dit), low = the "
                                       "low-noise expert (video_dit_2), both. A Wan 2.2 high/low pair is two loaders. "
                                       "A MOVA LoRA keeps its own parts; high/low keep only that video expert's part."),
                io.Boolean.Input("allow_partial", default=False, optional=True,
                                 tooltip="Load the keys that match this model and list the others (off: a key that "
                                         "does not match refuses the file)."),
            ],
            outputs=[MovaModel.Output(display_name="model"), io.String.Output(display_name="report")],
        )

    @classmethod
    def validate_inputs(cls, lora_name: str) -> bool | str:
        names = lora_files()
        if lora_name not in names:
            return f"lora_name {lora_name!r} is not a .pt/.safetensors file in models/loras (found: {', '.join(names) or 'none'})"
        return True

    @classmethod
    def execute(cls, model, lora_name: str, strength: float, video_strength=1.0, audio_strength=1.0,
                bridge_strength=1.0, expert="both", allow_partial=False) -> io.NodeOutput:
        expert = "both" if expert is None else expert
        check_combos(cls, lora_name=lora_name, expert=expert)
        handle = handle_of(model)
        path = folder_paths.get_full_path("loras", lora_name)
        if path is None:
            raise ValueError(f"lora_name: {lora_name!r} is not in the loras folder")
        weights = handle.pipeline.load_lora(path, expert=expert, allow_partial=bool(allow_partial))
        patch = LoraPatch(weights, float(strength), (("video", float(video_strength)), ("audio", float(audio_strength)),
                                                     ("bridge", float(bridge_strength))))
        pipeline = handle.pipeline.with_lora(patch)
        note = f"{handle.plan_text}\nLoRA {lora_name} x{strength:g} (expert {expert})"
        return io.NodeOutput(dataclasses.replace(handle, pipeline=pipeline, plan_text=note), lora_report(lora_name, weights))


def lora_report(lora_name: str, weights) -> str:
    """What the loader applied (format, parts, counts) and, under allow_partial, every key it left out."""
    lines = [f"{lora_name}: {weights.summary()}"]
    lines += [f"  skipped {key}: {reason}" for key, reason in weights.skipped]
    return "\n".join(lines)


NODES = [MovaLoraLoader]
