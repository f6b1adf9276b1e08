"""The MOVA Multi-GPU worker pool (two CPU workers, gloo) with a solver, a shift, a restyle init and per-stream
denoise: the job carries them to every worker and the latents equal one process bit for bit (CFG split)."""
import pytest
import torch

from mova_model.parallel.workers import WorkerPool, WorkerSpec
from mova_model.sampling.drivers import encode_clip
from mova_model.sampling.guidance import GuidanceConfig
from mova_model.sampling.pipeline import InputError, MovaPipeline
from mova_model.sampling.schedules import ScheduleOptions


@pytest.fixture(scope="module")
def pool():
    workers = WorkerPool(WorkerSpec(devices=("cpu", "cpu"), split="cfg", timeout_s=120.0, threads=1))
    yield workers
    workers.stop()


def test_remote_unipc_restyle_equals_one_process(pool, tiny_pipe, tiny_cond):
    frames = torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(3))
    wave = torch.sin(torch.linspace(0, 400, 8000)).reshape(1, 1, -1) * 0.2
    init, _ = encode_clip(tiny_pipe, frames, tiny_cond, wave, 16000)
    settings = dict(seed=6, steps=3, guidance=GuidanceConfig(text_scale=5.0), schedule=ScheduleOptions("unipc", shift=3.0),
                    init=init, denoise=0.7, audio_denoise=0.4)
    local = tiny_pipe.sample(tiny_cond, **settings)
    remote_pipe = MovaPipeline(tiny_pipe.checkpoint, device="cpu", dtype=torch.float32, cache=tiny_pipe.cache)
    remote_pipe.remote = pool
    steps = []
    remote = remote_pipe.sample(tiny_cond, callback=steps.append, **settings)
    assert [s.index for s in steps] == [0, 1, 2]
    assert torch.equal(remote.video, local.video) and torch.equal(remote.audio, local.audio)
    with pytest.raises(InputError, match="solver = 'heun' is not known"):  # refused here, before any job is sent
        remote_pipe.sample(tiny_cond, steps=2, schedule=ScheduleOptions("heun"))
