"""Memory options of training give the same gradients: per-block checkpointing, and streaming the blocks
through the forward and the backward pass (`BlockStreamer` with the CPU copy-engine simulation)."""

import pytest
import torch

from comfyui_conditions import CONDITIONS, mova_threads, run_in

from mova_model.checkpoint.folder import MovaCheckpoint, build_meta_module
from mova_model.memory.copy_engines import ThrottledCopyEngine
from mova_model.sampling.scheduler import FlowMatchPairScheduler
from mova_model.training.models import TrainingModels
from mova_model.training.step import EncodedClip, StepOptions, draw_step
from mova_model.training.targets import LoraTargets
from mova_model.training.timesteps import TrainingTimesteps
from mova_model.training.trainable_lora import TrainableLora

COMPONENTS = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")


@pytest.fixture(scope="module")
def setup(tiny_checkpoint_dir):
    ck = MovaCheckpoint.open(tiny_checkpoint_dir)
    g = torch.Generator().manual_seed(0)
    cfg = ck.configs
    text_dim = cfg.video_dit.text_dim
    clip = EncodedClip(context=torch.randn(1, 512, text_dim, generator=g) * 0.1,
                       video_latents=torch.randn(1, cfg.video_dit.out_dim, 3, 4, 6, generator=g),
                       condition=torch.randn(1, cfg.video_dit.in_dim - cfg.video_dit.out_dim, 3, 4, 6, generator=g),
                       audio_latents=torch.randn(1, cfg.audio_dit.in_dim, 20, generator=g), video_fps=8.0)
    timesteps = TrainingTimesteps.from_scheduler(FlowMatchPairScheduler(cfg.scheduler), cfg.index.boundary_ratio)
    return ck, clip, timesteps


def gradients(ck, clip, timesteps, **model_kwargs):
    models = TrainingModels(ck, "cpu", **model_kwargs)
    metas = {n: build_meta_module(n, ck.config(n)) for n in COMPONENTS}
    lora = TrainableLora.for_modules(metas, 4, 4.0, LoraTargets.parse("official"))
    lora.reset_official(torch.Generator().manual_seed(1))
    with torch.no_grad():
        for p in lora.lora_parameters():
            if p.shape[1] == 4:  # B: non-zero so every parameter gets a gradient
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    models.attach(lora)
    losses = []
    try:
        for i, expert in enumerate(("video_dit", "video_dit_2")):
            draw = draw_step(timesteps, clip, expert, torch.Generator().manual_seed(10 + i))
            result = models.step(expert, clip, draw, timesteps, StepOptions())
            result.loss.backward()
            losses.append(result.loss.item())
    finally:
        models.release()
    return losses, {name: p.grad.clone() for name, p in lora.named_lora_parameters() if p.grad is not None}, lora


def as_trainer(fn, *args, **kwargs):
    """As `LoraTrainer.run` does under a host that calls it inside `torch.inference_mode()`."""
    with torch.inference_mode(False), torch.enable_grad():
        return fn(*args, **kwargs)


@pytest.mark.parametrize("condition", CONDITIONS)
def test_checkpointing_and_streaming_give_the_same_gradients(setup, condition):
    ck, clip, timesteps = setup
    base_losses, base, _ = gradients(ck, clip, timesteps, gradient_checkpointing=False)
    assert len(base) == 2 * sum(1 for _ in TrainableLora.for_modules(
        {n: build_meta_module(n, ck.config(n)) for n in COMPONENTS}, 4, 4.0, LoraTargets.parse("official")).keys())
    ckpt_losses, ckpt, _ = gradients(ck, clip, timesteps, gradient_checkpointing=True)
    # streamed as the MOVA Train LoRA node runs it (condition "comfyui": a worker thread inside inference mode)
    stream_losses, streamed, _ = run_in(condition, as_trainer, gradients, ck, clip, timesteps, stream=True,
                                        prefetch_depth=1, copy_engine_factory=lambda: ThrottledCopyEngine(bandwidth=None))
    assert not mova_threads()
    assert ckpt_losses == base_losses and stream_losses == base_losses
    worst = 0.0
    for name, grad in base.items():
        assert torch.equal(ckpt[name], grad), name
        worst = max(worst, ((streamed[name] - grad).norm() / grad.norm()).item())
    # Streaming recomputes each block in a nested backward (reentrant checkpoint): the residual-stream gradient
    # is summed as leaf `.grad` accumulation instead of in the engine's input buffer, so the order of a few
    # float32 additions differs (every tensor by a few ulps). Measured worst relative L2 error 1.2e-6 on the
    # tiny checkpoint; the bound leaves room for other CPUs and kernels.
    assert worst < 2e-5, worst


def test_fp8_and_bf16_base_weights_train_fp32_lora(setup):
    ck, clip, timesteps = setup
    _, reference, _ = gradients(ck, clip, timesteps)
    for weights in ("bf16", "fp8"):
        losses, grads, lora = gradients(ck, clip, timesteps, weights=weights)
        assert all(p.dtype == torch.float32 for p in lora.lora_parameters())
        assert set(grads) == set(reference)
        worst = max(((grads[k] - reference[k]).norm() / reference[k].norm()).item() for k in reference)
        assert worst < (0.1 if weights == "bf16" else 0.3), (weights, worst)


def test_the_expert_not_trained_is_never_built(setup):
    ck, clip, timesteps = setup
    models = TrainingModels(ck, "cpu")
    try:
        draw = draw_step(timesteps, clip, "video_dit", torch.Generator().manual_seed(0))
        models.step("video_dit", clip, draw, timesteps, StepOptions(), grad=False)
        assert models.cache.materialized["video_dit"] == 1 and "video_dit_2" not in models.cache.materialized
    finally:
        models.release()
