"""Held-stream inputs: driving audio of any rate / channels / length and driving video frames fitted to the
clip, with notes; `held_audio` / `held_video` latents of the pipeline's latent shapes."""

import math
import re

import pytest
import torch

from mova_model.sampling.drivers import (clip_samples, held_audio, held_video, prepare_driving_audio, prepare_driving_video)
from mova_model.sampling.pipeline import Conditioning, InputError
from mova_model.sampling.sampler import HeldStream

RATE = 16000  # the tiny DAC's rate
WANTED = 10000  # int(16000 * 5 / 8)


def _conditioning(width=32, height=32, num_frames=5, video_fps=8.0):
    """Geometry-only conditioning (the drivers read only width/height/frames/fps)."""
    empty = torch.zeros(0)
    return Conditioning(prompt_embeds=empty, negative_prompt_embeds=empty, condition=empty, width=width,
                        height=height, num_frames=num_frames, video_fps=video_fps)


def _sine(freq, rate, samples, phase=0.0):
    t = torch.arange(samples, dtype=torch.float64) / rate
    return (0.5 * torch.sin(2 * math.pi * freq * t + phase)).float()


def test_clip_samples_is_the_official_int_expression():
    assert clip_samples(_conditioning(), RATE) == WANTED
    assert clip_samples(_conditioning(num_frames=9, video_fps=24.0), 44100) == int(44100 * 9 / 24.0)


def test_stereo_44100_is_resampled_mixed_and_trimmed():
    sine = _sine(440, 44100, 44100)
    prepared = prepare_driving_audio(torch.stack([sine, sine]).unsqueeze(0), 44100, _conditioning(), RATE)
    assert prepared.tensor.shape == (1, 1, WANTED)
    notes = prepared.message
    assert "resampled 44100 Hz -> 16000 Hz" in notes
    assert "mixed 2 channels to mono" in notes
    assert "trimmed from 1.00 s to the clip's 0.62 s" in notes or "trimmed from 1.00 s to the clip's 0.63 s" in notes
    # the content is the same 440 Hz tone at the new rate (skip the resampler's edge)
    expected = _sine(440, RATE, WANTED)
    got = prepared.tensor[0, 0]
    corr = torch.nn.functional.cosine_similarity(got[200:-200], expected[200:-200], dim=0)
    best = max(float(torch.nn.functional.cosine_similarity(got[200 + d:WANTED - 200 + d], expected[200:-200], dim=0))
               for d in range(-40, 41))
    assert max(float(corr), best) > 0.99


def test_opposite_channels_mix_to_silence():
    sine = _sine(300, RATE, WANTED)
    prepared = prepare_driving_audio(torch.stack([sine, -sine]), RATE, _conditioning(), RATE)
    assert prepared.tensor.abs().max() < 1e-6
    assert prepared.notes == ["mixed 2 channels to mono"]


def test_mono_8000_is_resampled_and_padded_with_silence():
    samples = 2400  # 0.3 s
    prepared = prepare_driving_audio(_sine(200, 8000, samples).unsqueeze(0), 8000, _conditioning(), RATE)
    assert prepared.tensor.shape == (1, 1, WANTED)
    assert prepared.notes[0] == "resampled 8000 Hz -> 16000 Hz"
    assert any(n.startswith("padded with silence from 0.30 s to the clip's 0.62 s") or
               n.startswith("padded with silence from 0.30 s to the clip's 0.63 s") for n in prepared.notes)
    assert not any("mixed" in n for n in prepared.notes)
    tail = prepared.tensor[0, 0, 2 * samples + 50:]
    assert torch.equal(tail, torch.zeros_like(tail))
    assert prepared.tensor[0, 0, 1000:4000].abs().max() > 0.4


def test_matching_audio_is_used_as_given():
    wave = _sine(500, RATE, WANTED).unsqueeze(0)
    prepared = prepare_driving_audio(wave, RATE, _conditioning(), RATE)
    assert prepared.notes == [] and prepared.message == "used as given"
    assert torch.equal(prepared.tensor, wave.reshape(1, 1, -1))


