"""Copy waits measured where the computation waits: `TimedCopyEngine` around a real `BlockStreamer` run on the
CPU (throttled copies: the host thread is the "device", so its wait is the stall), and bench/gpu_streaming.py's
table reporting the device-side figure (it used to report only the host-side one, ~0 on a GPU)."""
import torch
from torch import nn

from bench import gpu_streaming
from bench.copy_waits import TimedCopyEngine
from mova_model.memory.streaming import BlockStreamer, ThrottledCopyEngine


def test_waits_are_timed_per_copy_on_the_cpu():
    blocks = [nn.Linear(256, 256) for _ in range(4)]
    engine = TimedCopyEngine(ThrottledCopyEngine(bandwidth=20e6))  # ~13 ms per 263 kB block
    x = torch.randn(2, 256)
    with torch.no_grad(), BlockStreamer(blocks, "cpu", prefetch_depth=1, copy_engine=engine) as streamer:
        for block in blocks:
            x = streamer(block, x)
        waited = engine.device_wait_s()
    assert engine.waits >= len(blocks)  # one per streamed call (plus a drained prefetch)
    assert waited > 0.005  # the first block is copied on demand: at least its copy time
    assert abs(waited - streamer.stats.wait_s) < 0.05


def test_gpu_streaming_smoke_reports_device_waits(capsys):
    assert gpu_streaming.main(["--smoke", "--passes", "1", "--caps", "24", "--dtypes", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "s/pass on the device" in out and "identical=yes" in out
