"""Speed options side by side, in one run: denoiser step time with each option on and off, the error each option
puts on the final latents, and the step cache's skipped passes / error per threshold.

    .venv/bin/python -m bench.speed                                  # CPU: mid-size step config + tiny checkpoint
    .venv/bin/python -m bench.speed --device cuda --dtype bf16 --checkpoint models/mova/MOVA-360p \\
        --size 640x352 --frames 33 --steps 50 --video-grid 13 22 40     # a GPU with real weights

1. Step time: one guidance step (text CFG: the prompt and negative-prompt passes, as the official default) of
   `joint_forward` on the mid-size random-weight configuration of `bench/denoiser.py`, for every option off
   (baseline) and each option on alone. Ratios are baseline / option (> 1 = faster).
2. Final latents: a whole generation on the checkpoint (default: the tiny checkpoint written to a temporary
   folder), each option on alone, against all options off: max |Δ| and relative L2, video and audio.
3. Step cache: passes skipped and the error against no cache for a set of thresholds.

Options that cannot run on this device are listed as not run, with the reason.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from bench.denoiser import DTYPES, audio_steps_for, bench_dtype, build
from bench.denoiser import parse_args as denoiser_args
from mova_model.memory.fp8 import quantize_module_
from mova_model.network.attention import installed, resolve_backend, use_attention_backend
from mova_model.network.compiled_blocks import CompileTimer, compile_blocks, uncompile_blocks
from mova_model.network.denoiser import BridgeScales
from mova_model.network.fp8_matmul import fp8_matmul_supported, use_fp8_matmul
from mova_model.sampling.branch_runner import JointModels, StepInputs, run_branches
from mova_model.sampling.guidance import FULL, TEXT_OFF, GuidanceConfig
from mova_model.sampling.speed import SpeedOptions
from mova_model.sampling.step_cache import StepCacheConfig

logger = logging.getLogger("bench.speed")

THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--video-grid", type=int, nargs=3, default=[8, 32, 32], metavar=("T", "H", "W"))
    p.add_argument("--repeat", type=int, default=2, help="timed steps per option (after one warm-up step)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint folder for the e2e part (default: tiny, written here)")
    p.add_argument("--size", default="32x32", help="e2e clip WxH")
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--steps", type=int, default=20, help="e2e denoising steps")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile on small CPUs)")
    p.add_argument("--threads", type=int, default=0)
    return p.parse_args(argv)


# -- 1. step time ----------------------------------------------------------------------------------------------
def _step_setup(args: argparse.Namespace, dtype: torch.dtype):
    config = denoiser_args(["--video-grid", *map(str, args.video_grid)])
    video, audio, bridge = (m.to(dtype) for m in build(config, args.device))
    t, h, w = args.video_grid
    g = torch.Generator().manual_seed(1)
    dev = args.device
    contexts = {True: torch.randn(1, config.text_len, config.text_dim, generator=g).to(dev),
                False: torch.randn(1, config.text_len, config.text_dim, generator=g).to(dev)}
    step = StepInputs(torch.randn(1, 36, t, h, w, generator=g).to(dev),
                      torch.randn(1, 128, audio_steps_for(t, config.fps), generator=g).to(dev), contexts,
                      torch.tensor([700.0], device=dev), torch.tensor([700.0], device=dev), config.fps,
                      BridgeScales(condition=1.0), BridgeScales(condition=0.0))
    return JointModels(video, audio, bridge), step


def _time(fn: Callable[[], object], repeat: int, device: str) -> Tuple[float, float]:
    """(first call seconds, mean of `repeat` further calls)."""
    def once() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start
    first = once()
    return first, statistics.mean(once() for _ in range(repeat))


def step_times(args: argparse.Namespace, dtype: torch.dtype) -> Tuple[List[tuple], List[Tuple[str, str]]]:
    """Rows (option, first s, mean s/step, ratio) and (option, reason) for options not run."""
    models, step = _step_setup(args, dtype)
    branches = (FULL, TEXT_OFF)
    rows, not_run = [], []

    def step_fn(batch: bool = False):
        return lambda: run_branches(models, step, branches, batch=batch)

    with torch.no_grad():
        first, base = _time(step_fn(), args.repeat, args.device)
        rows.append(("all off (baseline)", first, base, 1.0))
        first, batched = _time(step_fn(batch=True), args.repeat, args.device)
        rows.append(("batch_guidance", first, batched, base / batched))
        for backend in ("flash", "sage"):
            try:
                resolve_backend(backend, args.device)
            except ValueError as exc:
                not_run.append((f"attention={backend}", str(exc).split(";")[0]))
                continue
            with use_attention_backend(backend, args.device):
                first, t = _time(step_fn(), args.repeat, args.device)
            rows.append((f"attention={backend}", first, t, base / t))
        if args.no_compile:
            not_run.append(("compile_blocks", "skipped with --no-compile"))
        else:
            timer = CompileTimer()
            roots = [models.expert, models.audio_dit, models.bridge]
            compile_blocks(roots, timer)
            first, t = _time(step_fn(), args.repeat, args.device)
            uncompile_blocks(roots)
            rows.append((f"compile_blocks (compile {timer.total_s:.0f} s)", first, t, base / t))
        if not fp8_matmul_supported(args.device):
            not_run.append(("fp8_matmul", "needs a CUDA GPU of compute capability >= 8.9 (fp8 tensor cores); "
                                          "elsewhere the option keeps the cast path, so it changes nothing"))
        else:
            for root in (models.expert, models.audio_dit, models.bridge):
                quantize_module_(root)
            first, cast = _time(step_fn(), args.repeat, args.device)
            rows.append(("fp8 weights, cast path", first, cast, base / cast))
            with use_fp8_matmul(True, args.device):
                first, scaled = _time(step_fn(), args.repeat, args.device)
            rows.append(("fp8 weights + fp8_matmul", first, scaled, base / scaled))
    return rows, not_run


# -- 2./3. final latents ---------------------------------------------------------------------------------------
def _errors(out, ref) -> Dict[str, float]:
    result = {}
    for name in ("video", "audio"):
        a, b = getattr(out, name).double(), getattr(ref, name).double()
        result[f"{name}_max"] = (a - b).abs().max().item()
        result[f"{name}_rel"] = ((a - b).norm() / b.norm()).item()
    return result


def e2e(args: argparse.Namespace, dtype: torch.dtype, folder: Path):
    from mova_model.sampling.pipeline import MovaPipeline

    width, height = (int(v) for v in args.size.lower().split("x"))
    base = MovaPipeline.from_pretrained(folder, device=args.device, dtype=dtype)
    cond = base.prepare_conditioning("a man says hello in the kitchen", "static, blurry", None, width=width,
                                     height=height, num_frames=args.frames, video_fps=args.fps)
    guidance = GuidanceConfig(text_scale=5.0)

    def run(speed: Optional[SpeedOptions] = None, cache: Optional[StepCacheConfig] = None):
        pipe = base if speed is None else MovaPipeline(base.checkpoint, device=args.device, dtype=dtype,
                                                       cache=base.cache, speed=speed)
        start = time.perf_counter()
        latents = pipe.sample(cond, seed=42, steps=args.steps, guidance=guidance, step_cache=cache)
        return latents, time.perf_counter() - start, pipe.last_stats

    reference, ref_s, _ = run()
    options: List[Tuple[str, Optional[SpeedOptions], Optional[StepCacheConfig]]] = [
        ("batch_guidance=on", SpeedOptions(batch_guidance="on"), None),
        ("attention=auto", SpeedOptions(attention="auto"), None),
        ("fp8_matmul (weights as stored)", SpeedOptions(fp8_matmul=True), None)]
    if not args.no_compile:
        options.append(("compile_blocks", SpeedOptions(compile_blocks=True), None))
    from mova_model.sampling.step_cache import DEFAULT_THRESHOLD
    options.append((f"step cache {DEFAULT_THRESHOLD:g}", None, StepCacheConfig(DEFAULT_THRESHOLD)))
    rows = []
    for name, speed, cache in options:
        out, seconds, stats = run(speed, cache)
        note = f"{stats.skipped_passes} passes skipped" if cache is not None else ""
        if speed is not None and speed.attention == "auto":
            note = f"resolves to {resolve_backend('auto', args.device)}"
        if speed is not None and speed.compile_blocks:
            note = f"compile {stats.compile_s:.0f} s of the run"
        rows.append((name, _errors(out, reference), seconds, note))
    table = []
    for threshold in THRESHOLDS:
        out, seconds, stats = run(None, StepCacheConfig(threshold))
        total = stats.skipped_passes + sum(stats.passes_per_step)
        table.append((threshold, stats.skipped_passes, total, _errors(out, reference), seconds))
    return ref_s, rows, table


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = bench_dtype(args.dtype, args.device)
    out = sys.stdout
    out.write(f"bench.speed on {args.device} ({torch.get_num_threads()} threads), {str(dtype).replace('torch.', '')}, "
              f"torch {torch.__version__}; flash-attn {'installed' if installed('flash') else 'not installed'}, "
              f"sageattention {'installed' if installed('sage') else 'not installed'}\n\n")
    rows, not_run = step_times(args, dtype)
    t, h, w = args.video_grid
    out.write(f"1. guidance step (2 passes) on the mid-size config, video grid {t}x{h}x{w} "
              f"({t * h * w // 4} tokens)\n")
    out.write(f"{'option':<34} {'first s':>8} {'s/step':>8} {'speed-up':>9}\n")
    for name, first, mean, ratio in rows:
        out.write(f"{name:<34} {first:>8.2f} {mean:>8.2f} {ratio:>8.2f}x\n")
    for name, reason in not_run:
        out.write(f"{name:<34} not run: {reason}\n")
    out.flush()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.checkpoint
        if folder is None:
            from mova_model.checkpoint.tiny import write_tiny_checkpoint
            folder = write_tiny_checkpoint(Path(tmp) / "MOVA-tiny")
        ref_s, e2e_rows, table = e2e(args, dtype, folder)
    out.write(f"\n2. final latents vs all options off ({folder.name if args.checkpoint else 'tiny checkpoint'}, "
              f"{args.size}x{args.frames}, {args.steps} steps, text CFG 5; all-off run {ref_s:.1f} s)\n")
    out.write(f"{'option':<32} {'video max':>10} {'video rel':>10} {'audio max':>10} {'audio rel':>10} {'run s':>7}  note\n")
    for name, err, seconds, note in e2e_rows:
        out.write(f"{name:<32} {err['video_max']:>10.2e} {err['video_rel']:>10.2e} {err['audio_max']:>10.2e} "
                  f"{err['audio_rel']:>10.2e} {seconds:>7.1f}  {note}\n")
    out.write("\n3. step cache threshold table (same run)\n")
    out.write(f"{'threshold':>9} {'skipped':>11} {'video rel':>10} {'audio rel':>10} {'video max':>10} {'run s':>7}\n")
    for threshold, skipped, total, err, seconds in table:
        out.write(f"{threshold:>9g} {skipped:>5d}/{total:<5d} {err['video_rel']:>10.2e} {err['audio_rel']:>10.2e} "
                  f"{err['video_max']:>10.2e} {seconds:>7.1f}\n")
    from mova_model.sampling.step_cache import MAX_DEFAULT_ERROR
    within = [t for t, _, _, err, _ in table if max(err["video_rel"], err["audio_rel"]) <= MAX_DEFAULT_ERROR]
    out.write(f"largest threshold with video and audio rel <= {MAX_DEFAULT_ERROR:g}: {max(within):g}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
