"""Child process of `test_plan_vs_measured.py`: one generation (and one LoRA training step) on the CPU with the
device simulated (`device_meter`), each phase's measured peak next to the plan's figure for it, as JSON.

    python phase_peaks.py CHECKPOINT CONFIG.json OUT.json

CONFIG: {"budget_gb": float, "width", "height", "frames", "fps", "steps", "condition": "plain"|"comfyui",
"training": bool, "weights": "as stored"|"fp8"}. A fresh process per run: nothing built by an earlier test is
alive, and the meter sees every allocation of the run from the start.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path[:0] = [str(HERE.parents[3]), str(HERE.parents[2])]  # the repository (mova_model) and tests/

import numpy as np  # noqa: E402
import torch  # noqa: E402

from comfyui_conditions import run_in  # noqa: E402
from device_meter import DeviceMeter, simulate_device  # noqa: E402

HIGH, LOW = "video_dit", "video_dit_2"


def streaming_budget(pipe, width: int, height: int, frames: int, fps: float, steps: int) -> float:
    """A VRAM budget (GB) whose plan streams part of the blocks: halfway between the smallest budget that fits
    and the largest that is not all-resident."""
    def plan(gb: float):
        return pipe.memory_plan(width, height, frames, fps, steps=steps, vram_bytes=gb * 1e9)

    resident = bisect(lambda gb: plan(gb).mode == "all-resident", 0.01, 64.0)
    fitting = bisect(lambda gb: plan(gb).fits, 0.01, resident)
    budget = (resident + fitting) / 2
    assert plan(budget).mode == "streamed" and plan(budget).fits, plan(budget).format()
    return budget


def generation(checkpoint: Path, config: dict, meter: DeviceMeter) -> dict:
    from mova_model.memory.model_store import MemoryOptions
    from mova_model.sampling.pipeline import MovaPipeline

    w, h, f, fps = config["width"], config["height"], config["frames"], config["fps"]
    weights = config.get("weights", "as stored")
    pipe = MovaPipeline.from_pretrained(checkpoint, device="cpu", dtype=torch.bfloat16,
                                        memory=MemoryOptions(mode="budget", vram_budget_gb=64.0, weights=weights))
    budget = config["budget_gb"]
    if budget == "streamed":
        budget = streaming_budget(pipe, w, h, f, fps, config["steps"])
    pipe.memory = MemoryOptions(mode="budget", vram_budget_gb=budget, weights=weights)
    real_encode = pipe.encode_prompts

    def encode(*args, **kwargs):
        meter.mark("conditioning")
        out = real_encode(*args, **kwargs)
        meter.mark("text encode")
        return out

    pipe.encode_prompts = encode
    real_keep_only = pipe.cache.keep_only

    def keep_only(names):  # a phase starts by releasing the previous phase's modules: that residue is not its own
        real_keep_only(names)
        meter.mark("handover")

    pipe.cache.keep_only = keep_only
    image = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    meter.mark("start")
    cond = pipe.prepare_conditioning("a man says hello in the kitchen", "static, blurry", image, w, h, f, fps)
    meter.mark("VAE encode")
    experts = []

    def on_step(info):
        label = "high-noise steps" if info.expert == HIGH else "low-noise steps"
        if info.expert == LOW and HIGH in experts and LOW not in experts:
            label = "the switch"
        experts.append(info.expert)
        meter.mark(label)

    latents = pipe.sample(cond, seed=7, steps=config["steps"], callback=on_step)
    meter.mark("denoise")  # the end of the run (streamers and experts released)
    plan = pipe.last_plan
    del cond
    frames = pipe.decode_video(latents)
    meter.mark("VAE decode")
    del frames  # an IMAGE lives in host memory on a GPU (`.cpu()`): not device memory from here on
    meter.mark("between decodes")
    wave, _ = pipe.decode_audio(latents)
    meter.mark("audio decode")
    del wave, latents
    pipe.release_all()
    return {"budget_gb": budget, "text_encoder": plan.text_encoder, "plan_mode": plan.mode, "fits": plan.fits, "plan_phases": plan.vram_phases,
            "plan_denoise": plan.vram_denoise, "reserve": plan.vram_denoise["reserve"], "experts": experts,
            "plan_text": plan.format()}


def training_step(checkpoint: Path, config: dict, meter: DeviceMeter) -> dict:
    """Two LoRA training steps of the high-noise expert (the second with AdamW's state), bf16 base weights, under
    the training plan of `config["training_budget_gb"]` (a number, or "streamed": a budget whose plan streams)."""
    from mova_model.checkpoint.folder import MovaCheckpoint, build_meta_module
    from mova_model.sampling.scheduler import FlowMatchPairScheduler
    from mova_model.training.models import TrainingModels, training_plan
    from mova_model.training.optimizer import OptimizerSettings, build_optimizer, clip_and_step
    from mova_model.training.step import EncodedClip, StepOptions, draw_step
    from mova_model.training.targets import LoraTargets
    from mova_model.training.timesteps import TrainingTimesteps
    from mova_model.training.trainable_lora import TrainableLora

    w, h, f, fps = config["width"], config["height"], config["frames"], config["fps"]
    ck = MovaCheckpoint.open(checkpoint)
    rank = 4

    def plan(gb: float):
        return training_plan(ck, gb * 1e9, (w, h, f, fps), "bf16", "high", rank=rank)

    budget = config["training_budget_gb"]
    if budget == "streamed":
        resident = bisect(lambda gb: plan(gb).mode == "all-resident", 0.01, 64.0)
        budget = (resident + bisect(lambda gb: plan(gb).fits, 0.01, resident)) / 2
    chosen = plan(budget)
    cfg = ck.configs
    with torch.inference_mode(False), torch.enable_grad():  # as `LoraTrainer.run`
        g = torch.Generator().manual_seed(0)
        t = (f - 1) // 4 + 1
        clip = EncodedClip(context=torch.randn(1, 512, cfg.video_dit.text_dim, generator=g) * 0.1,
                           video_latents=torch.randn(1, cfg.video_dit.out_dim, t, h // 8, w // 8, generator=g),
                           condition=torch.randn(1, cfg.video_dit.in_dim - cfg.video_dit.out_dim, t, h // 8, w // 8,
                                                 generator=g),
                           audio_latents=torch.randn(1, cfg.audio_dit.in_dim, 20, generator=g), video_fps=fps)
        timesteps = TrainingTimesteps.from_scheduler(FlowMatchPairScheduler(cfg.scheduler), cfg.index.boundary_ratio)
        meter.mark("before training")
        models = TrainingModels(ck, "cpu", weights="bf16", experts="high", plan=chosen)
        metas = {n: build_meta_module(n, ck.config(n)) for n in ("video_dit", "audio_dit", "dual_tower_bridge")}
        lora = TrainableLora.for_modules(metas, rank, float(rank), LoraTargets.parse("official"))
        lora.reset_official(torch.Generator().manual_seed(1))
        models.attach(lora)
        params = lora.lora_parameters()
        optimizer, schedule = build_optimizer(params, OptimizerSettings(lr=1e-4, weight_decay=0.01, clip_norm=1.0,
                                                                        warmup_steps=0, max_steps=10, min_lr=1e-6))
        try:
            for step in range(2):
                draw = draw_step(timesteps, clip, "video_dit", torch.Generator().manual_seed(10 + step))
                models.step("video_dit", clip, draw, timesteps, StepOptions()).loss.backward()
                clip_and_step(optimizer, schedule, params, 1.0)
                meter.mark("training step")
        finally:
            models.release()
        del optimizer, schedule, params, lora
    meter.mark("after training")
    return {"training_budget_gb": budget, "training_mode": chosen.mode, "training_plan": chosen.vram,
            "training_reserve": chosen.vram["reserve"], "training_plan_text": chosen.format()}


def bisect(ok, lo: float, hi: float) -> float:
    """Smallest x in [lo, hi] with ok(x), ok monotone (40 halvings)."""
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def main(argv) -> int:
    checkpoint, config_path, out_path = Path(argv[0]), Path(argv[1]), Path(argv[2])
    config = json.loads(config_path.read_text())
    torch.set_num_threads(1)

    def run():
        from mova_model.memory.model_store import ComponentCache

        meter = DeviceMeter()
        with meter, simulate_device(meter, ComponentCache):
            report = generation(checkpoint, config, meter) if config.get("generation", True) else {}
            if config.get("training_budget_gb") is not None:
                report.update(training_step(checkpoint, config, meter))
        report["peaks"] = meter.peaks()
        report["marks"] = meter.marks
        return report

    report = run_in(config.get("condition", "plain"), run)
    out_path.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
