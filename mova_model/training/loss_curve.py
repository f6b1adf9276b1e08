"""A loss-curve picture for the UI: training loss per step and the validation loss, drawn with Pillow."""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

TRAIN_COLOUR = (70, 130, 220)
VAL_COLOUR = (230, 120, 40)


def render_loss_curve(losses: Sequence[Tuple[int, float]], val_losses: Sequence[Tuple[int, float]] = (),
                      width: int = 640, height: int = 320) -> np.ndarray:
    """uint8 RGB [height, width, 3]: training loss (blue line) and validation loss (orange dots) against the
    optimizer step, y axis from the smallest to the largest value shown, labelled with both ends."""
    image = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 56, width - 12, 14, height - 28
    points: List[Tuple[int, float]] = [p for p in list(losses) + list(val_losses) if math.isfinite(p[1])]
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    if not points:
        draw.text((left + 8, top + 8), "no loss recorded yet", fill=(90, 90, 90))
        return np.asarray(image)
    steps = [s for s, _ in points]
    values = [v for _, v in points]
    s0, s1 = min(steps), max(max(steps), min(steps) + 1)
    v0, v1 = min(values), max(values)
    if v1 - v0 < 1e-12:
        v0, v1 = v0 - 0.5, v1 + 0.5

    def xy(step: float, value: float) -> Tuple[float, float]:
        return (left + (step - s0) / (s1 - s0) * (right - left), bottom - (value - v0) / (v1 - v0) * (bottom - top))

    train = [xy(s, v) for s, v in losses if math.isfinite(v)]
    if len(train) > 1:
        draw.line(train, fill=TRAIN_COLOUR, width=2)
    for x, y in train[:1] if len(train) == 1 else []:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=TRAIN_COLOUR)
    for s, v in val_losses:
        if math.isfinite(v):
            x, y = xy(s, v)
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=VAL_COLOUR)
    draw.text((4, top), f"{v1:.4g}", fill=(60, 60, 60))
    draw.text((4, bottom - 10), f"{v0:.4g}", fill=(60, 60, 60))
    draw.text((left, bottom + 6), f"step {s0}", fill=(60, 60, 60))
    draw.text((right - 60, bottom + 6), f"step {s1}", fill=(60, 60, 60))
    draw.text((left + 8, top + 4), "train loss", fill=TRAIN_COLOUR)
    draw.text((left + 90, top + 4), "validation loss", fill=VAL_COLOUR)
    return np.asarray(image)
