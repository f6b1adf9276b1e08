"""Held time ranges: the first latents of a stream held while the rest is generated (continuation's mechanism)."""

import pytest
import torch

from mova_model.sampling.guidance import GuidanceConfig
from mova_model.sampling.pipeline import InputError
from mova_model.sampling.sampler import HeldStream, held_list

ONE_PASS = GuidanceConfig(text_scale=1.0, bridge_scale=1.0)


@pytest.fixture(scope="module")
def cond9(tiny_pipe):
    return tiny_pipe.prepare_conditioning("rain on a window", "", None, width=32, height=32, num_frames=9, video_fps=8.0)


def _holds(pipe, cond, mode):
    video_shape, audio_shape = pipe.latent_shapes(cond.width, cond.height, cond.num_frames, cond.video_fps)
    g = torch.Generator().manual_seed(5)
    video = torch.randn(1, video_shape[1], 2, *video_shape[3:], generator=g)
    audio = torch.randn(1, audio_shape[1], 40, generator=g)
    return HeldStream("video", video, mode, offset=0), HeldStream("audio", audio, mode, offset=0)


def test_clean_range_is_exactly_the_given_latents_at_every_step(tiny_pipe, cond9):
    held_video, held_audio = _holds(tiny_pipe, cond9, "clean")
    seen = []

    def on_step(info):
        seen.append((torch.equal(info.video_latents[:, :, :2], held_video.latents),
                     torch.equal(info.audio_latents[:, :, :40], held_audio.latents)))

    out = tiny_pipe.sample(cond9, seed=1, steps=4, guidance=ONE_PASS, held=[held_video, held_audio], callback=on_step)
    assert seen == [(True, True)] * 4
    assert torch.equal(out.video[:, :, :2], held_video.latents) and torch.equal(out.audio[:, :, :40], held_audio.latents)
    free = tiny_pipe.sample(cond9, seed=1, steps=4, guidance=ONE_PASS)
    assert not torch.equal(out.video[:, :, 2:], free.video[:, :, 2:])  # the held range steers the rest


def test_renoise_range_is_a_soft_hold(tiny_pipe, cond9):
    held_video, held_audio = _holds(tiny_pipe, cond9, "renoise")
    out = tiny_pipe.sample(cond9, seed=1, steps=4, guidance=ONE_PASS, held=[held_video, held_audio])
    free = tiny_pipe.sample(cond9, seed=1, steps=4, guidance=ONE_PASS)
    near = (out.audio[:, :, :40] - held_audio.latents).abs().mean()
    assert near < (free.audio[:, :, :40] - held_audio.latents).abs().mean()
    assert not torch.equal(out.audio[:, :, :40], held_audio.latents)


def test_range_not_fitting_the_clip_is_refused(tiny_pipe, cond9):
    held_video, _ = _holds(tiny_pipe, cond9, "clean")
    with pytest.raises(InputError, match="does not fit"):
        tiny_pipe.sample(cond9, seed=1, steps=1, held=HeldStream("video", held_video.latents, offset=2))
    with pytest.raises(ValueError, match="more than once"):
        held_list([held_video, held_video])
    with pytest.raises(ValueError, match="offset"):
        HeldStream("audio", held_video.latents, offset=-1)


def test_whole_stream_hold_is_unchanged_by_the_range_code(tiny_pipe, cond9):
    """A whole-stream hold given alone or in a list runs the same path and gives the same latents."""
    video_shape, audio_shape = tiny_pipe.latent_shapes(32, 32, 9, 8.0)
    audio = torch.randn(audio_shape, generator=torch.Generator().manual_seed(2))
    alone = tiny_pipe.sample(cond9, seed=3, steps=3, guidance=ONE_PASS, held=HeldStream("audio", audio))
    listed = tiny_pipe.sample(cond9, seed=3, steps=3, guidance=ONE_PASS, held=[HeldStream("audio", audio)])
    assert torch.equal(alone.video, listed.video) and torch.equal(alone.audio, audio)
