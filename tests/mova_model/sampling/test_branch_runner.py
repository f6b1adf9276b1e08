"""Batched guidance: all branches of a step in one batch give the separate passes' numbers within float32
tolerance (bridge-off rows included), the memory plan decides on a GPU, and `off` is the default."""

import pytest
import torch

from mova_model.memory.sizes import GB, Architecture, PlanInputs, activation_bytes
from mova_model.network.denoiser import BridgeScales
from mova_model.sampling.branch_runner import JointModels, StepInputs, batched_pass, run_branches
from mova_model.sampling.guidance import BOTH_OFF, FULL, TEXT_OFF, GuidanceConfig
from mova_model.sampling.speed import BATCH_GUIDANCE_ON_CPU, SpeedOptions, choose_batch_guidance
from mova_model.sampling.pipeline import MovaPipeline

# Batched kernels may block the M dimension differently from B = 1 (oneDNN / MKL); every other op is row-wise.
# Measured: <= 3e-6 abs on velocities of magnitude ~1 (AVX2 and ATEN_CPU_CAPABILITY=default); 1e-5 relative.
REL_TOLERANCE = 1e-5


def _step(pipe, cond, clip):
    video_shape, audio_shape = pipe.latent_shapes(**clip)
    g = torch.Generator().manual_seed(11)
    video = torch.randn(video_shape, generator=g)
    return StepInputs(video_input=torch.cat([video, cond.condition], dim=1), audio=torch.randn(audio_shape, generator=g),
                      contexts={True: cond.prompt_embeds, False: cond.negative_prompt_embeds},
                      video_timestep=torch.tensor([700.0]), audio_timestep=torch.tensor([700.0]),
                      video_fps=clip["video_fps"], bridge_on=BridgeScales(condition=1.0), bridge_off=BridgeScales(condition=0.0))


def _close(a, b):
    return ((a - b).abs().max() / b.abs().max()).item() <= REL_TOLERANCE


@pytest.mark.parametrize("branches", [(FULL, TEXT_OFF), (FULL, BOTH_OFF), (FULL, TEXT_OFF, BOTH_OFF)])
def test_batched_branches_equal_separate_passes(tiny_pipe, tiny_cond, clip, branches):
    models = JointModels(tiny_pipe.cache.get("video_dit"), tiny_pipe.cache.get("audio_dit"),
                         tiny_pipe.cache.get("dual_tower_bridge"))
    step = _step(tiny_pipe, tiny_cond, clip)
    separate_v, separate_a, skipped = run_branches(models, step, branches, batch=False)
    batched = batched_pass(models, step, branches)
    assert skipped == 0
    for branch in branches:
        assert _close(batched[branch][0], separate_v[branch]), branch
        assert _close(batched[branch][1], separate_a[branch]), branch
    if BOTH_OFF in branches:  # the bridge-off row really has no bridge
        assert not torch.allclose(separate_v[BOTH_OFF], separate_v[FULL])


def test_batched_sampling_matches_within_tolerance(tiny_pipe, tiny_cond):
    guidance = GuidanceConfig(text_scale=5.0, bridge_scale=3.5)
    reference = tiny_pipe.sample(tiny_cond, seed=2, steps=4, guidance=guidance)
    batched_pipe = MovaPipeline(tiny_pipe.checkpoint, cache=tiny_pipe.cache, speed=SpeedOptions(batch_guidance="on"))
    latents = batched_pipe.sample(tiny_cond, seed=2, steps=4, guidance=guidance)
    assert batched_pipe.last_stats.passes_per_step == [3] * 4
    assert _close(latents.video, reference.video) and _close(latents.audio, reference.audio)


def test_batch_choice_off_cpu_and_plan():
    assert SpeedOptions().batch_guidance == "off"
    assert choose_batch_guidance("off", "cuda", 3)[0] is False
    assert choose_batch_guidance("on", "cuda", 1)[0] is False  # nothing to batch
    assert choose_batch_guidance("on", "cpu", 2)[0] is True
    assert choose_batch_guidance("auto", "cpu", 2)[0] is BATCH_GUIDANCE_ON_CPU

    class Plan:
        def __init__(self, fits):
            self.fits = fits

    asked = []
    fits, _ = choose_batch_guidance("auto", "cuda", 3, lambda rows: asked.append(rows) or Plan(True))
    assert fits and asked == [3]
    refused, why = choose_batch_guidance("on", "cuda", 3, lambda rows: Plan(False))
    assert not refused and "does not fit" in why


def test_planner_counts_batched_activations():
    arch = Architecture.released()
    one = PlanInputs(vram_bytes=24 * GB, ram_bytes=64 * GB)
    two = PlanInputs(vram_bytes=24 * GB, ram_bytes=64 * GB, guidance_batch=2)
    assert activation_bytes(arch, two) == pytest.approx(2 * activation_bytes(arch, one))
