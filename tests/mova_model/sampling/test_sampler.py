"""The sampling loop on the tiny checkpoint: seeded noise, expert switch, lazy experts, guidance passes, and
bit-for-bit agreement with the official text-CFG loop written out by hand."""

import json
import math

import pytest
import torch
from safetensors import safe_open

from mova_model.memory.layout import align_tensors_
from mova_model.network.denoiser import BridgeScales, joint_forward
from mova_model.sampling.guidance import GuidanceConfig, required_branches
from mova_model.sampling.sampler import HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT, HeldStream, seeded_noise

import codec_parity_helpers as H  # tests/ is on pytest's pythonpath

ONE_PASS = GuidanceConfig(text_scale=1.0, bridge_scale=1.0)


# -- seeded noise -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 42, 2 ** 31 + 5])
def test_seeded_noise_matches_manual_seed_then_two_randn(seed):
    video_shape, audio_shape = (1, 4, 2, 4, 4), (1, 8, 63)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        expected_video = torch.randn(video_shape)
        expected_audio = torch.randn(audio_shape)
    video, audio = seeded_noise(seed, video_shape, audio_shape)
    assert video.dtype == audio.dtype == torch.float32
    assert torch.equal(video, expected_video)
    assert torch.equal(audio, expected_audio)


def test_seeded_noise_leaves_the_global_rng_alone():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    seeded_noise(7, (1, 4, 2, 4, 4), (1, 8, 63))
    assert torch.equal(torch.get_rng_state(), state)
    first = torch.randn(5)
    torch.manual_seed(1234)
    assert torch.equal(first, torch.randn(5))


def test_seeded_noise_reproduces_the_official_recorded_noise(shared_dir):
    parity = shared_dir / "parity"
    case = next(c for c in json.loads((parity / "index.json").read_text())["cases"] if c["name"] == "e2e_i2va")
    with safe_open(str(parity / case["outputs"]), framework="pt") as handle:
        recorded_video = handle.get_tensor("initial_video_noise")
        recorded_audio = handle.get_tensor("initial_audio_noise")
    seed = case["args"]["seed"]
    video, audio = seeded_noise(seed, tuple(recorded_video.shape), tuple(recorded_audio.shape))
    torch.manual_seed(seed)  # the official order, run on this CPU: one randn per stream after manual_seed
    official_video, official_audio = torch.randn(recorded_video.shape), torch.randn(recorded_audio.shape)
    assert torch.equal(video, official_video) and torch.equal(audio, official_audio)
    if H.SCALAR_ATEN_KERNELS:
        # the scalar normal sampler (ATEN_CPU_CAPABILITY=default) differs from the vectorized one the recording
        # was made with: measured up to 1.2e-6 on an AMD EPYC, in 127 of 288 values
        torch.testing.assert_close(video, recorded_video, atol=2e-6, rtol=0)
        torch.testing.assert_close(audio, recorded_audio, atol=2e-6, rtol=0)
    else:
        assert torch.equal(video, recorded_video)
        assert torch.equal(audio, recorded_audio)


# -- held stream validation -------------------------------------------------------------------------------
def test_held_stream_rejects_bad_modality_and_mode():
    latents = torch.zeros(1, 8, 63)
    with pytest.raises(ValueError, match="modality"):
        HeldStream("image", latents)
    with pytest.raises(ValueError, match="mode"):
        HeldStream("audio", latents, mode="frozen")
    assert HeldStream("audio", latents).mode == "clean"
    assert HeldStream("video", torch.zeros(1, 4, 2, 4, 4), mode="renoise").mode == "renoise"


# -- expert switch ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 6])
def test_expert_switches_at_the_first_timestep_below_the_boundary(tiny_pipe, tiny_cond, steps):
    seen = []
    tiny_pipe.sample(tiny_cond, seed=3, steps=steps, guidance=ONE_PASS, callback=seen.append)
    video_t = tiny_pipe.scheduler.timesteps_for(steps)[:, 0].tolist()
    boundary = tiny_pipe.configs.boundary_timestep
    assert boundary == pytest.approx(900.0)  # tiny boundary_ratio 0.9 x 1000 train steps
    switch = next((i for i, t in enumerate(video_t) if t < boundary), steps)
    expected = [HIGH_NOISE_EXPERT] * switch + [LOW_NOISE_EXPERT] * (steps - switch)
    assert tiny_pipe.last_stats.experts == expected
    assert tiny_pipe.scheduler.expert_switch_index(torch.tensor(video_t), boundary) == switch
    assert [s.expert for s in seen] == expected
    assert [s.index for s in seen] == list(range(steps))
    assert {s.total for s in seen} == {steps}
    assert [s.video_timestep for s in seen] == pytest.approx(video_t)


