"""Collectives of a parallel MOVA run, each bounded by a timeout and counted.

Every collective is issued asynchronously and waited for with the run's timeout, so a rank that died (its
sockets close) or hangs (it never joins) turns into a `ParallelError` on the ranks still alive, rank 0
included, instead of a silent hang. Bytes are counted as what this rank sends: an all-gather sends its piece
to each of the n-1 peers, an all-to-all sends the n-1 slices that belong to other ranks.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from .layout import ParallelError

logger = logging.getLogger(__name__)


@dataclass
class CommStats:
    """Per collective name: calls and bytes this rank sent (for `bench/parallel.py` and the logs)."""

    calls: Dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes_sent: Dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, what: str, nbytes: int) -> None:
        self.calls[what] += 1
        self.bytes_sent[what] += int(nbytes)

    def reset(self) -> None:
        self.calls.clear()
        self.bytes_sent.clear()


class RankGroup:
    """One process group (all ranks, the CFG group or the sequence group) with timed, counted collectives.

    group: the torch process group (None: the default group); ranks: its global ranks in group order;
    rank: this process's global rank; timeout_s: the bound on every collective; device: where small control
    tensors live (the CUDA device with NCCL). `step` (set by the context) goes into error messages.
    """

    def __init__(self, name: str, group, ranks: Sequence[int], rank: int, timeout_s: float,
                 stats: Optional[CommStats] = None, device: Optional[torch.device] = None) -> None:
        self.name = name
        self.device = device or torch.device("cpu")
        self.group = group
        self.ranks = list(ranks)
        self.rank = rank
        self.size = len(self.ranks)
        self.index = self.ranks.index(rank)
        self.timeout_s = float(timeout_s)
        self.stats = stats
        self.step: Optional[int] = None

    def _wait(self, work, what: str) -> None:
        try:
            work.wait(timeout=timedelta(seconds=self.timeout_s))
        except Exception as err:  # noqa: BLE001 - every backend raises its own type; all mean "a peer is gone"
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            at = f" at step {self.step + 1}" if self.step is not None else ""
            raise ParallelError(
                f"MOVA parallel: rank {self.rank} got no answer from the {self.name} group (ranks {self.ranks}) "
                f"during '{what}'{at} within {self.timeout_s:g} s: another rank died, hung or was stopped "
                f"({detail})") from err

    def all_gather(self, tensor: torch.Tensor, what: str) -> List[torch.Tensor]:
        """Every rank's `tensor` (same shape everywhere), in group order."""
        tensor = tensor.contiguous()
        if self.size == 1:
            return [tensor]
        out = [torch.empty_like(tensor) for _ in range(self.size)]
        if self.stats is not None:
            self.stats.add(what, tensor.numel() * tensor.element_size() * (self.size - 1))
        self._wait(dist.all_gather(out, tensor, group=self.group, async_op=True), what)
        return out

    def all_to_all(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """Slice i of dim 0 goes to group rank i; slice i of the result came from group rank i."""
        tensor = tensor.contiguous()
        if self.size == 1:
            return tensor
        out = torch.empty_like(tensor)
        if self.stats is not None:
            self.stats.add(what, tensor.numel() * tensor.element_size() * (self.size - 1) // self.size)
        self._wait(dist.all_to_all_single(out, tensor, group=self.group, async_op=True), what)
        return out

    def any_true(self, flag: bool, what: str) -> bool:
        """True on every rank when `flag` is true on at least one (a tiny all-reduce, e.g. to stop together)."""
        if self.size == 1:
            return bool(flag)
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        if self.stats is not None:
            self.stats.add(what, value.element_size() * (self.size - 1))
        self._wait(dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group, async_op=True), what)
        return bool(value.item() > 0)
