"""MOVA Text+Image Conditioner: prompt, negative prompt, optional first / last frame and keyframes, clip size
-> MOVA_CONDITIONING."""
from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from ..mova_model import bounds
from ..mova_model.sampling.pipeline import OFFICIAL_NEGATIVE_PROMPT, validate_geometry
from .types import MovaConditioning, MovaModel, handle_of


def first_frame_uint8(image: torch.Tensor | None, name: str = "image") -> np.ndarray | None:
    """ComfyUI IMAGE `[1, H, W, 3]` float 0..1 -> uint8 `[H, W, 3]`; None stays None (text-only)."""
    if image is None:
        return None
    if image.dim() != 4 or image.shape[-1] not in (3, 4):
        raise ValueError(f"{name}: expected a ComfyUI IMAGE [batch, height, width, 3], got shape {list(image.shape)}")
    if image.shape[0] != 1:
        what = "last frame" if name == "last_image" else "first frame"
        raise ValueError(f"{name}: expected one {what}, got a batch of {image.shape[0]} images; "
                         "pick one (e.g. with an 'ImageFromBatch' node)")
    return (image[0, :, :, :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def keyframes_uint8(images: torch.Tensor | None, positions: str, frames: int) -> dict:
    """IMAGE batch `[K, H, W, 3]` + "12, 40" (one pixel-frame index per image, negative from the end) ->
    {index: uint8 `[H, W, 3]`}; mismatched counts or indices outside the clip raise a message."""
    text = (positions or "").strip()
    if images is None:
        if text:
            raise ValueError("keyframe_positions: given, but no keyframes image batch is connected")
        return {}
    if images.dim() != 4 or images.shape[-1] not in (3, 4):
        raise ValueError(f"keyframes: expected a ComfyUI IMAGE batch [frames, height, width, 3], got {list(images.shape)}")
    try:
        indices = [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"keyframe_positions: expected frame numbers separated by commas (e.g. 48, 96), got {text!r}") from None
    if len(indices) != images.shape[0]:
        raise ValueError(f"keyframe_positions: {len(indices)} positions for {images.shape[0]} keyframe images; "
                         "give one frame number per image")
    out = {}
    for index, image in zip(indices, images):
        absolute = index + frames if index < 0 else index
        if not 0 <= absolute < frames:
            raise ValueError(f"keyframe_positions: frame {index} is outside the clip (0..{frames - 1}, or -1 for the last)")
        if absolute in out:
            raise ValueError(f"keyframe_positions: frame {index} is given twice")
        out[absolute] = (image[:, :, :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return out


class MovaTextImageConditioner(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaTextImageConditioner",
            display_name="MOVA Text+Image Conditioner",
            category="MOVA/conditioning",
            description="Encodes the prompts with UMT5 and the first frame (and optionally the last frame or frames at "
                        "chosen positions) with the video VAE (center-cropped and resized as the official script "
                        "does). Without any image a white first frame is used (T2VA).",
            inputs=[
                MovaModel.Input("model"),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="What happens and what is heard; quote spoken lines exactly."),
                io.String.Input("negative_prompt", multiline=True, default=OFFICIAL_NEGATIVE_PROMPT,
                                tooltip="Default: the official script's negative prompt."),
                io.Int.Input("width", default=640, step=16, **bounds.WIDTH.widget(), tooltip="Pixels; a multiple of 16."),
                io.Int.Input("height", default=352, step=16, **bounds.HEIGHT.widget(), tooltip="Pixels; a multiple of 16."),
                io.Int.Input("frames", default=193, step=4, **bounds.FRAMES.widget(), tooltip="Frame count, 4k+1 (193 = 8 s at 24 fps)."),
                io.Float.Input("fps", default=24.0, step=0.5, **bounds.FPS.widget(), tooltip="Frames per second (> 0)."),
                io.Image.Input("image", optional=True, tooltip="The first frame. Leave unconnected for text-only (T2VA)."),
                io.Image.Input("last_image", optional=True,
                               tooltip="The last frame (first + last = the official last_image condition). "
                                       "Alone, the first frame is left free (beyond what MOVA was trained on)."),
                io.Image.Input("keyframes", optional=True,
                               tooltip="Frames at chosen positions (beyond what MOVA was trained on); "
                                       "their frame numbers go in keyframe_positions."),
                io.String.Input("keyframe_positions", default="", optional=True,
                                tooltip="One pixel-frame number per keyframe image, comma separated (e.g. 48, 96; "
                                        "-1 = last frame)."),
            ],
            outputs=[MovaConditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, model, prompt: str, negative_prompt: str, width: int, height: int, frames: int, fps: float,
                image=None, last_image=None, keyframes=None, keyframe_positions: str = "") -> io.NodeOutput:
        handle = handle_of(model)
        validate_geometry(width, height, frames, fps)
        frame = first_frame_uint8(image)
        last = first_frame_uint8(last_image, "last_image")
        others = keyframes_uint8(keyframes, keyframe_positions, frames)
        conditioning = handle.pipeline.prepare_conditioning(prompt, negative_prompt, frame, width=width, height=height,
                                                            num_frames=frames, video_fps=fps, last_image_uint8=last,
                                                            keyframes_uint8=others)
        return io.NodeOutput(conditioning)


NODES = [MovaTextImageConditioner]
