"""First-frame image preparation: center crop + resize, conversion to the model's [-1, 1] range, white frame.

Mirrors the official preparation of the reference image: `crop_and_resize` in
`mova/datasets/transforms/custom.py` (called by `scripts/inference_single.py`) and diffusers'
`VideoProcessor.preprocess` (called by `MOVA.__call__`) for an image already at the target size.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

RESIZE_FILTER = Image.Resampling.BICUBIC
"""Pillow's default `Image.resize` filter for RGB images (what the official call gets by not naming one)."""


def _check_rgb_uint8(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must be a uint8 RGB array of shape [height, width, 3], "
                         f"got dtype {image.dtype} and shape {list(image.shape)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{what} is empty (shape {list(image.shape)})")
    return image


def crop_box(image_height: int, image_width: int, height: int, width: int) -> tuple:
    """(top, left, crop_height, crop_width) of the official center crop to the target aspect ratio.

    A relatively wider image (`image_height/image_width < height/width`) keeps its full height and a band of
    width `int(image_height/height·width)`; otherwise the full width and a band of height
    `int(image_width/width·height)`; the band starts at `(size − band) // 2`.
    """
    if image_height / image_width < height / width:
        crop_width = int(image_height / height * width)
        return 0, (image_width - crop_width) // 2, image_height, crop_width
    crop_height = int(image_width / width * height)
    return (image_height - crop_height) // 2, 0, crop_height, image_width


def crop_and_resize(image_uint8: np.ndarray, height: int, width: int) -> np.ndarray:
    """Center-crop to the target aspect and resize: uint8 [h, w, 3] -> uint8 [height, width, 3].

    Mirrors the official `crop_and_resize` (crop as in `crop_box`, then PIL `resize((width, height))`
    with Pillow's default bicubic filter).
    """
    image = _check_rgb_uint8(image_uint8, "the reference image")
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    top, left, crop_h, crop_w = crop_box(image.shape[0], image.shape[1], height, width)
    cropped = np.ascontiguousarray(image[top:top + crop_h, left:left + crop_w])
    resized = Image.fromarray(cropped).resize((width, height), RESIZE_FILTER)
    return np.asarray(resized, dtype=np.uint8).copy()


def to_model_range(image_uint8: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [1, 3, H, W] in [-1, 1].

    Mirrors diffusers `VideoProcessor.preprocess` for an image already at the target size (its resize is then
    a no-op): `x/255` in float32, channels first, `2·x − 1`. Resizing is `crop_and_resize`'s job.
    """
    image = _check_rgb_uint8(image_uint8, "the first frame")
    unit = image.astype(np.float32) / 255.0
    tensor = torch.from_numpy(unit).permute(2, 0, 1).unsqueeze(0).contiguous()
    return 2.0 * tensor - 1.0


def white_frame(height: int, width: int) -> np.ndarray:
    """A pure white uint8 [height, width, 3] first frame for text-to-video+audio (T2VA).

    The official pipeline requires an image; its prompt-enhancement workflow (and community ports) use a
    white frame when there is no reference image.
    """
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    return np.full((height, width, 3), 255, dtype=np.uint8)
