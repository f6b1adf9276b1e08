"""MOVA Text+Image Conditioner: prompt, negative prompt, optional first frame and clip size -> MOVA_CONDITIONING."""
from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from ..mova_model.sampling.pipeline import OFFICIAL_NEGATIVE_PROMPT, validate_geometry
from .types import MovaConditioning, MovaModel, handle_of


def first_frame_uint8(image: torch.Tensor | None) -> np.ndarray | None:
    """ComfyUI IMAGE `[1, H, W, 3]` float 0..1 -> uint8 `[H, W, 3]`; None stays None (text-only)."""
    if image is None:
        return None
    if image.dim() != 4 or image.shape[-1] not in (3, 4):
        raise ValueError(f"image: expected a ComfyUI IMAGE [batch, height, width, 3], got shape {list(image.shape)}")
    if image.shape[0] != 1:
        raise ValueError(f"image: expected one first frame, got a batch of {image.shape[0]} images; "
                         "pick one (e.g. with an 'ImageFromBatch' node)")
    return (image[0, :, :, :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


class MovaTextImageConditioner(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaTextImageConditioner",
            display_name="MOVA Text+Image Conditioner",
            category="MOVA/conditioning",
            description="Encodes the prompts with UMT5 and the first frame with the video VAE (center-cropped and "
                        "resized as the official script does). Without an image a white first frame is used (T2VA).",
            inputs=[
                MovaModel.Input("model"),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="What happens and what is heard; quote spoken lines exactly."),
                io.String.Input("negative_prompt", multiline=True, default=OFFICIAL_NEGATIVE_PROMPT,
                                tooltip="Default: the official script's negative prompt."),
                io.Int.Input("width", default=640, min=16, max=4096, step=16, tooltip="Pixels; a multiple of 16."),
                io.Int.Input("height", default=352, min=16, max=4096, step=16, tooltip="Pixels; a multiple of 16."),
                io.Int.Input("frames", default=193, min=1, max=1025, step=4, tooltip="Frame count, 4k+1 (193 = 8 s at 24 fps)."),
                io.Float.Input("fps", default=24.0, min=0.0, max=120.0, step=0.5, tooltip="Frames per second (> 0)."),
                io.Image.Input("image", optional=True, tooltip="The first frame. Leave unconnected for text-only (T2VA)."),
            ],
            outputs=[MovaConditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, model, prompt: str, negative_prompt: str, width: int, height: int, frames: int, fps: float,
                image=None) -> io.NodeOutput:
        handle = handle_of(model)
        validate_geometry(width, height, frames, fps)
        frame = first_frame_uint8(image)
        conditioning = handle.pipeline.prepare_conditioning(prompt, negative_prompt, frame, width=width, height=height,
                                                            num_frames=frames, video_fps=fps)
        return io.NodeOutput(conditioning)


NODES = [MovaTextImageConditioner]
