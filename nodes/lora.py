"""MOVA LoRA Loader: a LoRA from ComfyUI's `loras` folder applied to a copy of the MOVA_MODEL handle (stackable).

Accepted: the official trainer's `lora_weights.pt` (with `lora_config.pt` beside it; read with
`torch.load(weights_only=True)`, never a full unpickle) or a `.safetensors` with the same keys.
"""
from __future__ import annotations

import dataclasses

import folder_paths
from comfy_api.latest import io

from ..mova_model.network.lora import LoraPatch, load_lora
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
            description="Applies a MOVA LoRA (official lora_weights.pt + lora_config.pt, or .safetensors) at a strength. "
                        "Returns a patched copy of the model; the input model is untouched. Chain several to stack.",
            inputs=[
                MovaModel.Input("model"),
                io.Combo.Input("lora_name", options=lora_files(), tooltip="A file in models/loras."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="Multiplies alpha/rank (the official lora_scale)."),
                io.Float.Input("video_strength", default=1.0, min=-10.0, max=10.0, step=0.05, optional=True,
                               tooltip="Extra factor for both video experts."),
                io.Float.Input("audio_strength", default=1.0, min=-10.0, max=10.0, step=0.05, optional=True,
                               tooltip="Extra factor for the audio DiT."),
                io.Float.Input("bridge_strength", default=1.0, min=-10.0, max=10.0, step=0.05, optional=True,
                               tooltip="Extra factor for the dual-tower bridge."),
            ],
            outputs=[MovaModel.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, lora_name: str) -> bool | str:
        names = lora_files()
        if lora_name not in names:
            return f"lora_name {lora_name!r} is not a .pt/.safetensors file in models/loras (found: {', '.join(names) or 'none'})"
        return True

    @classmethod
    def execute(cls, model, lora_name: str, strength: float, video_strength=1.0, audio_strength=1.0,
                bridge_strength=1.0) -> io.NodeOutput:
        check_combos(cls, lora_name=lora_name)
        handle = handle_of(model)
        path = folder_paths.get_full_path("loras", lora_name)
        if path is None:
            raise ValueError(f"lora_name: {lora_name!r} is not in the loras folder")
        weights = load_lora(path)
        patch = LoraPatch(weights, float(strength), (("video", float(video_strength)), ("audio", float(audio_strength)),
                                                     ("bridge", float(bridge_strength))))
        pipeline = handle.pipeline.with_lora(patch)
        note = f"{handle.plan_text}\nLoRA {lora_name} x{strength:g}"
        return io.NodeOutput(dataclasses.replace(handle, pipeline=pipeline, plan_text=note))


NODES = [MovaLoraLoader]
