"""The joint step cache: threshold 0 is exactly no cache; skips never touch the first/last step or the steps
right after the expert switch; a skipped pass reuses its own branch's velocities for both towers; the sampler
reports the skipped passes; a held video lets the audio stream decide."""

import pytest
import torch

from mova_model.sampling.guidance import FULL, TEXT_OFF, GuidanceConfig, required_branches
from mova_model.sampling.sampler import HeldStream
from mova_model.sampling.step_cache import JointStepCache, StepCacheConfig

DUAL = GuidanceConfig(text_scale=5.0, bridge_scale=3.5)  # 3 branches
STEPS = 8
ALWAYS = StepCacheConfig(threshold=1e6, start_percent=0.0)  # skips every pass the rules allow


def _sample(pipe, cond, **kw):
    return pipe.sample(cond, seed=5, steps=STEPS, guidance=DUAL, **kw)


@pytest.fixture(scope="module")
def uncached(tiny_pipe, tiny_cond):
    return _sample(tiny_pipe, tiny_cond)


def test_threshold_zero_is_exactly_no_cache(tiny_pipe, tiny_cond, uncached):
    latents = _sample(tiny_pipe, tiny_cond, step_cache=StepCacheConfig(threshold=0.0))
    assert torch.equal(latents.video, uncached.video) and torch.equal(latents.audio, uncached.audio)
    assert tiny_pipe.last_stats.skipped_passes == 0
    assert tiny_pipe.last_stats.passes_per_step == [3] * STEPS


def test_skips_respect_first_last_and_the_expert_switch(tiny_pipe, tiny_cond, uncached):
    latents = _sample(tiny_pipe, tiny_cond, step_cache=ALWAYS)
    stats = tiny_pipe.last_stats
    switch = stats.experts.index("video_dit_2")
    assert 2 <= switch < STEPS - 2  # the tiny schedule switches mid-run, so both resets are exercised
    computed = {0, 1, switch, switch + 1, STEPS - 1}  # a rate needs two computed passes after each (re)start
    expected = [0 if i in computed else 3 for i in range(STEPS)]
    assert stats.skipped_per_step == expected
    assert stats.skipped_passes == sum(expected)
    assert [p + s for p, s in zip(stats.passes_per_step, stats.skipped_per_step)] == [3] * STEPS
    assert torch.isfinite(latents.video).all() and torch.isfinite(latents.audio).all()
    assert not torch.equal(latents.video, uncached.video)


def test_error_grows_with_the_threshold(tiny_pipe, tiny_cond, uncached):
    errors, skipped = [], []
    for threshold in (0.3, 1e6):
        latents = _sample(tiny_pipe, tiny_cond, step_cache=StepCacheConfig(threshold=threshold, start_percent=0.0))
        errors.append((latents.video - uncached.video).abs().max().item())
        skipped.append(tiny_pipe.last_stats.skipped_passes)
    assert skipped[0] <= skipped[1] and errors[0] <= errors[1]


def test_held_video_lets_the_audio_stream_decide(tiny_pipe, tiny_cond, clip):
    video_shape, _ = tiny_pipe.latent_shapes(**clip)
    held = HeldStream("video", torch.randn(video_shape, generator=torch.Generator().manual_seed(0)))
    tiny_pipe.sample(tiny_cond, seed=5, steps=STEPS, guidance=GuidanceConfig(text_scale=1.0), held=held,
                     step_cache=ALWAYS)
    # the held video input never moves; deciding from it would give no rate and never skip
    assert tiny_pipe.last_stats.skipped_passes > 0


# -- the cache object ---------------------------------------------------------------------------------------
def test_rate_prediction_and_reuse_per_branch():
    cache = JointStepCache(StepCacheConfig(threshold=0.5, start_percent=0.0), num_steps=10)
    x0, x1 = torch.ones(4), torch.full((4,), 2.0)
    cache.store(FULL, x0, torch.ones(4), torch.zeros(3))
    assert cache.predicted_change(FULL, x1) is None and not cache.should_skip(FULL, 1, x1)
    cache.store(FULL, x1, torch.full((4,), 1.5), torch.ones(3))  # in +100 %, out +50 %: rate 0.5
    assert cache.states[FULL].rate == pytest.approx(0.5)
    x2 = torch.full((4,), 2.2)  # +10 % since the last computed pass: predicted 5 %
    assert cache.predicted_change(FULL, x2) == pytest.approx(0.05)
    assert cache.should_skip(FULL, 2, x2)
    video, audio = cache.reuse(FULL)
    assert torch.equal(video, torch.full((4,), 1.5)) and torch.equal(audio, torch.ones(3))
    assert not cache.should_skip(TEXT_OFF, 2, x2)  # another branch has its own (empty) cache
    assert not cache.should_skip(FULL, 0, x2) and not cache.should_skip(FULL, 9, x2)  # first / last step
    cache.reset()
    assert not cache.should_skip(FULL, 3, x2)
    assert cache.stats.skipped == 1 and cache.stats.computed == 2


@pytest.mark.parametrize("kwargs, message", [({"threshold": -0.1}, "threshold"),
                                             ({"threshold": float("nan")}, "threshold"),
                                             ({"start_percent": 1.5}, "start_percent")])
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StepCacheConfig(**kwargs).validate()


def test_required_branches_of_the_test_guidance():
    assert len(required_branches(DUAL)) == 3
