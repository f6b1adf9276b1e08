"""MovaPipeline on the tiny checkpoint: seeds and injected noise, held streams (A2V / V2A), geometry checks,
decoding shapes, cancellation."""

import numpy as np
import pytest
import torch

from mova_model.sampling.guidance import GuidanceConfig
from mova_model.sampling.pipeline import InputError, JointLatents, validate_geometry
from mova_model.sampling.sampler import HeldStream, seeded_noise

ONE_PASS = GuidanceConfig(text_scale=1.0, bridge_scale=1.0)
STEPS = 2  # step 0 on the high-noise expert, step 1 on the low-noise one


@pytest.fixture(scope="module")
def baseline(tiny_pipe, tiny_cond):
    return tiny_pipe.sample(tiny_cond, seed=7, steps=STEPS, guidance=ONE_PASS)


def _randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# -- seeds and noise --------------------------------------------------------------------------------------
def test_latent_shapes_of_the_test_clip(tiny_pipe, clip):
    # z 4, (5-1)//4+1 = 2 latent frames, 32/8 = 4; audio int(16000*5/8) = 10000 samples, hop 160 -> 63
    assert tiny_pipe.latent_shapes(**clip) == ((1, 4, 2, 4, 4), (1, 8, 63))
    assert tiny_pipe.sample_rate == 16000


def test_same_seed_same_latents_other_seed_different(tiny_pipe, tiny_cond, baseline):
    again = tiny_pipe.sample(tiny_cond, seed=7, steps=STEPS, guidance=ONE_PASS)
    other = tiny_pipe.sample(tiny_cond, seed=8, steps=STEPS, guidance=ONE_PASS)
    assert isinstance(baseline, JointLatents)
    assert baseline.video.shape == (1, 4, 2, 4, 4) and baseline.audio.shape == (1, 8, 63)
    assert baseline.video.dtype == baseline.audio.dtype == torch.float32
    assert torch.isfinite(baseline.video).all() and torch.isfinite(baseline.audio).all()
    assert torch.equal(again.video, baseline.video) and torch.equal(again.audio, baseline.audio)
    assert not torch.allclose(other.video, baseline.video)
    assert not torch.allclose(other.audio, baseline.audio)


def test_injected_noise_is_used(tiny_pipe, tiny_cond, clip, baseline):
    shapes = tiny_pipe.latent_shapes(**clip)
    same = tiny_pipe.sample(tiny_cond, seed=999, steps=STEPS, guidance=ONE_PASS, noise=seeded_noise(7, *shapes))
    assert torch.equal(same.video, baseline.video) and torch.equal(same.audio, baseline.audio)
    video_noise, audio_noise = seeded_noise(7, *shapes)
    changed_audio = tiny_pipe.sample(tiny_cond, seed=7, steps=STEPS, guidance=ONE_PASS,
                                     noise=(video_noise, audio_noise * 0.5))
    assert not torch.allclose(changed_audio.audio, baseline.audio)


def test_injected_noise_of_the_wrong_shape_is_refused(tiny_pipe, tiny_cond):
    with pytest.raises(InputError, match=r"\[1, 4, 2, 4, 4\].*\[1, 8, 63\]"):
        tiny_pipe.sample(tiny_cond, steps=1, noise=(torch.zeros(1, 4, 2, 4, 5), torch.zeros(1, 8, 63)))


# -- held streams -----------------------------------------------------------------------------------------
def _run_held(pipe, cond, held, seed=21):
    seen = []
    out = pipe.sample(cond, seed=seed, steps=STEPS, guidance=ONE_PASS, held=held, callback=seen.append)
    return out, seen


