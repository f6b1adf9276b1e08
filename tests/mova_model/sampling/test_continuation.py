"""Continuation on the tiny checkpoint: exact lengths, the clean hold, seams measured, same seed, bad inputs."""

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mova_model.media.long_clip import decode_clip_audio, decode_frames
from mova_model.media.seams import measure
from mova_model.sampling.continuation import (audio_start_latent, check_overlap, equal_power_fade, extend,
                                              linear_fade)
from mova_model.sampling.guidance import GuidanceConfig
from mova_model.sampling.pipeline import InputError

G = GuidanceConfig(text_scale=2.0, bridge_scale=1.0)
F, K, FPS = 13, 5, 8.0
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def cond(pipe, prompt, frames=F, width=32, fps=FPS):
    return pipe.prepare_conditioning(prompt, "", None, width=width, height=32, num_frames=frames, video_fps=fps)


def chain(pipe, prompts, mode="clean", seed=7):
    first = pipe.sample(cond(pipe, prompts[0]), seed=seed, steps=3, guidance=G)
    clips, extensions = first, []
    for i, prompt in enumerate(prompts[1:], start=1):
        ext = extend(pipe, clips, cond(pipe, prompt), overlap=K, seed=seed + i, steps=3, guidance=G, hold_mode=mode)
        extensions.append(ext)
        clips = ext.joined
    return first, extensions


@pytest.fixture(scope="module")
def clean3(tiny_pipe):
    return chain(tiny_pipe, ["a dog barks in a yard", "a car passes by", "rain starts to fall"])


def test_joined_clip_has_exactly_n_f_minus_overlaps(tiny_pipe, clean3):
    _, extensions = clean3
    joined = extensions[-1].joined
    total = 3 * F - 2 * K
    assert joined.num_frames == total
    video_shape, audio_shape = tiny_pipe.latent_shapes(32, 32, total, FPS)
    assert tuple(joined.video.shape) == video_shape and tuple(joined.audio.shape) == audio_shape
    assert decode_frames(tiny_pipe, joined).shape == (total, 32, 32, 3)
    waveform, rate = decode_clip_audio(tiny_pipe, joined)
    assert waveform.shape[-1] == int(rate * total / FPS)
    assert [s.frame for s in joined.segments] == [F - K, 2 * F - K - K]


def test_clean_hold_overlap_equals_the_previous_tail(clean3):
    first, extensions = clean3
    previous = first
    for ext in extensions:
        m, o, big_m = ext.seam.overlap_latents, ext.seam.audio_latent, ext.seam.audio_overlap
        assert torch.equal(ext.segment.video[:, :, 1:m + 1], previous.video[:, :, -m:])
        assert torch.equal(ext.segment.audio[:, :, :big_m], previous.audio[:, :, o:])
        # the join keeps the previous clip untouched and continues with the segment's own latents
        assert torch.equal(ext.joined.video[:, :, :previous.video.shape[2]], previous.video)
        assert torch.equal(ext.joined.audio[:, :, :previous.audio.shape[2]], previous.audio)
        assert torch.equal(ext.joined.video[:, :, previous.video.shape[2]:], ext.segment.video[:, :, m + 1:])
        previous = ext.joined


def test_audio_alignment_rounds_up_on_the_latent_grid():
    # tiny: 16 kHz, hop 160 -> 100 latents/s; 8 fps: frame 8 = 1 s = latent 100; frame 9 = 112.5 -> 113
    assert audio_start_latent(8, 8.0, 16000, 160) == 100
    assert audio_start_latent(9, 8.0, 16000, 160) == 113
    assert audio_start_latent(1001, 24000 / 1001, 48000, 1920) == 1001 * 1001 * 25 // 24000 + 1


