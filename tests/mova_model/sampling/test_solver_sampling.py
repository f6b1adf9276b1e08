"""Every solver inside the joint sampler, with every mechanism around it: the expert switch at the same boundary
timestep, dual CFG, held streams (A2V, V2A, held ranges as continuation uses them), keyframes and the step cache.

The sampler's solver states are recorded (a wrapper around `sampler.make_solver`): each free stream is stepped once
per step, a held stream never, and replaying the recorded velocities through fresh solver states reproduces the
sampler's result bit for bit, so the solver really drives the run with the mechanism in place.
"""

import pytest
import torch

from mova_model.sampling import sampler as sampler_module
from mova_model.sampling.guidance import GuidanceConfig
from mova_model.sampling.sampler import HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT, HeldStream
from mova_model.sampling.schedules import SOLVERS, ScheduleOptions, joint_schedule
from mova_model.sampling.solvers import make_solver
from mova_model.sampling.step_cache import StepCacheConfig

STEPS = 4
ONE_PASS = GuidanceConfig(text_scale=1.0)
DUAL = GuidanceConfig(text_scale=5.0, bridge_scale=3.5)


class Recorder:
    """Wraps every solver the sampler makes and records (velocity, sample in, sample out) per step."""

    def __init__(self, monkeypatch):
        self.states = []
        original = sampler_module.make_solver

        def recording(name, schedule, num_train_timesteps=1000):
            state = original(name, schedule, num_train_timesteps)
            calls = []
            self.states.append((name, schedule, calls))
            inner = state.step

            def step(velocity, sample):
                out = inner(velocity, sample)
                calls.append((velocity.clone(), sample.clone(), out.clone()))
                return out

            state.step = step
            return state

        monkeypatch.setattr(sampler_module, "make_solver", recording)

    def streams(self):
        (video_name, video_schedule, video_calls), (audio_name, audio_schedule, audio_calls) = self.states[-2:]
        return {"video": (video_name, video_schedule, video_calls), "audio": (audio_name, audio_schedule, audio_calls)}

    def assert_replays(self, stream: str):
        """Fresh solver state fed the recorded velocities and inputs gives the recorded outputs exactly."""
        name, schedule, calls = self.streams()[stream]
        fresh = make_solver(name, schedule)
        for velocity, sample, out in calls:
            assert torch.equal(fresh.step(velocity, sample), out)


@pytest.fixture
def recorder(monkeypatch):
    return Recorder(monkeypatch)


def _expected_experts(pipe, timesteps):
    boundary = pipe.configs.boundary_timestep
    switch = next((i for i, t in enumerate(timesteps.tolist()) if t < boundary), len(timesteps))
    return [HIGH_NOISE_EXPERT] * switch + [LOW_NOISE_EXPERT] * (len(timesteps) - switch)


@pytest.mark.parametrize("solver", SOLVERS)
def test_solver_drives_both_streams_and_the_expert_switch_follows_the_boundary(tiny_pipe, tiny_cond, recorder, solver):
    seen = []
    out = tiny_pipe.sample(tiny_cond, seed=3, steps=STEPS, guidance=ONE_PASS, schedule=ScheduleOptions(solver),
                           callback=seen.append)
    streams = recorder.streams()
    for stream in ("video", "audio"):
        name, schedule, calls = streams[stream]
        assert name == solver and len(calls) == STEPS
        recorder.assert_replays(stream)
    assert torch.equal(streams["video"][2][-1][2], out.video) and torch.equal(streams["audio"][2][-1][2], out.audio)
    video_timesteps = streams["video"][1].timesteps
    assert tiny_pipe.last_stats.experts == _expected_experts(tiny_pipe, video_timesteps)
    assert [s.video_timestep for s in seen] == video_timesteps.tolist()
    assert HIGH_NOISE_EXPERT in tiny_pipe.last_stats.experts and LOW_NOISE_EXPERT in tiny_pipe.last_stats.experts


