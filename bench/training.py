"""Peak host memory of a LoRA training step: streamed + checkpointed vs all-resident without checkpointing.

1. Reuses the synthetic checkpoint of `bench.memory` (official layout, MOVA's layer counts, every width divided
   by `--scale`; written once and reused).
2. Runs two fresh processes doing the same training steps (both video experts, rank-16 `official` LoRA on every
   trained component, AdamW) on the same random cached clip (latents, condition, caption states: the
   encoders are not part of a step):
   - resident: the DiTs as built (memory-mapped bf16 weights, computed in fp32 on the CPU), no gradient
     checkpointing: autograd keeps every block's activations until the backward;
   - streamed: per-block checkpointing and every block streamed through the forward and the backward pass
     (`mova_model.training.streaming`, two `BlockStreamer`s; the "device" is the CPU itself via the unpaced
     `ThrottledCopyEngine`, so slots are separate anonymous buffers, as a GPU would hold them).
   Each process samples /proc/self/status RssAnon every 5 ms (mapped file pages are not counted).
3. Prints the config, both peaks, `peak_host_ratio=<streamed / resident>` and how far the gradients are apart
   (relative L2 over all of them, median and largest per tensor). They agree up to float32 summation order (the
   streamed backward is a nested, reentrant one, see tests/mova_model/training/test_train_memory.py); the
   largest per-tensor figure comes from tensors whose gradient is ~1e-6 of the typical one (cancellation).
   Note: the resident run computes in fp32 from bf16 weights, so without checkpointing autograd also keeps
   every layer's fp32 weight cast until the backward (as it would keep dequantized fp8 weights on a GPU).

`--gpu` (needs CUDA): for VRAM budgets of 12, 16 and 24 GB on the checkpoint you pass with `--dir`, what the
training plan decides (blocks resident, or streamed with checkpointing), the plan's VRAM figure, and the
measured step time and `torch.cuda.max_memory_allocated` of that configuration, each budget enforced with
`torch.cuda.set_per_process_memory_fraction` (an allocation past it raises). Not run on the CPU-only dev
machine; `budget_decisions` (what each budget runs) is tested on the CPU.

Usage: `python -m bench.training [--scale 16] [--size 160x160 --frames 17] [--steps 2] [--gpu]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from bench.memory import AnonPeak, write_checkpoint

GB = 1e9
COMPONENTS = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")


def random_clip(checkpoint, width: int, height: int, frames: int, fps: float, seed: int = 0):
    """A cached clip of the right shapes (what `encoding.encode_clip` would store), from a seed."""
    from mova_model.training.step import EncodedClip

    cfg = checkpoint.configs
    g = torch.Generator().manual_seed(seed)
    z = cfg.video_dit.out_dim
    t, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    samples = int(cfg.audio_vae.sample_rate * frames / fps)
    audio_len = (samples - 1) // cfg.audio_vae.hop_length + 1
    return EncodedClip(context=torch.randn(1, 512, cfg.video_dit.text_dim, generator=g) * 0.1,
                       video_latents=torch.randn(1, z, t, h, w, generator=g),
                       condition=torch.randn(1, cfg.video_dit.in_dim - z, t, h, w, generator=g),
                       audio_latents=torch.randn(1, cfg.audio_dit.in_dim, audio_len, generator=g), video_fps=fps)


GPU_BUDGETS_GB = (12.0, 16.0, 24.0)


def budget_decisions(folder: Path, args, budgets=GPU_BUDGETS_GB) -> list:
    """Per VRAM budget, what a training run on a GPU does: {"budget_gb", "streamed" (the plan's decision, made by
    `TrainingModels` itself), "plan_vram_gb" (the training plan's peak for this clip, both experts)}.
    Nothing is built (the planner reads the configs)."""
    from mova_model.checkpoint.folder import MovaCheckpoint
    from mova_model.memory.sizes import GB as PLAN_GB
    from mova_model.training.models import TrainingModels

    ck = MovaCheckpoint.open(folder)
    width, height = args.size
    out = []
    for budget in budgets:
        models = TrainingModels(ck, "cuda", "as stored", vram_budget_gb=budget,
                                clip_size=(width, height, args.frames, args.fps), experts="both")
        peak = models.plan.vram_peak  # the training plan the run follows (`TrainingModels` makes it)
        out.append({"budget_gb": budget, "streamed": models.streamed(), "plan_vram_gb": peak / PLAN_GB})
    return out


def run_steps(folder: Path, mode: str, args, device: str = "cpu", budget_gb: Optional[float] = None) -> dict:
    from mova_model.checkpoint.folder import MovaCheckpoint, build_meta_module
    from mova_model.memory.copy_engines import ThrottledCopyEngine
    from mova_model.sampling.scheduler import FlowMatchPairScheduler
    from mova_model.training.models import TrainingModels
    from mova_model.training.optimizer import OptimizerSettings, build_optimizer, clip_and_step
    from mova_model.training.step import StepOptions, draw_step
    from mova_model.training.targets import LoraTargets
    from mova_model.training.timesteps import TrainingTimesteps, expert_for_step
    from mova_model.training.trainable_lora import TrainableLora

    ck = MovaCheckpoint.open(folder)
    width, height = args.size
    clip = random_clip(ck, width, height, args.frames, args.fps)
    timesteps = TrainingTimesteps.from_scheduler(FlowMatchPairScheduler(ck.configs.scheduler), ck.configs.index.boundary_ratio)
    planned = mode == "planned"  # on a GPU: the training plan decides for the budget (resident or streamed)
    streamed = mode == "streamed"
    engine = (lambda: ThrottledCopyEngine()) if device == "cpu" else None
    # bf16 weights stay memory-mapped (not anonymous memory); on the CPU the compute is fp32 (the weights are
    # cast per layer call) so the two modes' gradients can be compared at float32 precision
    models = TrainingModels(ck, device, "as stored", gradient_checkpointing=streamed or planned,
                            stream=None if planned else streamed, vram_budget_gb=budget_gb,
                            copy_engine_factory=engine if streamed else None,
                            compute_dtype=torch.float32 if device == "cpu" else None,
                            clip_size=(width, height, args.frames, args.fps), experts="both")
    metas = {n: build_meta_module(n, ck.config(n)) for n in COMPONENTS}
    lora = TrainableLora.for_modules(metas, args.rank, float(args.rank), LoraTargets.parse("official"), device=device)
    lora.reset_official(torch.Generator().manual_seed(1))
    with torch.no_grad():  # non-zero B so every gradient is informative
        for name, p in lora.named_lora_parameters():
            if name.endswith("lora_B.weight"):
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.01)
    models.attach(lora)
    params = lora.lora_parameters()
    optimizer, schedule = build_optimizer(params, OptimizerSettings(warmup_steps=0, max_steps=max(2, args.steps)))
    generator = torch.Generator().manual_seed(0)
    grads, times, losses = {}, [], []
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.steps):
        start = time.perf_counter()
        expert = expert_for_step(step)
        draw = draw_step(timesteps, clip, expert, generator)
        result = models.step(expert, clip, draw, timesteps, StepOptions())
        result.loss.backward()
        if step == args.steps - 1:
            grads = {n: p.grad.detach().float().cpu().clone() for n, p in lora.named_lora_parameters() if p.grad is not None}
        losses.append(result.loss.item())
        clip_and_step(optimizer, schedule, params, 1.0)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    out = {"losses": losses, "step_s": times, "grads": grads, "streamed": models.streamed()}
    if device != "cpu":
        out["vram_peak"] = torch.cuda.max_memory_allocated()
    models.release()
    return out


def child(args) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    peak = AnonPeak()
    baseline = peak.now()
    result = run_steps(args.dir, args.child, args)
    from safetensors.torch import save_file
    save_file(result.pop("grads"), str(args.out))
    peak.stop() if hasattr(peak, "stop") else None
    result.update(peak=peak.peak, baseline=baseline)
    sys.stdout.write(json.dumps(result) + "\n")


def gpu_mode(args) -> int:
    if not torch.cuda.is_available():
        sys.stderr.write("--gpu needs a CUDA device; none is available here\n")
        return 2
    total = torch.cuda.get_device_properties(0).total_memory
    for decision in budget_decisions(args.dir, args):
        budget = decision["budget_gb"]
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget * GB / total))
        try:
            r = run_steps(args.dir, "planned", args, device="cuda", budget_gb=budget)
        except torch.cuda.OutOfMemoryError:
            sys.stdout.write(f"budget {budget:4.0f} GB: OUT OF MEMORY (plan {decision['plan_vram_gb']:.2f} GB)\n")
            continue
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
        sys.stdout.write(f"budget {budget:4.0f} GB: {'streamed' if r['streamed'] else 'resident'} (plan: "
                         f"{decision['plan_vram_gb']:.2f} GB), VRAM peak {r['vram_peak'] / GB:6.2f} GB, step "
                         f"{min(r['step_s']):.2f} s (best of {len(r['step_s'])}), loss {r['losses'][-1]:.4f}\n")
    return 0


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=16, help="widths = real / scale (layer counts are real)")
    parser.add_argument("--dir", type=Path, help="checkpoint folder (default: a synthetic one in /tmp)")
    parser.add_argument("--size", type=lambda s: tuple(int(v) for v in s.lower().split("x")), default=(160, 160))
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--child", choices=("resident", "streamed"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dir = args.dir or Path(f"/tmp/mova_bench_training_s{args.scale}")
    if args.child:
        child(args)
        return 0
    if not (args.dir / "model_index.json").is_file():
        write_checkpoint(args.dir, args.scale)
    if args.gpu:
        return gpu_mode(args)
    config = {"checkpoint": str(args.dir), "scale": args.scale, "size": list(args.size), "frames": args.frames,
              "fps": args.fps, "rank": args.rank, "steps": args.steps, "experts": "both (alternating)",
              "targets": "official", "torch": torch.__version__, "threads": torch.get_num_threads()}
    sys.stdout.write("config " + json.dumps(config) + "\n")
    results = {}
    for mode in ("resident", "streamed"):
        out = args.dir.parent / f"{args.dir.name}.train.{mode}.safetensors"
        cmd = [sys.executable, "-m", "bench.training", "--child", mode, "--dir", str(args.dir), "--out", str(out),
               "--size", f"{args.size[0]}x{args.size[1]}", "--frames", str(args.frames), "--fps", str(args.fps),
               "--rank", str(args.rank), "--steps", str(args.steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            return 1
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        results[mode]["out"] = out
    from safetensors.torch import load_file
    a, b = (load_file(str(results[m]["out"])) for m in ("resident", "streamed"))
    rel = sorted(((b[k] - a[k]).norm() / a[k].norm().clamp_min(1e-30)).item() for k in a)
    worst, median = rel[-1], rel[len(rel) // 2]
    flat_a, flat_b = torch.cat([a[k].flatten() for k in a]), torch.cat([b[k].flatten() for k in a])
    overall = ((flat_b - flat_a).norm() / flat_a.norm()).item()
    sys.stdout.write("mode       peak anon RSS   net of imports   step time (s)   losses\n")
    for mode in ("resident", "streamed"):
        r = results[mode]
        sys.stdout.write(f"{mode:<10} {r['peak'] / GB:9.3f} GB   {(r['peak'] - r['baseline']) / GB:9.3f} GB   "
                         f"{' '.join(f'{t:.1f}' for t in r['step_s']):>13}   {' '.join(f'{x:.4f}' for x in r['losses'])}\n")
    ratio = results["streamed"]["peak"] / results["resident"]["peak"]
    net = ((results["streamed"]["peak"] - results["streamed"]["baseline"])
           / (results["resident"]["peak"] - results["resident"]["baseline"]))
    same_losses = results["streamed"]["losses"] == results["resident"]["losses"]
    # the largest per-tensor errors are on near-zero gradients (cancellation); see the module docstring
    sys.stdout.write(f"peak_host_ratio={ratio:.3f} net_ratio={net:.3f} grad_rel_l2_all={overall:.2e} "
                     f"grad_rel_l2_median={median:.2e} grad_rel_l2_max={worst:.2e} "
                     f"same_losses={'yes' if same_losses else 'no'} grads={len(a)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
