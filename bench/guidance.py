"""Passes and CPU step time per guidance setting (official text CFG, dual CFG and its 2-pass special cases).

    .venv/bin/python -m bench.guidance [--steps 3] [--size 128] [--frames 17]

Writes a small random-weight checkpoint in the official layout (`tiny_checkpoint` with wider layers), then
samples the same clip once per setting and prints, per setting, the passes per step (counted by the sampler)
and the best step time over round-robin rounds, with the ratio to the official text CFG (s_T = 5, s_B = 1). Weights are random: only
the passes and times mean anything, not the output.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import List, Sequence, Tuple

import torch

from mova_model.sampling.guidance import GuidanceConfig
from mova_model.sampling.pipeline import MovaPipeline
from mova_model.checkpoint.tiny import TinySpec, write_tiny_checkpoint

SETTINGS: List[Tuple[str, GuidanceConfig]] = [
    ("no guidance (s_T=1, s_B=1)", GuidanceConfig(1.0, 1.0)),
    ("official text CFG (s_T=5, s_B=1)", GuidanceConfig(5.0, 1.0)),
    ("text + modality (s_T=s_B=3.5)", GuidanceConfig(3.5, 3.5)),
    ("lip-sync dual CFG (s_T=5, s_B=3.5)", GuidanceConfig(5.0, 3.5)),
    ("per-modality (video s_B=1, audio s_B=3.5)", GuidanceConfig(5.0, 1.0, audio_bridge_scale=3.5)),
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--size", type=int, default=128, help="width = height in pixels (multiple of 16)")
    p.add_argument("--frames", type=int, default=17, help="4k+1")
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="settings are run round-robin this many times; min is kept")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    spec = TinySpec(video_dim=256, video_heads=2, video_layers=6, audio_dim=128, audio_heads=2, audio_layers=4,
                    bridge_head_dim=64, text_dim=64)
    with tempfile.TemporaryDirectory(prefix="mova-bench-guidance-") as folder:
        pipe = MovaPipeline.from_pretrained(write_tiny_checkpoint(Path(folder) / "ckpt", spec=spec))
        cond = pipe.prepare_conditioning("A man says hello.", width=args.size, height=args.size,
                                         num_frames=args.frames, video_fps=args.fps)
        pipe.sample(cond, seed=0, steps=1, guidance=GuidanceConfig(1.0, 1.0))  # warm-up: builds the modules
        best = {name: float("inf") for name, _ in SETTINGS}
        passes = {}
        for _ in range(args.rounds):  # round-robin, so machine noise hits every setting alike
            for name, config in SETTINGS:
                start = time.perf_counter()
                pipe.sample(cond, seed=0, steps=args.steps, guidance=config)
                best[name] = min(best[name], (time.perf_counter() - start) / args.steps)
                passes[name] = pipe.last_stats.passes_per_step[0]
        rows = [(name, passes[name], best[name]) for name, _ in SETTINGS]
    official = next(t for n, _, t in rows if n.startswith("official"))
    print(f"{'setting':44s} {'passes':>6s} {'s/step':>8s} {'vs official':>11s}")
    for name, passes, per_step in rows:
        print(f"{name:44s} {passes:6d} {per_step:8.3f} {per_step / official:10.2f}x")
    print(f"# CPU, {args.threads} threads, {args.size}x{args.size}, {args.frames} frames, {args.steps} steps, random weights")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