def test_euler_options_are_the_official_run_bit_for_bit(tiny_pipe, tiny_cond):
    plain = tiny_pipe.sample(tiny_cond, seed=3, steps=STEPS, guidance=DUAL)
    explicit = tiny_pipe.sample(tiny_cond, seed=3, steps=STEPS, guidance=DUAL, schedule=ScheduleOptions("euler"))
    assert torch.equal(plain.video, explicit.video) and torch.equal(plain.audio, explicit.audio)


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_dual_cfg_runs_three_passes_with_each_solver(tiny_pipe, tiny_cond, recorder, solver):
    text = tiny_pipe.sample(tiny_cond, seed=3, steps=STEPS, guidance=GuidanceConfig(text_scale=5.0),
                            schedule=ScheduleOptions(solver))
    dual = tiny_pipe.sample(tiny_cond, seed=3, steps=STEPS, guidance=DUAL, schedule=ScheduleOptions(solver))
    assert tiny_pipe.last_stats.passes_per_step == [3] * STEPS
    recorder.assert_replays("video")
    recorder.assert_replays("audio")
    assert not torch.equal(text.video, dual.video)


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
@pytest.mark.parametrize("modality", ["audio", "video"])
@pytest.mark.parametrize("mode", ["clean", "renoise"])
def test_a_held_stream_is_never_stepped(tiny_pipe, tiny_cond, clip, recorder, solver, modality, mode):
    video_shape, audio_shape = tiny_pipe.latent_shapes(**clip)
    latents = torch.randn(video_shape if modality == "video" else audio_shape, generator=torch.Generator().manual_seed(9))
    out = tiny_pipe.sample(tiny_cond, seed=3, steps=STEPS, guidance=ONE_PASS, schedule=ScheduleOptions(solver),
                           held=HeldStream(modality, latents, mode))
    free = "audio" if modality == "video" else "video"
    streams = recorder.streams()
    assert streams[modality][2] == [] and len(streams[free][2]) == STEPS
    recorder.assert_replays(free)
    assert torch.equal(getattr(out, modality), latents)


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_held_ranges_stay_exact_and_the_rest_is_solved(tiny_pipe, recorder, solver):
    cond = tiny_pipe.prepare_conditioning("rain on a window", "", None, width=32, height=32, num_frames=9, video_fps=8.0)
    video_shape, audio_shape = tiny_pipe.latent_shapes(32, 32, 9, 8.0)
    g = torch.Generator().manual_seed(4)
    holds = [HeldStream("video", torch.randn(1, video_shape[1], 2, *video_shape[3:], generator=g), "clean", offset=0),
             HeldStream("audio", torch.randn(1, audio_shape[1], 40, generator=g), "clean", offset=0)]
    seen = []
    out = tiny_pipe.sample(cond, seed=1, steps=STEPS, guidance=ONE_PASS, schedule=ScheduleOptions(solver), held=holds,
                           callback=lambda info: seen.append(torch.equal(info.video_latents[:, :, :2], holds[0].latents)))
    assert seen == [True] * STEPS
    assert torch.equal(out.video[:, :, :2], holds[0].latents) and torch.equal(out.audio[:, :, :40], holds[1].latents)
    assert all(len(calls) == STEPS for _, _, calls in recorder.streams().values())
    recorder.assert_replays("video")


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_step_cache_works_with_each_solver(tiny_pipe, tiny_cond, recorder, solver):
    cache = StepCacheConfig(threshold=1e6, start_percent=0.0)
    out = tiny_pipe.sample(tiny_cond, seed=5, steps=8, guidance=DUAL, schedule=ScheduleOptions(solver), step_cache=cache)
    assert tiny_pipe.last_stats.skipped_passes > 0
    switch = tiny_pipe.last_stats.experts.index(LOW_NOISE_EXPERT)
    assert tiny_pipe.last_stats.skipped_per_step[switch] == 0  # reset at the expert switch, as with euler
    assert all(len(calls) == 8 for _, _, calls in recorder.streams().values())
    recorder.assert_replays("video")
    assert torch.isfinite(out.video).all() and torch.isfinite(out.audio).all()


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_keyframes_condition_every_solver(tiny_pipe, solver):
    import numpy as np

    white = np.full((32, 32, 3), 255, np.uint8)
    dark = np.zeros((32, 32, 3), np.uint8)
    cond = tiny_pipe.prepare_conditioning("a door", "", white, width=32, height=32, num_frames=9, video_fps=8.0,
                                          last_image_uint8=dark)
    plain = tiny_pipe.prepare_conditioning("a door", "", white, width=32, height=32, num_frames=9, video_fps=8.0)
    options = ScheduleOptions(solver)
    a = tiny_pipe.sample(cond, seed=2, steps=3, guidance=ONE_PASS, schedule=options)
    b = tiny_pipe.sample(plain, seed=2, steps=3, guidance=ONE_PASS, schedule=options)
    assert not torch.equal(a.video, b.video)


