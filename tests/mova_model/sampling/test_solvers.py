"""Schedules and solvers on their own: the official tables, the Euler step equal to `step_from_to`, exact
integration of a straight flow, one state per stream, custom sigma lists, denoise tails and the bad-input
messages. (The official trajectories themselves are the parity set `../shared/parity-solvers`.)"""

import numpy as np
import pytest
import torch

from mova_model.checkpoint.configs import SchedulerConfig
from mova_model.sampling.scheduler import FlowMatchPairScheduler
from mova_model.sampling.schedules import (SOLVERS, ScheduleError, ScheduleOptions, check_sigmas, custom_schedule,
                                          denoised_schedule, dpmpp_schedule, euler_schedule, full_schedule,
                                          joint_schedule, official_joint_schedule, parse_sigmas, unipc_schedule)
from mova_model.sampling.solvers import make_solver

MOVA = SchedulerConfig(shift=5.0, sigma_min=0.003 / 1.002, extra_one_step=True)  # the released 360p config


def _straight_flow(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)  # x0, noise


# -- tables ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 4, 10, 50])
def test_wan_tables_have_steps_plus_one_decreasing_sigmas_ending_at_zero(steps):
    for schedule in (unipc_schedule(steps, 5.0), dpmpp_schedule(steps, 5.0)):
        assert schedule.timesteps.shape == (steps,) and schedule.sigmas.shape == (steps + 1,)
        assert schedule.timesteps.dtype == schedule.sigmas.dtype == torch.float32
        assert schedule.sigmas[-1] == 0 and bool((schedule.sigmas.diff() < 0).all())
        assert torch.equal(schedule.timesteps, schedule.timesteps.round())  # Wan casts σ·T to int64
    assert dpmpp_schedule(steps, 5.0).sigmas[0] == 1.0
    assert unipc_schedule(steps, 1.0).sigmas[0] == pytest.approx(0.999)  # the shift-1 grid's top, as in Wan


def test_shift_warps_the_wan_tables():
    flat, shifted = dpmpp_schedule(4, 1.0), dpmpp_schedule(4, 3.0)
    assert flat.sigmas.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert shifted.sigmas.tolist() == pytest.approx([1.0, 0.9, 0.75, 0.5, 0.0])
    assert shifted.timesteps.tolist() == [1000.0, 900.0, 750.0, 500.0]


def test_euler_default_is_the_official_schedule_and_grid_lookup():
    scheduler = FlowMatchPairScheduler(MOVA)
    schedule = euler_schedule(scheduler, 7)
    assert torch.equal(schedule.timesteps, scheduler.timesteps_for(7)[:, 0])
    expected = [scheduler.sigma_of(t) for t in scheduler.timesteps_for(7)[:, 0]] + [torch.tensor(0.0)]
    assert torch.equal(schedule.sigmas, torch.stack(expected))
    assert torch.equal(full_schedule(MOVA, ScheduleOptions(), 7).sigmas, schedule.sigmas)
    joint = official_joint_schedule(scheduler, 7)
    assert joint.solver == "euler" and torch.equal(joint.audio.timesteps, scheduler.timesteps_for(7)[:, 1])


def test_euler_solver_is_step_from_to_bit_for_bit():
    scheduler = FlowMatchPairScheduler(MOVA)
    pairs = scheduler.timesteps_for(5)
    solver = make_solver("euler", euler_schedule(scheduler, 5))
    x0, noise = _straight_flow((1, 4, 2, 4, 4))
    ours = official = noise
    for i in range(5):
        velocity = torch.tanh(ours * 1.7 + x0)
        t_next = None if i == 4 else pairs[i + 1, 0].reshape(1)
        official = scheduler.step_from_to(velocity, pairs[i, 0].reshape(1), t_next, official)
        ours = solver.step(velocity, ours)
        assert torch.equal(ours, official)


