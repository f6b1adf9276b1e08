"""FlowMatchPairScheduler: parity with the official scheduler fixtures, plus schedule properties."""

import math

import pytest
import torch

from mova_model.checkpoint.configs import ConfigError, MovaConfigs, SchedulerConfig
from mova_model.sampling.scheduler import FlowMatchPairScheduler

import codec_parity_helpers as H  # tests/ is on pytest's pythonpath


def make(**overrides) -> FlowMatchPairScheduler:
    data = {"shift": 5.0}
    data.update(overrides)
    return FlowMatchPairScheduler(SchedulerConfig.from_dict(data))


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("case", H.case_params("scheduler"))
def test_scheduler_matches_official(case):
    case = H.require_case(case)
    inputs, out = H.load_case(case)
    args = case["args"]
    configs = MovaConfigs.from_folder(H.checkpoint_dir(case))
    sched = FlowMatchPairScheduler(configs.scheduler)
    exact = H.recorded_exact_tolerance()

    H.assert_close(sched.train_timesteps, out["train_timesteps"], what="train_timesteps", **exact)
    H.assert_close(sched.train_sigmas, out["train_sigmas"], what="train_sigmas", **exact)

    steps = int(args["num_inference_steps"])
    pairs = sched.timesteps_for(steps)
    H.assert_close(pairs, out["pair_timesteps"], what="pair_timesteps", **exact)
    H.assert_close(sched.sigmas_for(steps), out["pair_sigmas"], what="pair_sigmas", **exact)
    H.assert_close(pairs[:, 0], out["timesteps"], what="timesteps", **exact)
    H.assert_close(sched.sigmas_for(steps)[:, 0], out["sigmas"], what="sigmas", **exact)

    boundary = float(args.get("boundary_timestep", configs.boundary_timestep))
    assert boundary == pytest.approx(configs.boundary_timestep)
    switch = sched.expert_switch_index(pairs[:, 0], boundary)
    assert switch == int(out["switch_index"].reshape(-1)[0])
    if "expert_per_step" in args:
        experts = ["video_dit" if i < switch else "video_dit_2" for i in range(steps)]
        assert experts == args["expert_per_step"]

    tol = H.tolerance(case, atol=1e-6, rtol=1e-6)
    for k in range(steps):
        t_to = pairs[k + 1, 0] if k + 1 < steps else None
        sigma_from, sigma_to = sched.step_sigmas(pairs[k, 0], t_to)
        H.assert_close(sigma_from.reshape(1), out[f"step{k}_sigma_from"], what=f"step{k} sigma_from", **exact)
        H.assert_close(sigma_to.reshape(1), out[f"step{k}_sigma_to"], what=f"step{k} sigma_to", **exact)
        prev = sched.step_from_to(inputs[f"step{k}_model_output"], pairs[k, 0], t_to, inputs[f"step{k}_sample"])
        H.assert_close(prev, out[f"step{k}_prev_sample"], what=f"step{k} prev_sample", **tol)

    if "long_timesteps" in out:
        long_steps = int(args.get("long_num_inference_steps", out["long_timesteps"].numel()))
        long_pairs = sched.timesteps_for(long_steps)
        H.assert_close(long_pairs[:, 0], out["long_timesteps"], what="long_timesteps", **exact)
        H.assert_close(sched.sigmas_for(long_steps)[:, 0], out["long_sigmas"], what="long_sigmas", **exact)
        looked_up = torch.stack([sched.sigma_of(t) for t in long_pairs[:, 0]])
        H.assert_close(looked_up, out["long_step_sigmas"], what="long_step_sigmas", **exact)

    if "dual_sigma_shift_pair_timesteps" in out:
        kwargs = args.get("dual_sigma_shift_kwargs", {})
        video_shift, audio_shift = kwargs.get("visual_shift"), kwargs.get("audio_shift")
        H.assert_close(sched.timesteps_for(steps, video_shift=video_shift, audio_shift=audio_shift),
                       out["dual_sigma_shift_pair_timesteps"], what="dual timesteps", **exact)
        H.assert_close(sched.sigmas_for(steps, video_shift=video_shift, audio_shift=audio_shift),
                       out["dual_sigma_shift_pair_sigmas"], what="dual sigmas", **exact)


