"""`torchrun --nproc-per-node N -m mova_model generate ... --parallel cfg|ulysses|cfg+ulysses`.

Every rank parses and validates the same command (so a bad setting stops all ranks alike, before any
collective), joins the process group from torchrun's environment, opens the checkpoint on its own device
(`cuda:LOCAL_RANK`, or the CPU with gloo) with its own memory plan, and samples under the shared
`ParallelContext`. Every rank ends with the same latents; rank 0 alone decodes and writes the mp4 (and
`--save-latents`) and prints the path. Errors are printed by rank 0 (exit 1; bad settings exit 2).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

import torch

from .context import DEFAULT_TIMEOUT_S, init_from_env, torchrun_rank
from .layout import SPLITS, ParallelError

logger = logging.getLogger(__name__)


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """--parallel SPLIT, --cfg-ranks N, --parallel-timeout S."""
    parser.add_argument("--parallel", choices=SPLITS, default=None,
                        help="spread each step over the ranks torchrun started: cfg (guidance passes on different "
                             "ranks, same result), ulysses (video and audio tokens split, within fp32 tolerance) "
                             "or cfg+ulysses (e.g. 4 ranks = CFG 2 x Ulysses 2)")
    parser.add_argument("--cfg-ranks", type=int, default=2,
                        help="CFG degree of --parallel cfg+ulysses (2 for text CFG; 3 needs dual CFG)")
    parser.add_argument("--parallel-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds any rank may wait for the others in one collective before the run stops "
                             f"with an error (default {DEFAULT_TIMEOUT_S:g})")


def run_parallel_generate(args: argparse.Namespace, request_from_args: Callable, open_pipeline: Callable,
                          generate: Callable, write_outputs: Callable) -> int:
    """The generate command on this rank (the generate CLI's pieces are passed in); exit status."""
    from ..checkpoint.folder import CheckpointError
    from ..sampling.pipeline import InputError

    rank = torchrun_rank()[0]

    def report(message: str) -> None:
        if rank == 0:
            sys.stderr.write(f"error: {message}\n")

    try:
        request = request_from_args(args)
    except InputError as exc:
        report(str(exc))
        return 2
    context = None
    try:
        if args.parallel_timeout <= 0:
            raise ParallelError(f"--parallel-timeout must be more than 0 seconds, got {args.parallel_timeout}")
        want_cuda = str(args.device).startswith("cuda")
        if want_cuda and not torch.cuda.is_available():
            raise ParallelError("--device cuda was given but this machine has no CUDA GPU")
        context = init_from_env(args.parallel, timeout_s=args.parallel_timeout, cfg_degree=args.cfg_ranks,
                                use_cuda=want_cuda)
        args.device = str(context.device)
        pipeline = open_pipeline(args)
        pipeline.parallel = context
        latents = generate(pipeline, request)
        if context.is_main:
            path = write_outputs(pipeline, latents, request)
            sys.stdout.write(f"{path}\n")
    except (InputError, CheckpointError) as exc:
        report(str(exc))
        return 2
    except ParallelError as exc:
        report(str(exc))
        return 1
    finally:
        if context is not None:
            context.close()
    return 0
