"""One rank of a parallel test run (started by tests/parallel_launch.py with torchrun's variables).

python rank_main.py CHECKPOINT OUT --split cfg|ulysses|cfg+ulysses|none --guidance text|dual|one --steps N
    [--timeout S] [--kill-at-step K --kill-rank R] [--host-ahead]
Rank 0 writes the final latents to OUT (safetensors: video, audio). With --kill-at-step, rank R kills itself
(SIGKILL) after step K (with --hang it first sleeps 3 x timeout: a hung rank), and rank 0 writes the seconds from its last finished step to the error, and the error, to OUT + ".error".
"""
import argparse
import logging
import os
import signal
import sys
import time

import torch
from safetensors.torch import save_file

from mova_model.parallel import CommStats, ParallelError, init_from_env
from mova_model.sampling.guidance import GuidanceConfig
from mova_model.sampling.pipeline import MovaPipeline

CLIP = dict(width=32, height=32, num_frames=5, video_fps=8.0)
GUIDANCE = {"text": GuidanceConfig(text_scale=5.0), "dual": GuidanceConfig(text_scale=5.0, bridge_scale=3.5),
            "one": GuidanceConfig(text_scale=1.0)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--split", default="none")
    parser.add_argument("--guidance", default="text")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--kill-at-step", type=int, default=-1)
    parser.add_argument("--kill-rank", type=int, default=1)
    parser.add_argument("--hang", action="store_true", help="rank R sleeps (3 x timeout) instead of dying")
    parser.add_argument("--host-ahead", action="store_true",
                        help="wait for collectives as on GPUs (untimed wait, settle once per step)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    torch.set_num_threads(1)
    parallel = None if args.split == "none" else init_from_env(args.split, timeout_s=args.timeout,
                                                               cfg_degree=3 if args.guidance == "dual" and args.split == "cfg+ulysses" else 2,
                                                               stats=CommStats(),
                                                               host_ahead=True if args.host_ahead else None)
    rank = 0 if parallel is None else parallel.rank
    pipe = MovaPipeline.from_pretrained(args.checkpoint, device="cpu", dtype=torch.float32)
    cond = pipe.prepare_conditioning("a man says hello in the kitchen", "static, blurry", None, **CLIP)

    last_step_end = [time.monotonic()]

    def on_step(info):
        last_step_end[0] = time.monotonic()
        if info.index == args.kill_at_step and rank == args.kill_rank:
            if args.hang:
                time.sleep(3 * args.timeout)
            os.kill(os.getpid(), signal.SIGKILL)

    try:
        latents = pipe.sample(cond, seed=7, steps=args.steps, guidance=GUIDANCE[args.guidance], callback=on_step,
                              parallel=parallel)
    except ParallelError as err:
        if rank == 0:
            with open(args.out + ".error", "w") as f:
                f.write(f"{time.monotonic() - last_step_end[0]:.2f}\n{err}\n")
        parallel.close()  # leaving a broken group must not hang either (the CLI does the same)
        return 3
    if rank == 0:
        save_file({"video": latents.video.contiguous(), "audio": latents.audio.contiguous()}, args.out)
    if parallel is not None:
        parallel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