def test_seams_are_no_worse_than_inside_a_segment(tiny_pipe, clean3):
    """The largest audio sample-to-sample jump at a seam is within what happens inside the segments."""
    _, extensions = clean3
    joined = extensions[-1].joined
    frames = decode_frames(tiny_pipe, joined).numpy()
    waveform, rate = decode_clip_audio(tiny_pipe, joined)
    joins = [s.frame + s.overlap_frames for s in joined.segments]
    report = measure(frames, waveform[0].numpy(), rate, FPS, joins, inside_per_segment=2, loudness_s=0.1)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "seams_tiny_clean.txt").write_text(report.format() + "\n")
    assert len(report.of("seam")) == 2 and report.of("inside")
    assert report.worst("seam", "audio_jump") <= report.elsewhere_audio_jump
    assert report.worst("seam", "audio_jump") <= report.worst("inside", "audio_jump") * 1.5


def test_renoise_overlap_is_the_models_version_and_is_faded(tiny_pipe):
    first, (ext,) = chain(tiny_pipe, ["waves on a beach", "gulls cry"], mode="renoise")
    m, o, big_m = ext.seam.overlap_latents, ext.seam.audio_latent, ext.seam.audio_overlap
    assert not torch.equal(ext.segment.audio[:, :, :big_m], first.audio[:, :, o:])
    faded = ext.joined.audio[:, :, o:o + big_m]
    assert not torch.equal(faded, first.audio[:, :, o:]) and not torch.equal(faded, ext.segment.audio[:, :, :big_m])
    assert ext.joined.num_frames == 2 * F - K


def test_same_seed_same_clip(tiny_pipe):
    a = chain(tiny_pipe, ["a bell rings", "a door opens"], seed=3)[1][0].joined
    b = chain(tiny_pipe, ["a bell rings", "a door opens"], seed=3)[1][0].joined
    assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)


def test_fades():
    x = torch.randn(1, 8, 50, generator=torch.Generator().manual_seed(0))
    y = torch.randn(1, 8, 50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(equal_power_fade(x, x), x)
    assert torch.equal(linear_fade(x, x), x)
    big_x = torch.randn(1, 64, 4000, generator=torch.Generator().manual_seed(2))
    big_y = torch.randn(1, 64, 4000, generator=torch.Generator().manual_seed(3))
    power = equal_power_fade(big_x, big_y).pow(2).mean().item()
    assert abs(power - 1.0) < 0.05  # unrelated sides: constant power, no dip in the middle
    faded = linear_fade(x, y)
    assert torch.allclose(faded[:, :, 0], x[:, :, 0] + (y[:, :, 0] - x[:, :, 0]) / 51)


@pytest.mark.parametrize("change, message", [
    (dict(overlap=F), "shorter than the segment"),
    (dict(overlap=4), "4m+1"),
    (dict(overlap=0), "4m+1"),
    (dict(width=48), "use the same size"),
    (dict(fps=12.0), "same fps"),
    (dict(previous="not a latent"), "not a MOVA latent"),
    (dict(mode="soft"), "hold mode"),
])
def test_bad_inputs_are_explained_before_sampling(tiny_pipe, clean3, monkeypatch, change, message):
    first, _ = clean3
    c = cond(tiny_pipe, "x", width=change.get("width", 32), fps=change.get("fps", FPS))
    monkeypatch.setattr(tiny_pipe, "sample", lambda *a, **k: pytest.fail("sampled despite bad input"))
    with pytest.raises(InputError, match=re.escape(message)):
        extend(tiny_pipe, change.get("previous", first), c, overlap=change.get("overlap", K), seed=1, steps=2,
               hold_mode=change.get("mode", "clean"))


def test_previous_with_other_latent_shapes_is_refused(tiny_pipe, clean3):
    first, _ = clean3
    with pytest.raises(InputError, match="another model"):
        extend(tiny_pipe, replace(first, audio=first.audio[:, :4]), cond(tiny_pipe, "x"), overlap=K, seed=1, steps=1)
    with pytest.raises(InputError, match="shorter than the previous clip"):
        check_overlap(9, 13, previous_frames=9)