# ---------------------------------------------------------------------------------------------- properties


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0, 7.5])
@pytest.mark.parametrize("steps", [1, 2, 4, 13, 50])
@pytest.mark.parametrize("extra_one_step", [False, True])
def test_schedule_follows_shift_formula(shift, steps, extra_one_step):
    sched = make(shift=shift, extra_one_step=extra_one_step)
    pairs = sched.timesteps_for(steps)
    sigmas = sched.sigmas_for(steps)
    assert pairs.shape == (steps, 2) and pairs.dtype == torch.float32
    assert torch.equal(pairs[:, 0], pairs[:, 1])
    assert torch.equal(pairs, sigmas * 1000)
    sigma_min = 0.003 / 1.002
    count = steps + 1 if extra_one_step else steps
    base = [1.0 + (sigma_min - 1.0) * i / (count - 1) if count > 1 else 1.0 for i in range(steps)]
    expected = torch.tensor([shift * s / (1 + (shift - 1) * s) for s in base], dtype=torch.float64)
    torch.testing.assert_close(sigmas[:, 0].double(), expected, atol=2e-6, rtol=0)
    assert pairs[0, 0].item() == pytest.approx(1000.0)
    if steps > 1:
        assert bool((pairs[1:, 0] < pairs[:-1, 0]).all())
    if shift == 1.0:
        torch.testing.assert_close(sigmas[:, 0].double(), torch.tensor(base, dtype=torch.float64), atol=1e-6, rtol=0)


def test_larger_shift_keeps_more_noise():
    low, high = make(shift=2.0).sigmas_for(10)[1:-1, 0], make(shift=8.0).sigmas_for(10)[1:-1, 0]
    assert bool((high > low).all())


def test_training_grid_uses_config_shift():
    for shift in (3.0, 5.0):
        sched = make(shift=shift)
        assert sched.train_sigmas.shape == (1000,)
        assert torch.equal(sched.train_sigmas, sched.sigmas_for(1000)[:, 0])
        assert torch.equal(sched.train_timesteps, sched.train_sigmas * 1000)


def test_sigma_lookup_is_nearest_training_point_not_t_over_1000():
    sched = make(shift=5.0)
    for t in (999.0, 731.3, 500.0, 12.0, 0.0):
        index = int(torch.argmin((sched.train_timesteps - t).abs()))
        assert sched.sigma_of(t) == sched.train_sigmas[index]
        assert sched.sigma_of(torch.tensor([t])) == sched.sigma_of(t)
    # Off-grid timesteps are quantized: the looked-up sigma differs from t/1000.
    pairs = sched.timesteps_for(50)[:, 0]
    diffs = [abs(float(sched.sigma_of(t)) - float(t) / 1000) for t in pairs]
    assert max(diffs) > 1e-4


def test_extra_one_step_schedule_lies_on_training_grid():
    sched = make(shift=5.0, extra_one_step=True)
    sigmas = sched.sigmas_for(50)[:, 0]
    looked_up = torch.stack([sched.sigma_of(t) for t in sched.timesteps_for(50)[:, 0]])
    torch.testing.assert_close(looked_up, sigmas, atol=1e-6, rtol=0)


