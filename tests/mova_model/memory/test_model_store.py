"""Memory options and module placement at the pipeline level: a streamed plan gives the same latents as
all-resident, budgets that cannot fit say so before any work, fp8 weights load and run."""
import dataclasses
import threading

import pytest
import torch

from comfyui_conditions import CONDITIONS, mova_threads, run_as_comfyui, run_in
from mova_model.memory.copy_engines import ThrottledCopyEngine
from mova_model.memory.fp8 import FP8_COMPONENTS
from mova_model.memory.model_store import MemoryOptions
from mova_model.network.ops import FP8_DTYPE, CastLinear
from mova_model.sampling.pipeline import InputError, MovaPipeline


class _Unreadable:
    """A layout whose bytes cannot be read (the copy fails on the engine's worker thread)."""

    def __init__(self, layout) -> None:
        self.tag, self.nbytes = layout.tag, layout.nbytes

    @property
    def sources(self):
        raise OSError("simulated copy failure")


def _streamed(plan, every: int = 2):
    """The planner's own plan for this clip, turned into a streamed one (every `every`-th module resident)."""
    modules = [dataclasses.replace(m, resident=(i % every == 0)) for i, m in enumerate(plan.modules)]
    return dataclasses.replace(plan, mode="streamed", fits=True, modules=modules, prefetch_depth=1)


@pytest.mark.parametrize("condition", CONDITIONS)
def test_streamed_plan_gives_identical_latents(tiny_pipe, tiny_cond, condition):
    resident = tiny_pipe.sample(tiny_cond, seed=3, steps=3)
    plan = tiny_pipe.memory_plan(tiny_cond.width, tiny_cond.height, tiny_cond.num_frames, tiny_cond.video_fps,
                                 cfg_passes=2, steps=3, vram_bytes=64e9)
    assert plan.mode == "all-resident" and plan.fits
    streamed_plan = _streamed(plan)
    streamed = run_in(condition, tiny_pipe.sample, tiny_cond, seed=3, steps=3, plan=streamed_plan)
    assert tiny_pipe.last_plan is streamed_plan
    assert torch.equal(resident.video, streamed.video) and torch.equal(resident.audio, streamed.audio)
    assert not mova_threads()


@pytest.mark.parametrize("fails", ["resident copy", "streamed copy"])
def test_failed_streamed_runs_end_their_copy_threads(tiny_pipe, tiny_cond, monkeypatch, fails):
    """Issue 17 item 5: every failed streamed run left its copy worker thread behind (14 -> 20 threads after 5
    failures in the server). A copy that fails while the streamer starts (resident modules) or mid-run (a
    streamed block) must end the run's worker; the pipeline samples again afterwards."""
    plan = _streamed(tiny_pipe.memory_plan(tiny_cond.width, tiny_cond.height, tiny_cond.num_frames,
                                           tiny_cond.video_fps, cfg_passes=2, steps=1, vram_bytes=64e9))
    reference = tiny_pipe.sample(tiny_cond, seed=3, steps=1, plan=plan)
    real_submit = ThrottledCopyEngine.submit

    def broken(self, layout, slot, slot_id):
        if (fails == "resident copy") == (slot_id < 0):  # resident modules are copied by `onload` (slot -1)
            layout = _Unreadable(layout)
        return real_submit(self, layout, slot, slot_id)

    threads_before = threading.active_count()
    monkeypatch.setattr(ThrottledCopyEngine, "submit", broken)
    for _ in range(5):
        with pytest.raises(RuntimeError, match="streamed copy failed") as failure:
            run_as_comfyui(tiny_pipe.sample, tiny_cond, seed=3, steps=1, plan=plan)
        assert "simulated copy failure" in str(failure.value.__cause__)
    assert not mova_threads() and threading.active_count() == threads_before
    monkeypatch.undo()
    again = run_as_comfyui(tiny_pipe.sample, tiny_cond, seed=3, steps=1, plan=plan)
    assert torch.equal(again.video, reference.video)


def test_plan_is_built_on_the_cpu_from_a_budget(tiny_checkpoint_dir, tiny_cond):
    pipe = MovaPipeline.from_pretrained(tiny_checkpoint_dir, memory=MemoryOptions(mode="budget", vram_budget_gb=64))
    plan = pipe.memory_plan(tiny_cond.width, tiny_cond.height, tiny_cond.num_frames, tiny_cond.video_fps)
    assert plan.fits and plan.vram_peak_bytes <= 64 * 2 ** 30
    assert plan.mode == "all-resident" and "video expert blocks" in plan.format()


def test_a_budget_that_cannot_fit_fails_before_sampling(tiny_checkpoint_dir, tiny_cond):
    pipe = MovaPipeline.from_pretrained(tiny_checkpoint_dir, memory=MemoryOptions(mode="budget", vram_budget_gb=0.01))
    with pytest.raises(InputError, match="does not fit in the memory available"):
        pipe.sample(tiny_cond, seed=0, steps=1)
    assert not pipe.cache.materialized  # nothing was built


@pytest.mark.parametrize("options, message", [
    (MemoryOptions(mode="fast"), "memory mode must be one of"),
    (MemoryOptions(mode="budget"), "needs a VRAM budget"),
    (MemoryOptions(weights="int4"), "weights must be one of"),
    (MemoryOptions(prefetch_depth=0), "prefetch depth must be at least 1"),
])
def test_bad_memory_options_are_rejected(tiny_checkpoint_dir, options, message):
    with pytest.raises(ValueError, match=message):
        MovaPipeline.from_pretrained(tiny_checkpoint_dir, memory=options)


def test_fp8_weights_are_quantized_on_load_and_sample(tiny_checkpoint_dir, tiny_cond, tiny_pipe):
    pipe = MovaPipeline.from_pretrained(tiny_checkpoint_dir, memory=MemoryOptions(weights="fp8"))
    latents = pipe.sample(tiny_cond, seed=3, steps=2)
    reference = tiny_pipe.sample(tiny_cond, seed=3, steps=2)
    assert torch.isfinite(latents.video).all() and torch.isfinite(latents.audio).all()
    relative = (latents.video - reference.video).norm() / reference.video.norm()
    assert 0 < relative < 0.2  # quantized, so not identical, but close
    module = pipe.cache.get("audio_dit")
    linears = [m for m in module.modules() if isinstance(m, CastLinear) and m.weight.dtype == FP8_DTYPE]
    assert linears and "audio_dit" in FP8_COMPONENTS
