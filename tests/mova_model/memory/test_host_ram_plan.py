"""The memory plan on the CPU (issue 9, item 4): host RAM as the budget, checked before the conditioner's VAE
encode and before the decode, with the VAE working sets counted, and a message saying what would fit.

Before: no plan ran for the CPU device; 4096x4096x1025 (a size the Conditioner accepts) reached torch's raw
"DefaultCPUAllocator: can't allocate memory: you tried to allocate 206158430208 bytes" after the text encoder
ran, and 2048x2048x193 grew the process to 9 GB in 7 s on its way out of memory.
"""

import re
import time

import pytest
import torch

from mova_model.memory.model_store import MemoryOptions
from mova_model.memory.planner import plan_memory, what_would_fit
from mova_model.memory.sizes import GB, Architecture, PlanInputs, host_vae_bytes
from mova_model.sampling.pipeline import InputError, JointLatents, MovaPipeline

FAST_SECONDS = 1.0


def _pipe(tiny_pipe, ram_gb=None) -> MovaPipeline:
    return MovaPipeline(tiny_pipe.checkpoint, device="cpu", dtype=torch.float32,
                        memory=MemoryOptions(ram_budget_gb=ram_gb))


def test_a_clip_no_machine_can_hold_is_refused_before_any_work(tiny_pipe):
    pipe = _pipe(tiny_pipe)
    t0 = time.monotonic()
    with pytest.raises(InputError) as err:
        pipe.prepare_conditioning("a storm", "", None, width=4096, height=4096, num_frames=1025, video_fps=24.0)
    seconds = time.monotonic() - t0
    message = str(err.value)
    assert "does not fit in the memory available" in message and "4096x4096, 1025 frames" in message, message
    assert re.search(r"needs [\d.]+ GB at its peak \(VAE (en|de)code\), [\d.]+ GB available", message), message
    assert "what would fit:" in message, message
    assert not pipe.cache.materialized, "something was built before the refusal"
    assert seconds < FAST_SECONDS, seconds


def test_what_would_fit_is_what_the_plan_accepts(tiny_pipe):
    pipe = _pipe(tiny_pipe, ram_gb=3.0)
    with pytest.raises(InputError) as err:
        pipe.require_fit(1024, 1024, 65, 24.0)
    message = str(err.value)
    frames = re.search(r"1024x1024 with at most (\d+) frames", message)
    size = re.search(r"(\d+)x(\d+) with 65 frames", message)
    assert frames and size, message
    f = int(frames.group(1))
    w, h = int(size.group(1)), int(size.group(2))
    assert f % 4 == 1 and w % 16 == 0 and h % 16 == 0 and w == h
    pipe.require_fit(1024, 1024, f, 24.0)  # the suggestions fit ...
    pipe.require_fit(w, h, 65, 24.0)
    for bigger in ((1024, 1024, f + 4), (w + 16, h + 16, 65)):  # ... and are the largest that do
        with pytest.raises(InputError):
            pipe.require_fit(*bigger, 24.0)


def test_decode_is_refused_when_its_working_set_cannot_fit(tiny_pipe):
    pipe = _pipe(tiny_pipe, ram_gb=3.0)
    z = tiny_pipe.configs.video_vae.z_dim
    latents = JointLatents(video=torch.zeros(1, z, 17, 128, 128), audio=torch.zeros(1, 8, 10), width=1024,
                           height=1024, num_frames=65, video_fps=24.0, sample_rate=16000)
    with pytest.raises(InputError, match=r"VAE decode needs [\d.]+ GB, 3.0 GB available"):
        pipe.decode_video(latents)
    assert "video_vae" not in pipe.cache.materialized


def test_cpu_plan_counts_the_vae_working_sets():
    arch = Architecture.released()
    small = PlanInputs(vram_bytes=1, ram_bytes=64 * GB, device="cpu", compute_bytes=4)
    big = PlanInputs(vram_bytes=1, ram_bytes=64 * GB, width=1280, height=720, frames=193, device="cpu", compute_bytes=4)
    clip = 3 * 193 * 1280 * 720 * 4
    assert host_vae_bytes(arch, big, "VAE encode") > clip
    assert host_vae_bytes(arch, big, "VAE decode") > 2 * clip
    plan_small, plan_big = plan_memory(small, arch), plan_memory(big, arch)
    assert plan_small.mode == plan_big.mode == "cpu"
    for phase in ("VAE encode", "VAE decode"):
        assert plan_big.ram_phases[phase] > plan_small.ram_phases[phase]
    huge = PlanInputs(vram_bytes=1, ram_bytes=64 * GB, width=4096, height=4096, frames=1025, device="cpu")
    plan = plan_memory(huge, arch)
    assert not plan.fits and plan.ram_phases["VAE decode"] > 2 * 3 * 1025 * 4096 * 4096 * 4
    assert "what would fit:" in what_would_fit(huge, arch)
    assert "fits: NO" in plan.format() and "VAE decode" in plan.format()


def test_gpu_plan_counts_the_decoded_frames_in_host_ram():
    inputs = PlanInputs(vram_bytes=80 * GB, ram_bytes=8 * GB, width=1280, height=720, frames=1025)
    plan = plan_memory(inputs)
    assert not plan.fits and any("decoded frames" in p for p in plan.problems), plan.problems
