"""Denoise (restyling a clip): MOVA's encoders make the init clip, each stream starts from it noised to the first
sigma of its own (shortened) schedule, denoise 1 is plain sampling exactly, 0 keeps the stream, and bad inputs
are refused with a message before anything runs."""

import pytest
import torch

from mova_model.sampling import sampler as sampler_module
from mova_model.sampling.drivers import encode_clip
from mova_model.sampling.guidance import GuidanceConfig
from mova_model.sampling.pipeline import InputError
from mova_model.sampling.sampler import HeldStream, seeded_noise
from mova_model.sampling.schedules import SOLVERS, ScheduleOptions, joint_schedule

ONE_PASS = GuidanceConfig(text_scale=1.0)
STEPS = 3


@pytest.fixture(scope="module")
def frames():
    return torch.rand(5, 40, 48, 3, generator=torch.Generator().manual_seed(1))  # another size: cropped and resized


@pytest.fixture(scope="module")
def init(tiny_pipe, tiny_cond, frames):
    wave = torch.sin(torch.linspace(0, 600, 11025)).reshape(1, 1, -1) * 0.3
    latents, notes = encode_clip(tiny_pipe, frames, tiny_cond, wave, 22050)
    assert "resampled 22050 Hz" in notes and "center-cropped and resized 48x40 -> 32x32" in notes
    return latents


@pytest.fixture
def starts(monkeypatch):
    """The first sample each solver state is given, per stream (video first)."""
    seen = []
    original = sampler_module.make_solver

    def recording(name, schedule, num_train_timesteps=1000):
        state = original(name, schedule, num_train_timesteps)
        inner = state.step

        def step(velocity, sample):
            if state.index == 0:
                seen.append((schedule, sample.clone()))
            return inner(velocity, sample)

        state.step = step
        return state

    monkeypatch.setattr(sampler_module, "make_solver", recording)
    return seen


def test_encode_clip_uses_the_drivers_encoders(tiny_pipe, tiny_cond, frames, init):
    video_shape, audio_shape = tiny_pipe.latent_shapes(32, 32, 5, 8.0)
    assert tuple(init.video.shape) == video_shape and tuple(init.audio.shape) == audio_shape and init.has_audio
    from mova_model.sampling.drivers import held_video

    held, _ = held_video(tiny_pipe, frames, tiny_cond)
    assert torch.equal(init.video, held.latents)
    silent, notes = encode_clip(tiny_pipe, frames, tiny_cond)
    assert not silent.has_audio and torch.equal(silent.audio, torch.zeros(audio_shape)) and "audio: none given" in notes


@pytest.mark.parametrize("solver", SOLVERS)
def test_denoise_1_is_plain_sampling_exactly(tiny_pipe, tiny_cond, init, solver):
    options = ScheduleOptions(solver)
    plain = tiny_pipe.sample(tiny_cond, seed=4, steps=STEPS, guidance=ONE_PASS, schedule=options)
    restyled = tiny_pipe.sample(tiny_cond, seed=4, steps=STEPS, guidance=ONE_PASS, schedule=options, init=init,
                                denoise=1.0)
    assert torch.equal(plain.video, restyled.video) and torch.equal(plain.audio, restyled.audio)


def test_denoise_0_returns_the_input_unchanged_without_running_the_model(fresh_pipe, tiny_cond, init):
    out = fresh_pipe.sample(tiny_cond, seed=4, steps=STEPS, init=init, denoise=0.0)
    assert torch.equal(out.video, init.video) and torch.equal(out.audio, init.audio)
    assert sum(fresh_pipe.cache.materialized.values()) == 0


@pytest.mark.parametrize("solver", SOLVERS)
def test_each_stream_starts_from_the_init_noised_to_its_first_sigma(tiny_pipe, tiny_cond, clip, init, starts, solver):
    options = ScheduleOptions(solver)
    seen = []
    tiny_pipe.sample(tiny_cond, seed=4, steps=STEPS, guidance=ONE_PASS, schedule=options, init=init, denoise=0.6,
                     audio_denoise=0.3, callback=seen.append)
    expected = joint_schedule(tiny_pipe.configs.scheduler, options, STEPS, 0.6, 0.3)
    video_noise, audio_noise = seeded_noise(4, *tiny_pipe.latent_shapes(**clip))
    (video_schedule, video_start), (audio_schedule, audio_start) = starts
    assert torch.equal(video_schedule.sigmas, expected.video.sigmas)
    assert torch.equal(audio_schedule.sigmas, expected.audio.sigmas)
    for start, clean, noise, sigma in ((video_start, init.video, video_noise, expected.video.sigmas[0]),
                                       (audio_start, init.audio, audio_noise, expected.audio.sigmas[0])):
        assert 0 < sigma < 1
        assert torch.equal(start, (1 - sigma) * clean + sigma * noise)
    assert [s.video_timestep for s in seen] == expected.video.timesteps.tolist()
    assert [s.audio_timestep for s in seen] == expected.audio.timesteps.tolist()
    assert expected.video.timesteps[0] < 1000 and expected.audio.timesteps[0] < expected.video.timesteps[0]