@pytest.mark.parametrize("mode", ["clean", "renoise"])
def test_held_audio_a2v(tiny_pipe, tiny_cond, clip, mode):
    _, audio_shape = tiny_pipe.latent_shapes(**clip)
    held_a, held_b = _randn(audio_shape, 1), _randn(audio_shape, 2)
    out, seen = _run_held(tiny_pipe, tiny_cond, HeldStream("audio", held_a.clone(), mode))
    assert torch.equal(out.audio, held_a)
    assert len(seen) == STEPS and all(torch.equal(s.audio_latents, held_a) for s in seen)
    if mode == "clean":
        assert [s.audio_timestep for s in seen] == [0.0] * STEPS
    else:
        assert [s.audio_timestep for s in seen] == pytest.approx(tiny_pipe.scheduler.timesteps_for(STEPS)[:, 1].tolist())
    again, _ = _run_held(tiny_pipe, tiny_cond, HeldStream("audio", held_a.clone(), mode))
    other, _ = _run_held(tiny_pipe, tiny_cond, HeldStream("audio", held_b, mode))
    assert torch.equal(again.video, out.video)
    assert not torch.allclose(other.video, out.video)
    assert torch.equal(other.audio, held_b)


@pytest.mark.parametrize("mode", ["clean", "renoise"])
def test_held_video_v2a(tiny_pipe, tiny_cond, clip, mode):
    video_shape, _ = tiny_pipe.latent_shapes(**clip)
    held_a, held_b = _randn(video_shape, 3), _randn(video_shape, 4)
    out, seen = _run_held(tiny_pipe, tiny_cond, HeldStream("video", held_a.clone(), mode))
    assert torch.equal(out.video, held_a)
    assert len(seen) == STEPS and all(torch.equal(s.video_latents, held_a) for s in seen)
    again, _ = _run_held(tiny_pipe, tiny_cond, HeldStream("video", held_a.clone(), mode))
    other, _ = _run_held(tiny_pipe, tiny_cond, HeldStream("video", held_b, mode))
    assert torch.equal(again.audio, out.audio)
    assert not torch.allclose(other.audio, out.audio)
    assert torch.equal(other.video, held_b)


def test_hold_modes_differ(tiny_pipe, tiny_cond, clip):
    _, audio_shape = tiny_pipe.latent_shapes(**clip)
    held = _randn(audio_shape, 5)
    clean, _ = _run_held(tiny_pipe, tiny_cond, HeldStream("audio", held, "clean"))
    renoise, _ = _run_held(tiny_pipe, tiny_cond, HeldStream("audio", held, "renoise"))
    assert not torch.allclose(clean.video, renoise.video)


def test_held_stream_validation(tiny_pipe, tiny_cond):
    with pytest.raises(ValueError):
        HeldStream("text", torch.zeros(1, 8, 63))
    with pytest.raises(ValueError):
        HeldStream("audio", torch.zeros(1, 8, 63), mode="hold")
    with pytest.raises(InputError, match=r"held audio latents must be \[1, 8, 63\].*\[1, 8, 40\]"):
        tiny_pipe.sample(tiny_cond, steps=1, held=HeldStream("audio", torch.zeros(1, 8, 40)))
    with pytest.raises(InputError, match=r"held video latents must be \[1, 4, 2, 4, 4\]"):
        tiny_pipe.sample(tiny_cond, steps=1, held=HeldStream("video", torch.zeros(1, 4, 3, 4, 4)))


# -- geometry, conditioning, decoding, cancellation -------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(width=40, height=32, num_frames=5, video_fps=8.0), "width must be a positive multiple of 16, got 40"),
    (dict(width=32, height=8, num_frames=5, video_fps=8.0), "height"),
    (dict(width=32, height=32, num_frames=6, video_fps=8.0), "frames must be 4k\\+1"),
    (dict(width=32, height=32, num_frames=5, video_fps=0.0), "fps must be greater than 0"),
])
def test_validate_geometry(kwargs, message):
    with pytest.raises(InputError, match=message):
        validate_geometry(**kwargs)


def test_bad_geometry_is_refused_before_anything_is_built(fresh_pipe):
    with pytest.raises(InputError, match="frames"):
        fresh_pipe.prepare_conditioning("hello", "", None, width=32, height=32, num_frames=4, video_fps=8.0)
    assert sum(fresh_pipe.cache.materialized.values()) == 0