def test_schedule_covers_both_sides_of_the_boundary(tiny_pipe):
    """The step counts above really exercise a switch at different positions."""
    boundary = tiny_pipe.configs.boundary_timestep
    switches = {n: tiny_pipe.scheduler.expert_switch_index(tiny_pipe.scheduler.timesteps_for(n)[:, 0], boundary)
                for n in (1, 2, 3, 6)}
    assert switches == {1: 1, 2: 1, 3: 2, 6: 3}


# -- lazy experts -----------------------------------------------------------------------------------------
def test_low_noise_expert_is_never_built_when_no_step_is_below_the_boundary(fresh_pipe, tiny_cond):
    fresh_pipe.sample(tiny_cond, seed=1, steps=1, guidance=ONE_PASS)  # only t = 1000
    assert fresh_pipe.last_stats.experts == [HIGH_NOISE_EXPERT]
    assert fresh_pipe.cache.materialized[HIGH_NOISE_EXPERT] == 1
    assert fresh_pipe.cache.materialized[LOW_NOISE_EXPERT] == 0
    assert LOW_NOISE_EXPERT not in fresh_pipe.cache.modules


def test_each_expert_is_built_once_and_the_high_noise_one_released(fresh_pipe, tiny_cond):
    fresh_pipe.sample(tiny_cond, seed=1, steps=4, guidance=ONE_PASS)
    built = fresh_pipe.cache.materialized
    assert (built[HIGH_NOISE_EXPERT], built[LOW_NOISE_EXPERT], built["audio_dit"], built["dual_tower_bridge"]) == (1, 1, 1, 1)
    # both experts are dropped by the end of the run (the next run starts with the high-noise one; keeping the
    # low-noise one would put two experts on the device while that one is built); the rest stays built
    assert HIGH_NOISE_EXPERT not in fresh_pipe.cache.modules and LOW_NOISE_EXPERT not in fresh_pipe.cache.modules
    assert "audio_dit" in fresh_pipe.cache.modules and "dual_tower_bridge" in fresh_pipe.cache.modules


def test_high_noise_expert_is_never_built_for_a_clean_held_video(fresh_pipe, tiny_cond, clip):
    video_shape, _ = fresh_pipe.latent_shapes(**clip)
    held = HeldStream("video", torch.randn(video_shape, generator=torch.Generator().manual_seed(5)), mode="clean")
    fresh_pipe.sample(tiny_cond, seed=1, steps=2, guidance=ONE_PASS, held=held)
    assert fresh_pipe.last_stats.experts == [LOW_NOISE_EXPERT, LOW_NOISE_EXPERT]
    assert fresh_pipe.cache.materialized[HIGH_NOISE_EXPERT] == 0
    assert fresh_pipe.cache.materialized[LOW_NOISE_EXPERT] == 1


# -- guidance passes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, bridge, passes", [(1.0, 1.0, 1), (5.0, 1.0, 2), (3.5, 3.5, 2), (5.0, 3.5, 3)])
def test_passes_per_step_follow_the_guidance(tiny_pipe, tiny_cond, text, bridge, passes):
    guidance = GuidanceConfig(text_scale=text, bridge_scale=bridge)
    seen = []
    tiny_pipe.sample(tiny_cond, seed=2, steps=2, guidance=guidance, callback=seen.append)
    assert len(required_branches(guidance)) == passes
    assert tiny_pipe.last_stats.passes_per_step == [passes, passes]
    assert [s.passes for s in seen] == [passes, passes]


def test_invalid_guidance_and_steps_are_refused_before_any_pass(fresh_pipe, tiny_cond):
    with pytest.raises(ValueError, match="text_scale"):
        fresh_pipe.sample(tiny_cond, seed=1, steps=1, guidance=GuidanceConfig(text_scale=math.nan))
    with pytest.raises(ValueError, match="steps"):
        fresh_pipe.sample(tiny_cond, seed=1, steps=0)
    assert sum(fresh_pipe.cache.materialized.values()) == 0