def test_shift_override_builds_the_scheduler_with_that_shift():
    from dataclasses import replace

    options = ScheduleOptions(shift=2.0)
    expected = euler_schedule(FlowMatchPairScheduler(replace(MOVA, shift=2.0)), 6)
    got = full_schedule(MOVA, options, 6)
    assert torch.equal(got.timesteps, expected.timesteps) and torch.equal(got.sigmas, expected.sigmas)
    assert not torch.equal(got.timesteps, full_schedule(MOVA, ScheduleOptions(), 6).timesteps)
    assert torch.equal(full_schedule(MOVA, ScheduleOptions("unipc", shift=3.0), 6).sigmas, unipc_schedule(6, 3.0).sigmas)
    assert torch.equal(full_schedule(MOVA, ScheduleOptions("dpm++"), 6).sigmas, dpmpp_schedule(6, 5.0).sigmas)


# -- solvers --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_every_solver_integrates_a_straight_flow_exactly(solver, steps):
    """x_σ = (1 − σ)·x0 + σ·ε has the constant velocity ε − x0: every solver must land on x0."""
    x0, noise = _straight_flow((1, 8, 30), seed=steps)
    schedule = full_schedule(MOVA, ScheduleOptions(solver), steps)
    sigma0 = schedule.sigmas[0]
    x = (1 - sigma0) * x0 + sigma0 * noise
    state = make_solver(solver, schedule)
    for i in range(steps):
        x = state.step(noise - x0, x)
        torch.testing.assert_close(x, (1 - schedule.sigmas[i + 1]) * x0 + schedule.sigmas[i + 1] * noise,
                                   atol=2e-5, rtol=0)
    with pytest.raises(RuntimeError, match="steps are done"):
        state.step(noise - x0, x)


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_each_stream_keeps_its_own_solver_state(solver):
    """Stepping video and audio in turn (the joint sampler's order) equals running each alone."""
    schedule = full_schedule(MOVA, ScheduleOptions(solver), 6)
    streams = {"video": _straight_flow((1, 4, 2, 4, 4), 1)[1], "audio": _straight_flow((1, 8, 20), 2)[1]}

    def velocity(x, i):
        return torch.sin(3 * x) * (1 + 0.2 * i)

    alone = {}
    for name, start in streams.items():
        state, x = make_solver(solver, schedule), start
        for i in range(6):
            x = state.step(velocity(x, i), x)
        alone[name] = x
    states = {name: make_solver(solver, schedule) for name in streams}
    xs = dict(streams)
    for i in range(6):
        for name in streams:
            xs[name] = states[name].step(velocity(xs[name], i), xs[name])
    assert all(torch.equal(xs[name], alone[name]) for name in streams)


def test_multistep_solvers_differ_from_euler_and_from_each_other():
    x0, noise = _straight_flow((1, 8, 20), 3)
    finals = {}
    for solver in SOLVERS:
        schedule = full_schedule(MOVA, ScheduleOptions(solver, sigmas=(1.0, 0.8, 0.5, 0.2, 0.0)), 0)
        state, x = make_solver(solver, schedule), noise
        for i in range(4):
            x = state.step(torch.sin(2 * x) + x0, x)
        finals[solver] = x
    assert not torch.equal(finals["euler"], finals["unipc"]) and not torch.equal(finals["unipc"], finals["dpm++"])
    assert all(torch.isfinite(x).all() for x in finals.values())  # sigma 1 at the start is fine for every solver


def test_unknown_solver_is_refused_with_the_choices():
    with pytest.raises(ScheduleError, match=r"solver = 'heun' is not known; choose one of: euler, unipc, dpm\+\+"):
        make_solver("heun", unipc_schedule(2, 5.0))
    with pytest.raises(ScheduleError, match="choose one of"):
        ScheduleOptions("ddim").validate()


