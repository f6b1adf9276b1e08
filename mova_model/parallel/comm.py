"""Collectives of a parallel MOVA run, each bounded by a timeout and counted.

Every collective is issued asynchronously and bounded by the run's timeout, so a rank that died (its sockets
close) or hangs (it never joins) turns into a `ParallelError` on the ranks still alive, rank 0 included,
instead of a silent hang. How it is waited for depends on where the tensors live:

* gloo (CPU): the host needs the result at once, so each collective is waited for with the timeout.
* NCCL (GPU), "host ahead": a timed `Work.wait(timeout)` blocks the host until the collective has finished
  on the GPU (a 1 ms polling loop in ProcessGroupNCCL), so the host could never queue the next kernels while
  one runs: ~80 stalls per step with Ulysses. Instead each collective is waited for without a timeout (the
  compute stream waits for it, the host does not) and kept as pending; `settle()` at the end of every step
  (and before the per-step stop all-reduce is read) waits for all of them, sleeping between completion checks,
  and raises `ParallelError` for the first one not finished within the timeout since it was issued. A host
  sync inside a step (none in the sampler's step) would block on a dead peer until NCCL's own watchdog, which
  aborts the process after the same timeout (the process group is created with it).

Bytes are counted as what this rank sends: an all-gather sends its piece to each of the n-1 peers, an
all-to-all sends the n-1 slices that belong to other ranks.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Deque, Dict, List, Optional, Sequence, Tuple

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
    tensors live (the CUDA device with NCCL); host_ahead: wait without blocking the host and `settle()` once
    per step (default: on a CUDA device, see the module docstring). `step` (set by the context) goes into
    error messages.
    """

    SETTLE_POLL_S = (0.0002, 0.005)
    """First and longest sleep between completion checks in `settle()` (the sleep doubles up to the longest)."""

    def __init__(self, name: str, group, ranks: Sequence[int], rank: int, timeout_s: float,
                 stats: Optional[CommStats] = None, device: Optional[torch.device] = None,
                 host_ahead: Optional[bool] = None) -> None:
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
        self.host_ahead = self.device.type == "cuda" if host_ahead is None else bool(host_ahead)
        self._pending: Deque[Tuple[object, str, float, Optional[int]]] = deque()

    def _lost(self, what: str, step: Optional[int], detail: str) -> ParallelError:
        at = f" at step {step + 1}" if step is not None else ""
        return ParallelError(
            f"MOVA parallel: rank {self.rank} got no answer from the {self.name} group (ranks {self.ranks}) "
            f"during '{what}'{at} within {self.timeout_s:g} s: another rank died, hung or was stopped ({detail})")

    @staticmethod
    def _detail(err: BaseException) -> str:
        return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__

    def _wait(self, work, what: str) -> None:
        try:
            if self.host_ahead:
                work.wait()  # NCCL: the current stream waits for the collective; the host goes on
            else:
                work.wait(timeout=timedelta(seconds=self.timeout_s))
        except Exception as err:  # noqa: BLE001 - every backend raises its own type; all mean "a peer is gone"
            raise self._lost(what, self.step, self._detail(err)) from err
        if self.host_ahead:
            self._pending.append((work, what, time.monotonic(), self.step))
            while self._pending and self._done(self._pending[0]):
                self._pending.popleft()

    def _done(self, entry) -> bool:
        work, what, _, step = entry
        try:
            return bool(work.is_completed())
        except Exception as err:  # noqa: BLE001 - an aborted communicator reports its error here
            raise self._lost(what, step, self._detail(err)) from err

    @property
    def pending(self) -> int:
        """Collectives issued and not yet known to have finished (host-ahead mode)."""
        return len(self._pending)

    def settle(self) -> None:
        """Wait until every collective issued so far has finished, each within the timeout since it was issued;
        `ParallelError` naming the first one that did not. Sleeps between checks (no spinning). Without host-ahead
        mode every collective was already waited for: nothing to do."""
        sleep = self.SETTLE_POLL_S[0]
        while self._pending:
            entry = self._pending[0]
            if self._done(entry):
                self._pending.popleft()
                continue
            _, what, issued, step = entry
            if time.monotonic() - issued > self.timeout_s:
                self._pending.clear()
                raise self._lost(what, step, "the collective did not finish")
            time.sleep(sleep)
            sleep = min(2 * sleep, self.SETTLE_POLL_S[1])

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
        self.settle()  # reading the value syncs the host with the GPU: only once every collective is known done
        return bool(value.item() > 0)