@pytest.mark.parametrize("wave, message", [
    (torch.full((1, 1, 100), math.nan), "NaN"),
    (torch.tensor([[0.0, math.inf]]), "NaN or infinite"),
    (torch.zeros(1, 0), r"with samples, got shape \[1, 0\]"),
    (torch.zeros(1, 2, 0), r"got shape \[2, 0\]"),
    (torch.zeros(2, 1, 100), "batch of 2"),
    (torch.zeros(100), r"\[channels, samples\]"),
])
def test_bad_audio_is_refused(wave, message):
    with pytest.raises(InputError, match=message):
        prepare_driving_audio(wave, RATE, _conditioning(), RATE)


def _frames(count, height=32, width=32, seed=0):
    return torch.rand(count, height, width, 3, generator=torch.Generator().manual_seed(seed))


def test_too_few_frames_is_an_error_naming_the_counts():
    with pytest.raises(InputError, match="needs 9 frames.*but 6 were given.*set the conditioner's frames to 5"):
        prepare_driving_video(_frames(6), _conditioning(num_frames=9))


def test_no_frames_gives_a_sensible_message():
    """An empty IMAGE batch must not suggest a negative frame count."""
    with pytest.raises(InputError) as info:
        prepare_driving_video(torch.zeros(0, 32, 32, 3), _conditioning())
    message = str(info.value)
    assert "0 were given" in message
    assert not re.search(r"frames to -\d", message), message


def test_extra_frames_are_trimmed_with_a_note():
    frames = _frames(7)
    prepared = prepare_driving_video(frames, _conditioning(), source_fps=8.0)
    assert prepared.tensor.shape == (1, 3, 5, 32, 32)
    assert prepared.notes == ["used the first 5 of 7 frames (the clip length is 4k+1 = 5)"]
    expected = (frames[:5] * 255).round() / 127.5 - 1
    torch.testing.assert_close(prepared.tensor[0].permute(1, 2, 3, 0), expected, atol=1e-6, rtol=0)


def test_exact_frames_are_used_as_given():
    prepared = prepare_driving_video(_frames(5), _conditioning(), source_fps=8.0)
    assert prepared.message == "used as given"
    assert prepared.tensor.min() >= -1 and prepared.tensor.max() <= 1


def test_other_size_is_cropped_and_resized_with_a_note():
    frames = torch.zeros(5, 40, 48, 3)
    frames[..., 0] = 1.0  # pure red survives crop + resize
    prepared = prepare_driving_video(frames, _conditioning(), source_fps=8.0)
    assert prepared.tensor.shape == (1, 3, 5, 32, 32)
    assert prepared.notes == ["center-cropped and resized 48x40 -> 32x32"]
    assert torch.allclose(prepared.tensor[0, 0], torch.ones(5, 32, 32))
    assert torch.allclose(prepared.tensor[0, 1:], -torch.ones(2, 5, 32, 32))


def test_bad_frame_layout_is_refused():
    with pytest.raises(InputError, match="IMAGE"):
        prepare_driving_video(torch.zeros(5, 3, 32, 32), _conditioning())


def test_held_audio_has_the_pipeline_latent_shape(tiny_pipe, tiny_cond, clip):
    wave = _sine(440, 22050, 30000).reshape(1, 1, -1).repeat(1, 2, 1)
    held, message = held_audio(tiny_pipe, wave, 22050, tiny_cond, mode="renoise")
    assert isinstance(held, HeldStream) and held.modality == "audio" and held.mode == "renoise"
    assert tuple(held.latents.shape) == tiny_pipe.latent_shapes(**clip)[1]
    assert "resampled 22050 Hz -> 16000 Hz" in message and "mixed 2 channels" in message
    out = tiny_pipe.sample(tiny_cond, seed=1, steps=1, guidance=None, held=held)
    assert torch.equal(out.audio, held.latents)


