"""One rank's view of a parallel MOVA run: the process groups, CFG-parallel branches, the Ulysses split.

`ParallelContext` is what `MovaPipeline.sample(..., parallel=ctx)` takes (the sampler's `BranchRunner`):
- CFG-parallel: branch j of a step runs on CFG rank j mod C; the predictions of all branches are then
  all-gathered in one collective per step and every rank combines them with the usual guidance combiner, so
  every rank holds bit-for-bit the predictions one process would have (the combination and the scheduler
  step are the same code on the same values, hence the same latents).
- Ulysses: `sequence` (an `UlyssesSequence`) is handed to `joint_forward`.
Process groups come from torchrun's environment (`init_from_env`) or from explicit addresses (the spawned
ComfyUI workers); gloo on CPU, NCCL on CUDA. Every collective is bounded by `timeout_s` (see `comm.py`).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from .comm import CommStats, RankGroup
from .layout import ParallelError, ParallelLayout, check_layout, layout_for
from .ulysses import UlyssesSequence

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
"""Default bound on one collective: long enough for a rank to build an expert (the low-noise expert is built
at the switch, in the middle of a run) yet far below a silent hang."""

Prediction = Tuple[torch.Tensor, torch.Tensor]


class ParallelContext:
    """This rank in a run laid out as `layout` (see `layout.py` for the rank arithmetic)."""

    def __init__(self, layout: ParallelLayout, rank: int, device: torch.device, timeout_s: float,
                 world_group: RankGroup, cfg_group: RankGroup, sequence_group: RankGroup,
                 stats: Optional[CommStats] = None) -> None:
        self.layout = layout
        self.rank = rank
        self.device = device
        self.timeout_s = timeout_s
        self.world_group = world_group
        self.cfg_group = cfg_group
        self.sequence_group = sequence_group
        self.stats = stats
        self.sequence = UlyssesSequence(sequence_group) if layout.ulysses > 1 else None

    @property
    def is_main(self) -> bool:
        """True on global rank 0 (the rank that writes outputs and reports)."""
        return self.rank == 0

    def check(self, configs, branches: Sequence) -> None:
        """Raise `ParallelError` when this checkpoint or this guidance cannot run on the layout."""
        check_layout(self.layout, configs, branches)

    def _set_step(self, step: int) -> None:
        for group in (self.world_group, self.cfg_group, self.sequence_group):
            group.step = step

    def run_branches(self, branches: Tuple, forward: Callable[[object], Prediction], step: int) -> Dict[object, Prediction]:
        """Evaluate this CFG rank's branches and all-gather every branch's (video, audio) predictions (float32).

        One collective per step: a [slots, Nv + Na] buffer per rank, slots = ceil(branches / C)."""
        self._set_step(step)
        cfg, index = self.layout.cfg, self.cfg_group.index
        if cfg == 1:
            out = {branch: forward(branch) for branch in branches}
            self.settle()
            return out
        if len(branches) < cfg:
            raise ParallelError(f"CFG-parallel over {cfg} ranks got a step with only {len(branches)} guidance passes")
        mine = [forward(b) for j, b in enumerate(branches) if j % cfg == index]
        video_shape, audio_shape = mine[0][0].shape, mine[0][1].shape
        video_numel = mine[0][0].numel()
        slots = -(-len(branches) // cfg)
        buffer = torch.zeros(slots, video_numel + mine[0][1].numel(), dtype=torch.float32, device=mine[0][0].device)
        for slot, (video, audio) in enumerate(mine):
            buffer[slot, :video_numel] = video.reshape(-1)
            buffer[slot, video_numel:] = audio.reshape(-1)
        gathered = self.cfg_group.all_gather(buffer, "all-gather guidance branches")
        out = {}
        for j, branch in enumerate(branches):
            row = gathered[j % cfg][j // cfg]
            out[branch] = (row[:video_numel].view(video_shape), row[video_numel:].view(audio_shape))
        self.settle()
        return out

    def settle(self) -> None:
        """End of a step: every collective of the step has finished (or `ParallelError`), before the sampler
        reads anything back to the host. The host ran ahead of the GPU within the step (`comm.py`)."""
        for group in (self.sequence_group, self.cfg_group, self.world_group):
            group.settle()

    def agree_to_stop(self, stop: bool, step: Optional[int] = None) -> bool:
        """True on every rank when any rank asks to stop (one tiny all-reduce), so all stop at the same step."""
        if step is not None:
            self._set_step(step)
        return self.world_group.any_true(stop, "all-reduce stop flag")

    def close(self) -> None:
        """Leave the process group (safe to call twice)."""
        if dist.is_initialized():
            dist.destroy_process_group()


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA tensors, gloo for CPU tensors."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_parallel(layout: ParallelLayout, rank: int, world_size: int, device: torch.device | str,
                  timeout_s: float = DEFAULT_TIMEOUT_S, init_method: str = "env://",
                  stats: Optional[CommStats] = None, host_ahead: Optional[bool] = None) -> ParallelContext:
    """Join (or reuse) the default process group and build the CFG and sequence subgroups of `layout`.

    Every rank calls this with the same layout. `init_method`: "env://" (torchrun's MASTER_ADDR/PORT) or
    "tcp://host:port". `host_ahead`: how collectives are waited for (`comm.RankGroup`; default: on CUDA).
    Raises `ParallelError` when the world size does not match the layout.
    """
    device = torch.device(device)
    if world_size != layout.world:
        raise ParallelError(f"the layout needs {layout.describe()} but {world_size} ranks were started")
    backend = backend_for(device)
    timeout = timedelta(seconds=float(timeout_s))
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size, timeout=timeout,
                                **kwargs)
    world = RankGroup("all-ranks", None, list(range(world_size)), rank, timeout_s, stats, device, host_ahead)
    cfg_group = sequence_group = None
    # new_group is collective: every rank creates every subgroup in the same order
    for c in range(layout.cfg):
        ranks = layout.sequence_group_ranks(c)
        group = dist.new_group(ranks, timeout=timeout, backend=backend) if layout.ulysses > 1 else None
        if rank in ranks:
            sequence_group = RankGroup("sequence-parallel", group, ranks, rank, timeout_s, stats, device, host_ahead)
    for s in range(layout.ulysses):
        ranks = layout.cfg_group_ranks(s)
        group = dist.new_group(ranks, timeout=timeout, backend=backend) if layout.cfg > 1 else None
        if rank in ranks:
            cfg_group = RankGroup("CFG-parallel", group, ranks, rank, timeout_s, stats, device, host_ahead)
    logger.info("parallel rank %d/%d on %s: %s (CFG rank %d, sequence rank %d, %s, timeout %g s)", rank, world_size,
                device, layout.describe(), layout.cfg_rank(rank), layout.sequence_rank(rank), backend, timeout_s)
    return ParallelContext(layout, rank, device, timeout_s, world, cfg_group, sequence_group, stats)


def torchrun_rank() -> Tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_from_env(split: str, timeout_s: float = DEFAULT_TIMEOUT_S, cfg_degree: int = 2,
                  stats: Optional[CommStats] = None, use_cuda: Optional[bool] = None,
                  host_ahead: Optional[bool] = None) -> ParallelContext:
    """The context of a torchrun-launched rank: CUDA device `LOCAL_RANK` (NCCL) when `use_cuda` (default:
    when CUDA exists), else the CPU (gloo)."""
    rank, world, local = torchrun_rank()
    if "MASTER_ADDR" not in os.environ:
        raise ParallelError("--parallel needs the torchrun launcher: torchrun --nproc-per-node N -m mova_model ...")
    if use_cuda is None:
        use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return init_parallel(layout_for(split, world, cfg_degree), rank, world, device, timeout_s, "env://", stats,
                         host_ahead)