# -- custom sigma lists ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("values, message", [
    ([1.0, 0.5, 0.7, 0.0], r"strictly decreasing, but sigma\[2\] = 0.7 is not below sigma\[1\] = 0.5"),
    ([1.0, 0.5, 0.5, 0.0], "strictly decreasing"),
    ([1.0, 0.5, 0.1], "must end at 0"),
    ([1.5, 0.5, 0.0], "between 1 .* and 0"),
    ([1.0, -0.5, 0.0], "between 1 .* and 0"),
    ([0.0], "at least 2 values"),
    ([1.0, float("nan"), 0.0], "finite"),
])
def test_bad_sigma_lists_say_what_is_wrong(values, message):
    with pytest.raises(ScheduleError, match=message):
        check_sigmas(values)
    with pytest.raises(ScheduleError, match=message):
        ScheduleOptions("unipc", sigmas=torch.tensor(values)).validate()


def test_cli_sigma_text_is_parsed_and_checked():
    assert parse_sigmas("1, 0.9,0.5,0") == (1.0, 0.9, 0.5, 0.0)
    with pytest.raises(ScheduleError, match="numbers separated by commas"):
        parse_sigmas("1,half,0")
    with pytest.raises(ScheduleError, match="end at 0"):
        parse_sigmas("1,0.5")


def test_a_comfy_sigmas_tensor_gives_the_same_schedule_as_the_typed_list():
    """A float32 SIGMAS tensor is read as the decimals it stands for: 0.9f gives timestep 900, not 899."""
    typed = custom_schedule("unipc", [1.0, 0.9, 0.5, 0.0])
    from_tensor = full_schedule(MOVA, ScheduleOptions("unipc", sigmas=torch.tensor([1.0, 0.9, 0.5, 0.0])), 50)
    assert typed.timesteps.tolist() == from_tensor.timesteps.tolist() == [1000.0, 900.0, 500.0]
    assert torch.equal(typed.sigmas, from_tensor.sigmas)
    euler = custom_schedule("euler", np.array([1.0, 0.25, 0.0], dtype=np.float32))
    assert euler.timesteps.tolist() == [1000.0, 250.0] and euler.sigmas.tolist() == [1.0, 0.25, 0.0]


def test_a_sigma_list_sets_the_step_count():
    options = ScheduleOptions("dpm++", sigmas=(1.0, 0.6, 0.0))
    assert options.num_steps(50) == 2 and full_schedule(MOVA, options, 50).num_steps == 2
    assert ScheduleOptions().num_steps(50) == 50


# -- denoise --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", SOLVERS)
def test_denoise_keeps_the_tail_of_the_longer_schedule(solver):
    options = ScheduleOptions(solver)
    full = full_schedule(MOVA, options, 10)  # int(4 / 0.4) = 10 steps, the last 4 kept
    tail = denoised_schedule(MOVA, options, 4, 0.4)
    assert torch.equal(tail.timesteps, full.timesteps[-4:]) and torch.equal(tail.sigmas, full.sigmas[-5:])
    assert torch.equal(denoised_schedule(MOVA, options, 4, 1.0).sigmas, full_schedule(MOVA, options, 4).sigmas)


def test_per_stream_strengths_give_per_stream_tables():
    joint = joint_schedule(MOVA, ScheduleOptions("unipc"), 4, video_denoise=1.0, audio_denoise=0.5)
    assert joint.video.num_steps == joint.audio.num_steps == 4
    assert torch.equal(joint.video.sigmas, unipc_schedule(4, 5.0).sigmas)
    assert torch.equal(joint.audio.sigmas, unipc_schedule(8, 5.0).sigmas[-5:])


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "0.5"])
def test_denoise_outside_0_to_1_is_refused(value):
    with pytest.raises(ScheduleError, match="between 0 and 1"):
        joint_schedule(MOVA, ScheduleOptions(), 4, video_denoise=value)


def test_denoise_below_1_with_a_sigma_list_or_too_small_is_refused():
    with pytest.raises(ScheduleError, match="custom sigma list sets where sampling starts"):
        denoised_schedule(MOVA, ScheduleOptions(sigmas=(1.0, 0.5, 0.0)), 2, 0.5)
    with pytest.raises(ScheduleError, match="smallest strength at 4 steps"):
        denoised_schedule(MOVA, ScheduleOptions(), 4, 1e-9)