def test_held_video_has_the_pipeline_latent_shape(tiny_pipe, tiny_cond, clip):
    held, message = held_video(tiny_pipe, _frames(9, 48, 48), tiny_cond)
    assert held.modality == "video" and held.mode == "clean"
    assert tuple(held.latents.shape) == tiny_pipe.latent_shapes(**clip)[0]
    assert "first 5 of 9" in message and "48x48 -> 32x32" in message


def test_held_inputs_refuse_an_unknown_mode(tiny_pipe, tiny_cond):
    with pytest.raises(InputError, match="mode"):
        held_video(tiny_pipe, _frames(5), tiny_cond, mode="sticky")
    with pytest.raises(InputError, match="mode"):
        held_audio(tiny_pipe, torch.zeros(1, WANTED), RATE, tiny_cond, mode="sticky")


# --- issue 9, item 6: a source video at another frame rate ----------------------------------------


def _numbered(count, size=32):
    """Frames whose red value encodes their index (i / 255), to see which source frame was taken."""
    frames = torch.zeros(count, size, size, 3)
    frames[..., 0] = torch.arange(count).float().div(255).view(-1, 1, 1)
    return frames


def _taken(prepared) -> list:
    red = prepared.tensor[0, 0, :, 0, 0]  # [F'] in [-1, 1]
    return ((red + 1) * 127.5).round().long().tolist()


def test_60fps_source_is_taken_at_the_clip_rate():
    """Issue 9: a 60 fps video gave "used the first 49 of 60 frames" and played 2.5x slower.
    At 24 fps each clip frame i shows the source frame nearest to i/24 s: index round(2.5 i)."""
    prepared = prepare_driving_video(_numbered(130), _conditioning(num_frames=49, video_fps=24.0), source_fps=60.0)
    taken = _taken(prepared)
    assert len(taken) == 49
    assert taken[:6] == [0, 3, 5, 8, 10, 13]  # floor(2.5 i + 1/2)
    assert taken[-1] == 120  # 48 / 24 s = 2 s -> source frame 120
    assert prepared.notes == ["took 49 frames at the clip's 24 fps from the 60 fps video (nearest frame at each clip "
                              "time, source frames 0..120), covering 2.04 s of its 2.17 s"]


def test_slower_source_repeats_frames():
    prepared = prepare_driving_video(_numbered(10), _conditioning(num_frames=9, video_fps=24.0), source_fps=12.0)
    assert _taken(prepared) == [0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_source_too_short_at_its_own_rate_is_refused_with_the_usable_length():
    # 60 frames at 60 fps is 1 s; a 49-frame clip at 24 fps needs 2.04 s.
    with pytest.raises(InputError) as info:
        prepare_driving_video(_numbered(60), _conditioning(num_frames=49, video_fps=24.0), source_fps=60.0)
    message = str(info.value)
    assert "the clip is 49 frames at 24 fps (2.04 s) but the video has 60 frames at 60 fps (1.00 s)" in message
    assert "set the conditioner's frames to 21 or fewer" in message  # 21 frames at 24 fps: source frame 50 < 60
    prepare_driving_video(_numbered(60), _conditioning(num_frames=21, video_fps=24.0), source_fps=60.0)
    with pytest.raises(InputError):
        prepare_driving_video(_numbered(60), _conditioning(num_frames=25, video_fps=24.0), source_fps=60.0)


def test_unknown_source_rate_is_said_in_the_notes():
    prepared = prepare_driving_video(_numbered(60), _conditioning(num_frames=49, video_fps=24.0))
    assert _taken(prepared) == list(range(49))
    assert prepared.notes[0] == "used the first 49 of 60 frames (the clip length is 4k+1 = 49)"
    assert prepared.notes[1].startswith("source_fps not given: one video frame per clip frame, as if the video were "
                                        "at the clip's 24 fps")
    with pytest.raises(InputError, match="source_fps must be 0"):
        prepare_driving_video(_numbered(60), _conditioning(), source_fps=-1.0)