def test_video_kept_and_sound_regenerated_is_v2a(tiny_pipe, tiny_cond, init):
    """Strength 0 on one stream keeps it exactly: the same run as holding it clean (V2A)."""
    restyled = tiny_pipe.sample(tiny_cond, seed=4, steps=STEPS, guidance=ONE_PASS, init=init, denoise=0.0,
                                audio_denoise=1.0)
    v2a = tiny_pipe.sample(tiny_cond, seed=4, steps=STEPS, guidance=ONE_PASS, held=HeldStream("video", init.video))
    assert torch.equal(restyled.video, init.video)
    assert torch.equal(restyled.video, v2a.video) and torch.equal(restyled.audio, v2a.audio)


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_sound_kept_and_video_reworked(tiny_pipe, tiny_cond, init, solver):
    out = tiny_pipe.sample(tiny_cond, seed=4, steps=STEPS, guidance=ONE_PASS, schedule=ScheduleOptions(solver),
                           init=init, denoise=0.5, audio_denoise=0.0)
    assert torch.equal(out.audio, init.audio) and not torch.equal(out.video, init.video)
    assert torch.isfinite(out.video).all()


def test_a_clip_without_sound_generates_it_from_noise(tiny_pipe, tiny_cond, clip, frames, starts):
    silent, _ = encode_clip(tiny_pipe, frames, tiny_cond)
    tiny_pipe.sample(tiny_cond, seed=4, steps=STEPS, guidance=ONE_PASS, init=silent, denoise=0.5)
    _, audio_noise = seeded_noise(4, *tiny_pipe.latent_shapes(**clip))
    assert torch.equal(starts[1][1], audio_noise)
    with pytest.raises(InputError, match="no sound to keep or rework"):
        tiny_pipe.sample(tiny_cond, seed=4, steps=STEPS, init=silent, denoise=0.5, audio_denoise=0.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(denoise=1.5), "denoise must be between 0 and 1"),
    (dict(denoise=0.5, audio_denoise=-0.2), "audio denoise must be between 0 and 1"),
    (dict(schedule=ScheduleOptions("ddim")), r"solver = 'ddim' is not known; choose one of: euler, unipc, dpm\+\+"),
    (dict(schedule=ScheduleOptions(sigmas=(1.0, 0.4, 0.6, 0.0))), "strictly decreasing"),
    (dict(schedule=ScheduleOptions(sigmas=(1.0, 0.4))), "must end at 0"),
    (dict(schedule=ScheduleOptions(sigmas=(1.0, 0.4, 0.0)), denoise=0.5), "custom sigma list sets where sampling starts"),
    (dict(schedule=ScheduleOptions(shift=-1.0)), "shift must be a number greater than 0"),
])
def test_bad_settings_are_refused_before_any_work(fresh_pipe, tiny_cond, init, kwargs, message):
    with pytest.raises(InputError, match=message):
        fresh_pipe.sample(tiny_cond, seed=4, steps=STEPS, init=init, **kwargs)
    assert sum(fresh_pipe.cache.materialized.values()) == 0


def test_denoise_without_a_clip_and_a_clip_of_another_size_are_refused(fresh_pipe, tiny_cond, init):
    with pytest.raises(InputError, match="reworks an existing clip: connect one"):
        fresh_pipe.sample(tiny_cond, seed=4, steps=STEPS, denoise=0.5)
    other = fresh_pipe.prepare_conditioning("x", "", None, width=48, height=32, num_frames=9, video_fps=8.0)
    with pytest.raises(InputError, match=r"the init clip is 32x32, 5 frames .* but this clip is 48x32, 9 frames"):
        fresh_pipe.sample(other, seed=4, steps=STEPS, init=init, denoise=0.5)
    assert sum(fresh_pipe.cache.materialized[n] for n in ("video_dit", "video_dit_2", "audio_dit")) == 0


def test_a_sigma_list_starts_from_the_init_at_its_first_sigma(tiny_pipe, tiny_cond, clip, init, starts):
    """Core's way (SamplerCustom with SplitSigmas): the list's first sigma says how far the clip is noised."""
    options = ScheduleOptions("unipc", sigmas=(0.8, 0.5, 0.2, 0.0))
    tiny_pipe.sample(tiny_cond, seed=4, steps=STEPS, guidance=ONE_PASS, schedule=options, init=init)
    video_noise, audio_noise = seeded_noise(4, *tiny_pipe.latent_shapes(**clip))
    sigma = torch.tensor(0.8)
    assert torch.equal(starts[0][1], (1 - sigma) * init.video + sigma * video_noise)
    assert torch.equal(starts[1][1], (1 - sigma) * init.audio + sigma * audio_noise)