@pytest.mark.parametrize("steps", [2, 5])
def test_step_from_to_euler_update(steps):
    sched = make(shift=3.0)
    pairs = sched.timesteps_for(steps)[:, 0]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 2, 3, 3, generator=gen)
    v = torch.randn(1, 4, 2, 3, 3, generator=gen)
    mid = sched.step_from_to(v, pairs[0], pairs[1], x)
    torch.testing.assert_close(mid, x + v * (sched.sigma_of(pairs[1]) - sched.sigma_of(pairs[0])))
    last = sched.step_from_to(v, pairs[-1], None, x)
    torch.testing.assert_close(last, x - v * sched.sigma_of(pairs[-1]))
    # A full pass with v = x_1 - x_0 (the flow target) from pure noise lands near the data.
    data, noise = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    sample = sched.sigma_of(pairs[0]) * noise + (1 - sched.sigma_of(pairs[0])) * data
    for k in range(steps):
        sample = sched.step_from_to(noise - data, pairs[k], pairs[k + 1] if k + 1 < steps else None, sample)
    torch.testing.assert_close(sample, data, atol=1e-5, rtol=0)


def test_step_keeps_prediction_dtype():
    sched = make()
    x = torch.randn(2, 3, dtype=torch.bfloat16)
    assert sched.step_from_to(x, 1000.0, 500.0, x).dtype == torch.bfloat16


def test_inverse_and_reverse_options():
    inv = make(inverse_timesteps=True)
    assert bool((inv.timesteps_for(5)[1:, 0] > inv.timesteps_for(5)[:-1, 0]).all())
    assert inv.final_sigma == 1.0
    rev = make(reverse_sigmas=True)
    torch.testing.assert_close(rev.sigmas_for(6), 1 - make().sigmas_for(6))
    assert rev.final_sigma == 1.0
    x = torch.ones(3)
    assert torch.equal(rev.step_sigmas(500.0, None)[1], torch.tensor(1.0))
    assert make().final_sigma == 0.0 and make().step_from_to(x, 1000.0, None, x).sum() == 0


def test_exponential_shift_and_terminal():
    mu = 0.8
    sched = make(exponential_shift=True, exponential_shift_mu=mu)
    base = torch.linspace(1.0, 0.003 / 1.002, 7)
    expected = math.exp(mu) / (math.exp(mu) + (1 / base - 1))
    torch.testing.assert_close(sched.sigmas_for(7)[:, 0], expected)
    with pytest.raises(ConfigError):
        make(exponential_shift=True)
    term = make(shift=5.0, shift_terminal=0.1)
    sig = term.sigmas_for(9)[:, 0]
    assert sig[-1].item() == pytest.approx(0.1, abs=1e-6)
    assert sig[0].item() == pytest.approx(1.0, abs=1e-6)


def test_per_modality_shift_columns():
    sched = make(shift=5.0)
    plain = sched.timesteps_for(8)
    assert torch.equal(sched.timesteps_for(8, video_shift=5.0, audio_shift=5.0), plain)
    dual = sched.timesteps_for(8, video_shift=5.0, audio_shift=2.0)
    assert torch.equal(dual[:, 0], plain[:, 0])
    assert torch.equal(dual[:, 1], make(shift=2.0).timesteps_for(8)[:, 0])
    assert bool((dual[1:-1, 1] < dual[1:-1, 0]).all())
    only_audio = sched.timesteps_for(8, audio_shift=3.0)
    assert torch.equal(only_audio[:, 0], plain[:, 0])


def test_expert_switch_index():
    switch = FlowMatchPairScheduler.expert_switch_index
    assert switch(torch.tensor([1000.0, 950.0, 900.0, 850.0]), 900.0) == 3  # strictly below
    assert switch(torch.tensor([1000.0, 899.9, 950.0]), 900.0) == 1  # one-way: first one wins
    assert switch(torch.tensor([1000.0, 990.0]), 900.0) == 2  # never switches
    assert switch(torch.tensor([800.0, 100.0]), 900.0) == 0
    sched = make(shift=5.0)
    for steps, expected in ((50, 18), (4, 2)):
        assert switch(sched.timesteps_for(steps)[:, 0], 900.0) == expected
    assert switch(make(shift=3.0).timesteps_for(50)[:, 0], 900.0) == 13


def test_rejects_bad_step_count_and_shift():
    with pytest.raises(ValueError):
        make().timesteps_for(0)
    with pytest.raises(ValueError):
        make().timesteps_for(4, video_shift=-1.0)
