"""The loss-curve picture of the Train LoRA node."""

import numpy as np

from mova_model.training.loss_curve import TRAIN_COLOUR, VAL_COLOUR, render_loss_curve


def test_curve_draws_both_series_and_handles_empty_input():
    image = render_loss_curve([(1, 3.0), (2, 2.5), (3, 2.0)], [(0, 3.2), (3, 2.1)], width=320, height=200)
    assert image.shape == (200, 320, 3) and image.dtype == np.uint8
    pixels = {tuple(p) for p in image.reshape(-1, 3)}
    assert TRAIN_COLOUR in pixels and VAL_COLOUR in pixels
    empty = render_loss_curve([], [])
    assert empty.shape == (320, 640, 3)
    flat = render_loss_curve([(1, 1.0), (2, 1.0)])
    assert TRAIN_COLOUR in {tuple(p) for p in flat.reshape(-1, 3)}
