"""First-frame preparation: official crop_and_resize, VideoProcessor range conversion, white T2VA frame."""


import numpy as np
import pytest
import torch

from mova_model.media.image_preprocess import crop_and_resize, crop_box, to_model_range, white_frame

import codec_parity_helpers as H  # tests/ is on pytest's pythonpath


@pytest.mark.parametrize("case", H.case_params("image_preprocess"))
def test_crop_and_resize_matches_official(case):
    case = H.require_case(case)
    inputs, out = H.load_case(case)
    height, width = int(case["args"]["height"]), int(case["args"]["width"])
    limit = int((case.get("tolerance") or {}).get("max_abs_diff", 1))
    names = [k[len("image_"):] for k in inputs if k.startswith("image_")]
    assert names
    for name in names:
        got = crop_and_resize(inputs[f"image_{name}"].numpy(), height, width)
        expected = out[f"resized_{name}"].numpy()
        assert got.shape == expected.shape == (height, width, 3) and got.dtype == np.uint8
        diff = np.abs(got.astype(np.int16) - expected.astype(np.int16)).max()
        assert diff <= limit, f"{name}: max abs diff {diff}"


@pytest.mark.parametrize("case", H.case_params("video_vae"))
def test_to_model_range_matches_video_processor(case):
    case = H.require_case(case)
    inputs, out = H.load_case(case)
    got = to_model_range(inputs["image_uint8"].numpy())
    assert got.dtype == torch.float32
    H.assert_close(got, out["image_preprocessed"], atol=1e-7, rtol=0, what="image_preprocessed")


def test_crop_box_keeps_centre_band():
    # wider than 16:9 -> full height, centred band of int(h/H*W) columns
    assert crop_box(100, 400, 90, 160) == (0, (400 - 177) // 2, 100, 177)
    # taller -> full width, centred band of int(w/W*H) rows
    assert crop_box(400, 100, 90, 160) == ((400 - 56) // 2, 0, 56, 100)
    assert crop_box(90, 160, 90, 160) == (0, 0, 90, 160)


def test_crop_and_resize_keeps_centre_content():
    image = np.zeros((60, 200, 3), dtype=np.uint8)
    image[:, 70:130] = 255  # a white centre stripe; the sides are cropped away
    out = crop_and_resize(image, 32, 32)
    assert out.shape == (32, 32, 3)
    assert out[:, 4:28].min() > 200
    same = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    assert np.array_equal(crop_and_resize(same, 24, 40), same)  # same size: no change


def test_to_model_range_endpoints_and_layout():
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[0, 1] = (255, 0, 128)
    out = to_model_range(image)
    assert out.shape == (1, 3, 2, 3)
    assert out[0, :, 0, 1].tolist() == pytest.approx([1.0, -1.0, 2 * 128 / 255 - 1], abs=1e-6)
    assert out[0, :, 1, 2].tolist() == [-1.0, -1.0, -1.0]


def test_white_frame():
    frame = white_frame(16, 24)
    assert frame.shape == (16, 24, 3) and frame.dtype == np.uint8 and int(frame.min()) == 255
    assert torch.equal(to_model_range(frame), torch.ones(1, 3, 16, 24))
    with pytest.raises(ValueError):
        white_frame(0, 8)


def test_rejects_non_rgb_uint8():
    with pytest.raises(ValueError):
        crop_and_resize(np.zeros((8, 8, 4), dtype=np.uint8), 8, 8)
    with pytest.raises(ValueError):
        to_model_range(np.zeros((8, 8, 3), dtype=np.float32))
