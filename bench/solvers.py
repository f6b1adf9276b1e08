"""How many steps each solver needs: the ODE error of the final latents against a many-step Euler reference.

    .venv/bin/python -m bench.solvers                      # tiny + mid-size random-weight models, written here
    .venv/bin/python -m bench.solvers --checkpoint models/mova/MOVA-360p --device cuda --dtype bf16 \\
        --size 640x352 --frames 33                          # a real checkpoint (hours on one GPU)

For each model: one clip (same prompt, same seed, the official text CFG 5), sampled with MOVA's official Euler at
`--reference` steps (default 200) as the reference, then with every solver (euler, unipc, dpm++) at each step
count of the grid. For every run: relative L2 error `|x − ref| / |ref|` of the final video and audio latents. Then
the fewest steps of the grid at which each solver's error is at most Euler-50's (the official setting), per stream.

Random weights say nothing about image or sound quality; what this measures is how closely each solver follows the
same probability-flow ODE (both experts, the switch at the boundary timestep, CFG) with fewer steps. A random DiT's
output also swings with the fast sinusoidal timestep features (periods down to 6 timesteps, where a schedule step
spans 20 or more), passed on untamed by untrained weights: on a rough ODE no solver reaches its order. So each random model is also measured "time-smoothed": the same weights with the DiTs'
time-embedding inputs for features of period under `SMOOTH_PERIOD` timesteps zeroed, an ODE that is smooth in t as
multistep solvers assume (`--variants smooth`). Neither is a trained model; with a real checkpoint (`--checkpoint`)
the table to trust is its own. For scale, the same solvers on an ODE whose exact solution is known: the probability
flow of Gaussian data (per element mean μ, deviation s), which maps x(σ₀) to μ + s/√((1−σ₀)²s² + σ₀²)·(x(σ₀) −
(1−σ₀)μ) at σ = 0; its velocity is smooth, so there the solvers show their order.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from bench.denoiser import DTYPES, bench_dtype
from mova_model.checkpoint.tiny import TinySpec, write_tiny_checkpoint
from mova_model.sampling.guidance import GuidanceConfig
from mova_model.sampling.pipeline import MovaPipeline
from mova_model.sampling.schedules import SOLVERS, ScheduleOptions

logger = logging.getLogger("bench.solvers")

TABLE_STEPS = (4, 8, 10, 20, 30, 50)
SEARCH_STEPS = (4, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50)
MID_SIZE = TinySpec(z_dim=16, text_dim=64, video_dim=256, video_heads=2, video_layers=6, audio_dim=128,
                    audio_heads=4, audio_layers=4, bridge_head_dim=32, audio_latent_dim=32)
"""A mid-size random model: Wan's 16-channel latents, 256-wide video blocks (6 layers), 128-wide audio blocks."""
SMOOTH_PERIOD = 100.0
"""Timestep features with a shorter period (in timesteps, 0..1000 scale) are cut from the time-smoothed variants."""
TIME_COMPONENTS = ("video_dit", "video_dit_2", "audio_dit")


def time_smoothed_copy(source: Path, target: Path, period: float = SMOOTH_PERIOD) -> Path:
    """A copy of checkpoint `source` whose DiTs ignore the sinusoidal timestep features of period < `period`
    timesteps: the matching input columns (cos and sin) of `time_embedding.0.weight` are zeroed."""
    import json

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    for component in TIME_COMPONENTS:
        freq_dim = int(json.loads((target / component / "config.json").read_text())["freq_dim"])
        half = freq_dim // 2
        omega = torch.pow(10000, -torch.arange(half, dtype=torch.float64).div(half))  # as `sinusoidal_embedding`
        fast = (2 * math.pi / omega) < period
        columns = torch.cat([fast, fast])  # [cos | sin]
        for path in sorted((target / component).glob("*.safetensors")):
            tensors = load_file(str(path))
            if "time_embedding.0.weight" in tensors:
                tensors["time_embedding.0.weight"][:, columns] = 0
                save_file(tensors, str(path))
    return target


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, action="append",
                   help="checkpoint folder (repeatable); default: a tiny and a mid-size random model written here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default fp32 on CPU, bf16 on CUDA")
    p.add_argument("--size", default="64x64", help="clip WxH (multiples of 16)")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--cfg", type=float, default=5.0, help="text CFG scale (official 5)")
    p.add_argument("--reference", type=int, default=200, help="Euler steps of the reference")
    p.add_argument("--steps", type=int, nargs="+", default=list(SEARCH_STEPS),
                   help="step counts to run (the table shows those of 4 8 10 20 30 50 among them)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--variants", nargs="+", default=["random"], choices=["random", "smooth"],
                   help="without --checkpoint: the random models as written, and/or their time-smoothed copies")
    p.add_argument("--threads", type=int, default=0)
    return p.parse_args(argv)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    a, b = out.double().cpu(), ref.double().cpu()
    return ((a - b).norm() / b.norm()).item()