def test_custom_sigmas_set_steps_and_timesteps(tiny_pipe, tiny_cond):
    seen = []
    tiny_pipe.sample(tiny_cond, seed=3, steps=50, guidance=ONE_PASS,
                     schedule=ScheduleOptions("euler", sigmas=(1.0, 0.95, 0.6, 0.0)), callback=seen.append)
    assert [s.video_timestep for s in seen] == pytest.approx([1000.0, 950.0, 600.0])
    assert {s.total for s in seen} == {3}
    assert tiny_pipe.last_stats.experts == [HIGH_NOISE_EXPERT, HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT]


def test_shift_override_changes_the_timesteps(tiny_pipe, tiny_cond):
    seen = {}
    for shift in (None, 1.0):
        steps = []
        tiny_pipe.sample(tiny_cond, seed=3, steps=3, guidance=ONE_PASS, schedule=ScheduleOptions("unipc", shift=shift),
                         callback=steps.append)
        seen[shift] = [s.video_timestep for s in steps]
    config = tiny_pipe.configs.scheduler
    assert seen[None] == joint_schedule(config, ScheduleOptions("unipc"), 3).video.timesteps.tolist()
    assert seen[1.0] == [999.0, 666.0, 333.0]


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_extend_with_each_solver_keeps_the_clean_overlap_exact(tiny_pipe, recorder, solver):
    from mova_model.sampling.continuation import extend

    options = ScheduleOptions(solver, shift=3.0)
    first_cond = tiny_pipe.prepare_conditioning("a dog barks", "", None, width=32, height=32, num_frames=13, video_fps=8.0)
    first = tiny_pipe.sample(first_cond, seed=7, steps=3, guidance=ONE_PASS, schedule=options)
    next_cond = tiny_pipe.prepare_conditioning("a car passes", "", None, width=32, height=32, num_frames=13, video_fps=8.0)
    ext = extend(tiny_pipe, first, next_cond, overlap=5, seed=8, steps=3, guidance=ONE_PASS, schedule=options)
    assert recorder.streams()["video"][0] == solver and len(recorder.streams()["video"][2]) == 3
    m, o, big_m = ext.seam.overlap_latents, ext.seam.audio_latent, ext.seam.audio_overlap
    assert torch.equal(ext.segment.video[:, :, 1:m + 1], first.video[:, :, -m:])
    assert torch.equal(ext.segment.audio[:, :, :big_m], first.audio[:, :, o:o + big_m])
    assert ext.joined.num_frames == 13 + 13 - 5


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_solvers_run_as_comfyui_runs_nodes(tiny_pipe, tiny_cond, clip, solver):
    """ComfyUI samples inside `torch.inference_mode()` on its own worker thread: same latents as here."""
    import threading

    video_shape, audio_shape = tiny_pipe.latent_shapes(**clip)
    init = tiny_pipe.sample(tiny_cond, seed=1, steps=2, guidance=ONE_PASS)
    settings = dict(seed=3, steps=3, guidance=DUAL, schedule=ScheduleOptions(solver), init=init, denoise=0.7)
    here = tiny_pipe.sample(tiny_cond, **settings)
    result = {}

    def worker():
        with torch.inference_mode():
            result["latents"] = tiny_pipe.sample(tiny_cond, **settings)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=300)
    there = result["latents"]
    assert torch.equal(there.video, here.video) and torch.equal(there.audio, here.audio)
