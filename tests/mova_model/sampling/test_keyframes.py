"""Keyframe conditions: first + last (the official `last_image` condition) and frames at chosen positions."""

import numpy as np
import pytest
import torch

from mova_model.sampling.conditioning import first_frame_condition, keyframe_condition, keyframe_mask
from mova_model.sampling.pipeline import InputError


def image(seed, h=32, w=32):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_mask_first_and_last_follows_the_official_folding():
    mask = keyframe_mask(9, 3, 2, 2, (0, 8))
    assert bool((mask[0, :, 0] == 1).all())          # frame 0 repeated over the 4 channels of latent 0
    assert mask[0, :, 1].abs().sum() == 0
    assert mask[0, :, 2, 0, 0].tolist() == [0, 0, 0, 1]  # frame F−1 = channel 3 of the last latent frame


@pytest.mark.parametrize("position, latent, channel", [(1, 1, 0), (4, 1, 3), (6, 2, 1), (8, 2, 3)])
def test_mask_position_lands_in_its_latent_frame(position, latent, channel):
    mask = keyframe_mask(9, 3, 1, 1, (position,))
    assert mask.sum() == 1 and mask[0, channel, latent, 0, 0] == 1


def test_mask_rejects_positions_outside_the_clip():
    with pytest.raises(ValueError, match="outside"):
        keyframe_mask(9, 3, 1, 1, (9,))


def test_first_frame_is_the_i2v_condition_exactly(tiny_pipe):
    vae = tiny_pipe.video_vae()
    first = image(0)
    assert torch.equal(keyframe_condition(vae, {0: first}, 9), first_frame_condition(vae, first, 9))


def test_frames_are_encoded_at_their_place(tiny_pipe):
    vae = tiny_pipe.video_vae()
    first, middle, last = image(1), image(2), image(3)
    condition = keyframe_condition(vae, {0: first, 6: middle, -1: last}, 9)
    clip = torch.zeros(1, 3, 9, 32, 32)
    clip[:, :, 0], clip[:, :, 6], clip[:, :, 8] = first, middle, last
    assert torch.equal(condition[:, 4:], vae.encode_condition_video(clip))
    assert torch.equal(condition[:, :4], keyframe_mask(9, 3, 4, 4, (0, 6, 8)))


def test_last_frame_alone_leaves_the_first_free(tiny_pipe):
    condition = keyframe_condition(tiny_pipe.video_vae(), {-1: image(4)}, 9)
    assert condition[0, :4, 0].abs().sum() == 0 and condition[0, 3, 2].min() == 1


def test_pipeline_last_image(tiny_pipe):
    rgb = np.full((20, 30, 3), 200, dtype=np.uint8)
    both = tiny_pipe.prepare_conditioning("a cat", "", rgb, width=32, height=32, num_frames=9, video_fps=8.0,
                                          last_image_uint8=rgb[::-1].copy())
    assert not both.text_only
    assert torch.equal(both.condition[:, :4], keyframe_mask(9, 3, 4, 4, (0, 8)))
    only_last = tiny_pipe.prepare_conditioning("a cat", "", None, width=32, height=32, num_frames=9, video_fps=8.0,
                                               last_image_uint8=rgb)
    assert torch.equal(only_last.condition[:, :4], keyframe_mask(9, 3, 4, 4, (8,)))
    with pytest.raises(InputError, match="outside the clip"):
        tiny_pipe.prepare_conditioning("a cat", "", None, width=32, height=32, num_frames=9, video_fps=8.0,
                                       keyframes_uint8={12: rgb})


def test_a_keyframe_where_the_first_or_last_image_goes_is_refused(tiny_pipe):
    """Issue 17, item 8: it used to replace the keyframe without a word."""
    frame = np.zeros((16, 16, 3), dtype=np.uint8)
    geometry = dict(width=32, height=32, num_frames=9, video_fps=8.0)
    with pytest.raises(InputError, match=r"frame 0 \(the first frame\) is where the image input goes"):
        tiny_pipe.prepare_conditioning("x", image_uint8=frame, keyframes_uint8={0: frame}, **geometry)
    with pytest.raises(InputError, match=r"frame 8 \(the last frame\) is where the last_image input goes"):
        tiny_pipe.prepare_conditioning("x", last_image_uint8=frame, keyframes_uint8={-1: frame}, **geometry)