def measure(folder: Path, args: argparse.Namespace, dtype: torch.dtype) -> Tuple[Dict[Tuple[str, int], Tuple[float, float]], float]:
    """{(solver, steps): (video error, audio error)} for one checkpoint, and the reference's seconds per step."""
    width, height = (int(v) for v in args.size.lower().split("x"))
    pipe = MovaPipeline.from_pretrained(folder, device=args.device, dtype=dtype)
    cond = pipe.prepare_conditioning("a man says hello in the kitchen", "static, blurry", None, width=width,
                                     height=height, num_frames=args.frames, video_fps=args.fps)
    guidance = GuidanceConfig(text_scale=args.cfg)

    def run(solver: str, steps: int):
        options = None if solver == "euler" else ScheduleOptions(solver)
        return pipe.sample(cond, seed=args.seed, steps=steps, guidance=guidance, schedule=options)

    start = time.perf_counter()
    reference = run("euler", args.reference)
    per_step = (time.perf_counter() - start) / args.reference
    errors = {}
    for solver in SOLVERS:
        for steps in sorted(set(args.steps)):
            out = run(solver, steps)
            errors[(solver, steps)] = (relative_error(out.video, reference.video),
                                       relative_error(out.audio, reference.audio))
            logger.info("%s %d: video %.3g audio %.3g", solver, steps, *errors[(solver, steps)])
    return errors, per_step


def steps_to_match(errors, solver: str, stream: int, target: float) -> Optional[int]:
    """The fewest steps of the grid at which `solver`'s error of `stream` (0 video, 1 audio) is ≤ `target`."""
    for steps in sorted(s for (name, s) in errors if name == solver):
        if errors[(solver, steps)][stream] <= target * (1 + 1e-9):
            return steps
    return None


def gaussian_flow_errors(steps_list: Sequence[int], shift: float = 5.0, seed: int = 0) -> Dict[Tuple[str, int], float]:
    """{(solver, steps): relative error of x(0)} on the exact flow of Gaussian data (module docstring), 4096
    elements with μ ~ N(0, 4), s ~ U(0.5, 1), at the released MOVA scheduler config's shift; float32 solvers as in
    the sampler, float64 velocity and exact solution."""
    from mova_model.checkpoint.configs import SchedulerConfig
    from mova_model.sampling.schedules import full_schedule
    from mova_model.sampling.solvers import make_solver

    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(1, 4096, generator=g).double() * 2
    dev = torch.rand(1, 4096, generator=g).double() * 0.5 + 0.5
    noise = torch.randn(1, 4096, generator=g)

    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        a = 1 - sigma
        x0 = mu + a * dev ** 2 / (a * a * dev ** 2 + sigma * sigma) * (x.double() - a * mu)  # E[x0 | x_σ]
        return ((x.double() - x0) / sigma).float()

    config = SchedulerConfig(shift=shift, sigma_min=0.003 / 1.002, extra_one_step=True)
    errors = {}
    for solver in SOLVERS:
        for steps in steps_list:
            schedule = full_schedule(config, ScheduleOptions(solver), steps)
            sigma0 = float(schedule.sigmas[0])
            state, x = make_solver(solver, schedule), noise.clone()
            for i in range(steps):
                x = state.step(velocity(x, float(schedule.sigmas[i])), x)
            exact = mu + dev / torch.sqrt((1 - sigma0) ** 2 * dev ** 2 + sigma0 ** 2) * (noise.double() - (1 - sigma0) * mu)
            errors[(solver, steps)] = ((x.double() - exact).norm() / exact.norm()).item()
    return errors


