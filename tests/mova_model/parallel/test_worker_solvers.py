"""The MOVA Multi-GPU worker pool (two CPU workers, gloo) with a solver, a shift, a restyle init and per-stream
denoise: the job carries them to every worker and the latents equal one process bit for bit (CFG split)."""
import pytest
import torch

from mova_model.parallel.workers import ParallelError, WorkerPool, WorkerSpec
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


def test_a_worker_that_died_between_runs_is_reported_once_then_restarted():
    """A worker killed while the pool is idle: the next run says which one and how it ended (it used to be
    restarted silently, or reported, depending on how fast the kill landed), and the run after it starts a new
    pool."""
    pool = WorkerPool(WorkerSpec(devices=("cpu", "cpu"), split="cfg", timeout_s=60.0, threads=1))
    try:
        pool.start()
        first = [p.pid for p in pool.procs]
        pool.procs[1].kill()
        pool.procs[1].join(timeout=30)
        with pytest.raises(ParallelError, match=rf"worker 1 \(cpu, pid {first[1]}\) exited with code -9 while idle; "
                                                 "all workers were stopped and will be restarted on the next run"):
            pool.start()
        assert pool.procs == [] and "exited with code -9" in pool.last_crash
        pool.start()
        assert pool.running and not {p.pid for p in pool.procs} & set(first)
    finally:
        pool.stop()