def test_conditioning_of_the_test_clip(tiny_pipe, tiny_cond):
    assert tiny_cond.prompt_embeds.shape == tiny_cond.negative_prompt_embeds.shape == (1, 512, 32)
    assert tiny_cond.condition.shape == (1, 8, 2, 4, 4)
    assert tiny_cond.text_only
    assert not torch.equal(tiny_cond.prompt_embeds, tiny_cond.negative_prompt_embeds)
    # the mask channels: ones at latent frame 0, zeros after (official prepare_latents)
    assert torch.equal(tiny_cond.condition[:, :4, 0], torch.ones(1, 4, 4, 4))
    assert torch.equal(tiny_cond.condition[:, :4, 1], torch.zeros(1, 4, 4, 4))
    assert "text_encoder" not in tiny_pipe.cache.modules  # released after encoding


def test_prepare_image_checks_the_layout(tiny_pipe):
    with pytest.raises(InputError, match="RGB"):
        tiny_pipe.prepare_image(np.zeros((32, 32), dtype=np.uint8), 32, 32)
    image = tiny_pipe.prepare_image(np.full((20, 40, 3), 255, dtype=np.uint8), 32, 16)
    assert image.shape == (1, 3, 16, 32)
    assert torch.allclose(image, torch.ones_like(image))


def test_decode_shapes(tiny_pipe, baseline):
    frames = tiny_pipe.decode_video(baseline)
    assert frames.shape == (5, 32, 32, 3) and frames.dtype == torch.float32
    assert frames.min() >= 0 and frames.max() <= 1
    wave, rate = tiny_pipe.decode_audio(baseline)
    assert rate == 16000 and wave.shape == (1, 1, 63 * 160)
    assert torch.isfinite(wave).all()


def test_callback_can_cancel(tiny_pipe, tiny_cond):
    class Stop(Exception):
        pass

    def cancel(info):
        raise Stop(info.index)

    with pytest.raises(Stop):
        tiny_pipe.sample(tiny_cond, seed=1, steps=3, guidance=ONE_PASS, callback=cancel)
    assert tiny_pipe.last_stats.experts == ["video_dit"]  # stopped after the first step


# --- issue 9, item 6: a prompt cut at 512 tokens, an empty prompt --------------------------------


def _warnings(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("mova_model")]


def test_long_prompt_cut_at_512_tokens_is_reported(tiny_pipe, clip, caplog):
    """Issue 9: the tokenizer cut a long prompt at 512 tokens without a word."""
    words = " ".join(["the man walks"] * 200) + " and finally the dog barks loudly"  # ~600 words
    with caplog.at_level("WARNING"):
        cut = tiny_pipe.prepare_conditioning(words, "static, blurry", None, **clip)
    (note,) = _warnings(caplog)
    # 617 text tokens + </s>; the encoder keeps 511 + </s>: text token 512 onwards (106 tokens) is dropped.
    assert note == ("the prompt is 618 tokens but the UMT5 text encoder reads only the first 512 (the official limit): "
                    "everything from \"man walks the man walks the man walks the man walks the …\" on (106 tokens) is "
                    "ignored. Shorten it; MOVA's captions are about 250 words.")
    # What the note says is what happened: the embedding is the same as for the prompt cut by hand.
    caplog.clear()
    with caplog.at_level("WARNING"):
        ok = tiny_pipe.prepare_conditioning("the man walks", "static, blurry", None, **clip)
    assert _warnings(caplog) == []
    assert cut.prompt_embeds.shape == ok.prompt_embeds.shape


def test_empty_prompt_is_reported(tiny_pipe, clip, caplog):
    with caplog.at_level("WARNING"):
        tiny_pipe.prepare_conditioning("  \n ", "static, blurry", None, **clip)
    assert _warnings(caplog) == ["the prompt is empty: the clip is generated from the first frame and the negative "
                                 "prompt alone; describe what happens and what is heard"]