def report_gaussian(errors, out) -> None:
    grid = sorted({s for (_, s) in errors if s in TABLE_STEPS}) or sorted({s for (_, s) in errors})
    out.write("\n### exact flow of Gaussian data (smooth velocity, no network): relative error of x(0)\n\n")
    out.write("| steps | " + " | ".join(SOLVERS) + " |\n|---|" + "---|" * len(SOLVERS) + "\n")
    for steps in grid:
        out.write(f"| {steps} | " + " | ".join(f"{errors[(solver, steps)]:.2e}" for solver in SOLVERS) + " |\n")
    full = sorted({s for (_, s) in errors})
    if 50 in full:
        target = errors[("euler", 50)]
        found = {solver: next((n for n in full if errors[(solver, n)] <= target), None) for solver in SOLVERS}
        out.write(f"\nsteps to reach Euler-50's error ({target:.2e}), searched over {', '.join(map(str, full))}: "
                  + ", ".join(f"{solver} {'> 50' if n is None else n}" for solver, n in found.items()) + "\n")


def report(name: str, errors, per_step: float, args: argparse.Namespace, out) -> None:
    grid = sorted({s for (_, s) in errors})
    shown = [s for s in grid if s in TABLE_STEPS] or grid
    out.write(f"\n### {name}: relative L2 error of the final latents vs Euler-{args.reference} "
              f"({per_step:.2f} s per reference step)\n\n")
    out.write("| steps | " + " | ".join(f"{s} video | {s} audio" for s in SOLVERS) + " |\n")
    out.write("|---|" + "---|---|" * len(SOLVERS) + "\n")
    for steps in shown:
        cells = []
        for solver in SOLVERS:
            video, audio = errors[(solver, steps)]
            cells += [f"{video:.2e}", f"{audio:.2e}"]
        out.write(f"| {steps} | " + " | ".join(cells) + " |\n")
    if 50 not in grid:
        return
    target_video, target_audio = errors[("euler", 50)]
    out.write(f"\nsteps to reach Euler-50's error (video {target_video:.2e}, audio {target_audio:.2e}), "
              f"searched over {', '.join(map(str, grid))}:\n\n| solver | video | audio |\n|---|---|---|\n")
    for solver in SOLVERS:
        found = [steps_to_match(errors, solver, i, t) for i, t in ((0, target_video), (1, target_audio))]
        out.write(f"| {solver} | " + " | ".join("> " + str(grid[-1]) if f is None else str(f) for f in found) + " |\n")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = bench_dtype(args.dtype, args.device)
    out = sys.stdout
    out.write(f"bench.solvers on {args.device} ({torch.get_num_threads()} threads), {str(dtype).replace('torch.', '')}, "
              f"clip {args.size} x {args.frames} frames at {args.fps:g} fps, text CFG {args.cfg:g}, seed {args.seed}\n")
    report_gaussian(gaussian_flow_errors(sorted(set(args.steps))), out)
    out.flush()
    with tempfile.TemporaryDirectory(prefix="mova-bench-solvers-") as temp:
        models: List[Tuple[str, Path]] = [(str(p), p) for p in args.checkpoint or []]
        if not models:
            for name, spec in (("tiny random model", TinySpec()),
                               ("mid-size random model (video 256x6, audio 128x4, z 16)", MID_SIZE)):
                folder = write_tiny_checkpoint(Path(temp) / name.split()[0], spec=spec)
                if "random" in args.variants:
                    models.append((name, folder))
                if "smooth" in args.variants:
                    models.append((f"{name}, time-smoothed (features of period < {SMOOTH_PERIOD:g} timesteps cut)",
                                   time_smoothed_copy(folder, Path(temp) / (name.split()[0] + "-smooth"))))
        for name, folder in models:
            errors, per_step = measure(folder, args, dtype)
            report(name, errors, per_step, args, out)
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