# -- agreement with the official loop and the dual-CFG formula --------------------------------------------
def _modules(pipe):
    """Built as the pipeline builds them for CPU compute (64-byte aligned: see `memory.layout.align_tensors_`)."""
    models = {name: pipe.checkpoint.build(name) for name in ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")}
    for module in models.values():
        align_tensors_(module)
    return models


def _branch(models, expert, cond, video, audio, context, t, scales):
    video_input = torch.cat([video, cond.condition], dim=1)
    with torch.no_grad():
        return joint_forward(models[expert], models["audio_dit"], models["dual_tower_bridge"], video_input, audio,
                             context, t, t, cond.video_fps, scales)


def test_text_cfg_equals_the_official_loop_bit_for_bit(tiny_pipe, tiny_cond, clip):
    """Official `MOVA.__call__`: cond + uncond pass, `uncond + s·(cond − uncond)`, `step_from_to` per stream,
    expert switch at the first t < boundary. Written out here on separately built modules."""
    steps, scale = 3, 5.0
    shapes = tiny_pipe.latent_shapes(**clip)
    video, audio = seeded_noise(11, *shapes)
    models = _modules(tiny_pipe)
    sched = tiny_pipe.scheduler
    pairs = sched.timesteps_for(steps)
    expert = "video_dit"
    for i in range(steps):
        t = pairs[i, 0].reshape(1)
        if t.item() < tiny_pipe.configs.boundary_timestep:
            expert = "video_dit_2"
        cond_v, cond_a = _branch(models, expert, tiny_cond, video, audio, tiny_cond.prompt_embeds, t, BridgeScales())
        unc_v, unc_a = _branch(models, expert, tiny_cond, video, audio, tiny_cond.negative_prompt_embeds, t, BridgeScales())
        t_next = None if i + 1 == steps else pairs[i + 1, 0].reshape(1)
        video = sched.step_from_to(unc_v + scale * (cond_v - unc_v), t, t_next, video)
        audio = sched.step_from_to(unc_a + scale * (cond_a - unc_a), t, t_next, audio)

    out = tiny_pipe.sample(tiny_cond, seed=11, steps=steps, guidance=GuidanceConfig(text_scale=scale, bridge_scale=1.0))
    assert tiny_pipe.last_stats.experts == ["video_dit", "video_dit", "video_dit_2"]
    assert torch.equal(out.video, video)
    assert torch.equal(out.audio, audio)
    default = tiny_pipe.sample(tiny_cond, seed=11, steps=steps)  # guidance=None: the official default text CFG 5
    assert torch.equal(default.video, video) and torch.equal(default.audio, audio)


def test_dual_cfg_runs_the_three_paper_branches(tiny_pipe, tiny_cond, clip):
    """One step of (s_T, s_B) = (5, 3.5): full = (prompt, bridge), text_off = (negative, bridge),
    both_off = (negative, no bridge); v = both + s_B(text_off − both) + s_T(full − text_off)."""
    s_t, s_b = 5.0, 3.5
    video, audio = seeded_noise(12, *tiny_pipe.latent_shapes(**clip))
    models = _modules(tiny_pipe)
    t = tiny_pipe.scheduler.timesteps_for(1)[0, 0].reshape(1)
    full = _branch(models, "video_dit", tiny_cond, video, audio, tiny_cond.prompt_embeds, t, BridgeScales())
    text_off = _branch(models, "video_dit", tiny_cond, video, audio, tiny_cond.negative_prompt_embeds, t, BridgeScales())
    both_off = _branch(models, "video_dit", tiny_cond, video, audio, tiny_cond.negative_prompt_embeds, t,
                       BridgeScales(condition=0.0))
    assert not torch.equal(both_off[1], text_off[1])  # the bridge matters in the tiny model
    expected = [tiny_pipe.scheduler.step_from_to(b + s_b * (o - b) + s_t * (f - o), t, None, x)
                for f, o, b, x in zip(full, text_off, both_off, (video, audio))]

    out = tiny_pipe.sample(tiny_cond, seed=12, steps=1, guidance=GuidanceConfig(text_scale=s_t, bridge_scale=s_b))
    torch.testing.assert_close(out.video, expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.audio, expected[1], atol=1e-5, rtol=1e-5)
    text_cfg = tiny_pipe.sample(tiny_cond, seed=12, steps=1, guidance=GuidanceConfig(text_scale=s_t, bridge_scale=1.0))
    assert not torch.allclose(text_cfg.audio, out.audio)


def test_dual_cfg_with_unit_bridge_scale_is_the_text_cfg(tiny_pipe, tiny_cond):
    text = tiny_pipe.sample(tiny_cond, seed=13, steps=2, guidance=GuidanceConfig(text_scale=4.0))
    dual = tiny_pipe.sample(tiny_cond, seed=13, steps=2, guidance=GuidanceConfig(
        text_scale=4.0, bridge_scale=1.0, video_bridge_scale=1.0, audio_bridge_scale=1.0, a2v_scale=None, v2a_scale=None))
    assert tiny_pipe.last_stats.passes_per_step == [2, 2]
    assert torch.equal(text.video, dual.video) and torch.equal(text.audio, dual.audio)
