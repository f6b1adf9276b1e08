"""How a rank waits for its collectives: on GPUs (NCCL) the host must not block on each one, yet a dead rank must
still be reported within the timeout. The NCCL work objects are stood in for by `GpuWork`: `wait()` without a
timeout returns at once (the compute stream waits, not the host) and `is_completed()` says whether the GPU has
finished, which is what ProcessGroupNCCL's works do. Real gloo ranks in host-ahead mode run in
test_parallel_runs.py."""
import time

import pytest
import torch
import torch.distributed as dist

from mova_model.parallel.comm import RankGroup
from mova_model.parallel.layout import ParallelError


class GpuWork:
    def __init__(self) -> None:
        self.finished = False
        self.wait_timeouts = []
        self.polls = 0

    def wait(self, timeout=None):
        self.wait_timeouts.append(timeout)
        return True

    def is_completed(self) -> bool:
        self.polls += 1
        return self.finished


@pytest.fixture
def issued(monkeypatch):
    """Every all-to-all / all-gather returns a fresh `GpuWork` (listed here) instead of talking to peers."""
    works = []

    def collective(*args, **kwargs):
        works.append(GpuWork())
        return works[-1]

    monkeypatch.setattr(dist, "all_to_all_single", collective)
    monkeypatch.setattr(dist, "all_gather", collective)
    return works


def _group(timeout_s=5.0, **kwargs):
    return RankGroup("sequence-parallel", None, [0, 1], 0, timeout_s, **kwargs)


def test_gpu_groups_wait_host_ahead_and_cpu_groups_with_the_timeout():
    assert _group(device=torch.device("cuda")).host_ahead
    assert not _group(device=torch.device("cpu")).host_ahead


def test_host_ahead_collectives_do_not_block_and_settle_once_finished(issued):
    group = _group(host_ahead=True)
    x = torch.randn(2, 3, 4)
    for _ in range(5):  # a step's worth of exchanges: none waits for the GPU
        group.all_to_all(x, "all-to-all video<-video qkv")
    group.all_gather(x, "all-gather video head output")
    assert len(issued) == 6 and group.pending == 6
    assert all(w.wait_timeouts == [None] for w in issued)  # no timed (host-blocking) wait
    for work in issued:
        work.finished = True
    group.settle()
    assert group.pending == 0


def test_without_host_ahead_every_collective_is_waited_with_the_timeout(issued):
    group = _group(timeout_s=7.0, host_ahead=False)
    group.all_to_all(torch.randn(2, 3), "all-to-all")
    assert issued[0].wait_timeouts[0].total_seconds() == 7.0 and group.pending == 0


def test_a_collective_that_never_finishes_is_reported_within_the_timeout_without_spinning(issued):
    group = _group(timeout_s=0.3, host_ahead=True)
    group.step = 2
    group.all_to_all(torch.randn(2, 3), "all-to-all audio<-video kv")
    start = time.monotonic()
    with pytest.raises(ParallelError) as info:
        group.settle()
    waited = time.monotonic() - start
    message = str(info.value)
    assert "sequence-parallel" in message and "all-to-all audio<-video kv" in message and "at step 3" in message
    assert 0.25 <= waited < 2.0
    assert issued[0].polls < 300  # sleeps between checks (a spin would poll hundreds of thousands of times)
    assert group.pending == 0  # the broken collective is not reported twice
