"""Issue 16 item 3: training is planned like `plan --train`. A VRAM budget streams the blocks when the plan says
they do not fit resident, a step that cannot fit is refused with the plan's numbers before any clip is encoded,
and the streamed run trains like the resident one, also as ComfyUI calls it (worker thread, inference mode)."""

import pytest
from safetensors.torch import load_file

from comfyui_conditions import mova_threads, run_as_comfyui
from mova_model.checkpoint.folder import MovaCheckpoint
from mova_model.training import streaming
from mova_model.training.models import training_plan
from mova_model.training.trainer import LoraTrainer, TrainingError

from training_clips import GEOMETRY, small_settings, streaming_budget_gb

CLIP = (GEOMETRY["width"], GEOMETRY["height"], GEOMETRY["frames"], GEOMETRY["fps"])


def test_a_step_that_cannot_fit_is_refused_with_the_plan_before_encoding(tiny_checkpoint_dir, clip_dataset, tmp_path):
    cache = tmp_path / "cache"
    settings = small_settings(memory_mode="budget", vram_budget_gb=0.2, experts="high")
    trainer = LoraTrainer(tiny_checkpoint_dir, clip_dataset, tmp_path / "x.safetensors", settings, cache_dir=cache)
    with pytest.raises(TrainingError) as refused:
        trainer.run()
    message = str(refused.value)
    assert "does not fit in the memory available" in message and "0.2 GB available" in message, message
    assert "GB of VRAM" in message and "stream slots (2 passes)" in message and "reserve" in message, message
    assert not cache.exists() and not list(tmp_path.glob("x*"))  # refused before encoding or writing anything


def test_a_budget_that_fits_resident_does_not_stream(tiny_checkpoint_dir):
    plan = training_plan(MovaCheckpoint.open(tiny_checkpoint_dir), 64e9, CLIP, experts="both")
    assert plan.mode == "all-resident" and plan.fits and "resident blocks" in plan.vram


def test_a_streaming_budget_streams_and_trains_like_resident(tiny_checkpoint_dir, clip_dataset, encode_cache, tmp_path,
                                                             monkeypatch):
    budget = streaming_budget_gb(tiny_checkpoint_dir, "both")
    built = []
    real = streaming.training_streamer
    monkeypatch.setattr(streaming, "training_streamer", lambda models, expert: built.append(expert) or real(models, expert))

    def train(name, **memory):
        trainer = LoraTrainer(tiny_checkpoint_dir, clip_dataset, tmp_path / f"{name}.safetensors",
                              small_settings(steps=2, experts="both", **memory), cache_dir=encode_cache)
        result = run_as_comfyui(trainer.run)  # as the MOVA Train LoRA node runs it
        return trainer, load_file(str(result.lora_path))

    resident_trainer, resident = train("resident")
    assert resident_trainer.plan is None and not built  # the CPU without a budget: no device plan, nothing streamed
    streamed_trainer, streamed = train("streamed", memory_mode="budget", vram_budget_gb=budget)
    assert streamed_trainer.plan.mode == "streamed" and set(built) == {"video_dit", "video_dit_2"}
    assert not mova_threads()
    assert resident.keys() == streamed.keys()
    for key, value in resident.items():  # float32 summation order of the streamed backward (test_train_memory)
        error = ((streamed[key].float() - value.float()).norm() / value.float().norm().clamp(min=1e-12)).item()
        assert error < 1e-4, (key, error)
