"""Issue 16 item 4: pinned host memory of exactly the planned size, returned when the run ends.

torch's caching host allocator rounds every pinned block up to a power of two and keeps freed blocks, so a
streamed run left page-locked RAM behind and locked more than its plan said. The copy engines now pin
`PinnedArena`s (plain memory, `cudaHostRegister`, exact sizes). On the CPU the same host-side code runs with
`CheckedRegistrar`, which enforces what the CUDA calls demand (no overlapping or repeated registration,
unregistration by the base address) and records what is pinned.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from comfyui_conditions import mova_threads, run_as_comfyui
from mova_model.memory.copy_engines import ThrottledCopyEngine
from mova_model.memory.pinned import PAGE_BYTES, CheckedRegistrar, PinnedArena, PinnedHostCopies, arena_bytes

PARITY = Path(os.environ.get("MOVA_PARITY_DIR", Path(__file__).resolve().parents[4] / "shared" / "parity"))


def test_an_arena_is_the_size_asked_for_page_aligned_and_returned():
    registrar = CheckedRegistrar()
    arena = PinnedArena(703_000_001 // 1000, registrar)  # 703,000 bytes: torch's pinned allocator takes 1 MiB
    assert arena.nbytes == -(-703_000 // PAGE_BYTES) * PAGE_BYTES < 703_000 + PAGE_BYTES
    assert arena.buffer.data_ptr() % PAGE_BYTES == 0
    assert registrar.registered == {arena.buffer.data_ptr(): arena.nbytes}
    first, second = arena.take(1000), arena.take(3000)
    assert second.data_ptr() - first.data_ptr() == 1024  # 256-byte aligned pieces
    with pytest.raises(RuntimeError, match="left"):
        arena.take(arena.nbytes)
    arena.close()
    arena.close()  # idempotent
    assert registrar.registered == {} and [c[0] for c in registrar.calls] == ["register", "unregister"]


def test_the_checked_registrar_refuses_what_cuda_refuses():
    registrar = CheckedRegistrar()
    registrar.register(4096, 8192)
    with pytest.raises(RuntimeError, match="AlreadyRegistered"):
        registrar.register(8192, 4096)  # overlaps
    with pytest.raises(RuntimeError, match="NotRegistered"):
        registrar.unregister(8192)  # not a base address
    registrar.unregister(4096)
    with pytest.raises(RuntimeError, match="NotRegistered"):
        registrar.unregister(4096)  # twice


def _blocks(n: int = 5):
    from mova_model.network.ops import Operations, init_random_

    ops = Operations()
    stack = torch.nn.ModuleList(torch.nn.Sequential(ops.Linear(64, 96), ops.Linear(96, 64)) for _ in range(n))
    return init_random_(stack, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("pin", ["all", "ring"])
def test_host_copies_pin_exactly_the_layouts_and_give_everything_back(pin):
    from mova_model.memory.layout import BlockLayout

    layouts = [BlockLayout(block, f"b{i}") for i, block in enumerate(_blocks())]
    registrar = CheckedRegistrar()
    host = PinnedHostCopies(pin, staging_count=2, registrar=registrar)
    slot = max(layout.nbytes for layout in layouts)
    pinned = host.reserve(slot) + host.pin_all(layouts)
    expected = arena_bytes(l.nbytes for l in layouts) if pin == "all" else 2 * slot
    assert expected <= pinned == host.pinned_bytes == registrar.pinned_bytes < expected + PAGE_BYTES
    assert len(registrar.registered) == 1  # one arena
    if pin == "all":
        for layout in layouts:
            piece = host.pinned(layout)
            for tensor, offset in layout.sources:
                data = tensor.detach().reshape(-1).view(torch.uint8)
                assert torch.equal(piece[offset:offset + data.numel()], data)
    assert host.pin_all(layouts) == 0  # nothing pinned twice
    host.close()
    assert registrar.registered == {} and host.pinned_bytes == 0


@pytest.mark.skipif(not (PARITY / "checkpoint" / "model_index.json").is_file(), reason="parity fixtures missing")
@pytest.mark.parametrize("pin", ["all", "ring"])
def test_streamed_sampling_pins_what_the_plan_counts_and_returns_it(pin, monkeypatch):
    """A streamed run on the parity checkpoint, as ComfyUI runs it, through the CPU copy engine with the CUDA
    engine's host side: latents equal to resident, the pinned bytes never above the plan's `pinned_bytes` (plus
    one page of rounding), nothing from torch's caching pinned allocator, nothing left registered afterwards."""
    from mova_model.checkpoint.folder import MovaCheckpoint
    from mova_model.memory.planner import GB, Architecture, PlanInputs, plan_memory
    from mova_model.memory.streaming import StreamingModels
    from mova_model.sampling.guidance import GuidanceConfig
    from mova_model.sampling.sampler import SamplingInputs, sample
    from mova_model.sampling.scheduler import FlowMatchPairScheduler
    from safetensors.torch import load_file

    real_empty = torch.empty

    def no_torch_pinning(*args, **kwargs):
        assert not kwargs.get("pin_memory"), "pinned memory must come from a PinnedArena, not torch's allocator"
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", no_torch_pinning)
    ckpt = MovaCheckpoint.open(PARITY / "checkpoint")
    case = next(c for c in json.loads((PARITY / "index.json").read_text())["cases"] if c["name"] == "e2e_i2va")
    a, outputs = case["args"], load_file(str(PARITY / "cases" / "e2e_i2va.outputs.safetensors"))
    plan = plan_memory(PlanInputs(vram_bytes=2 * GB, ram_bytes=8 * GB, width=int(a["width"]), height=int(a["height"]),
                                  frames=int(a["num_frames"]), fps=float(a["video_fps"])), Architecture.from_configs(ckpt.configs))
    modules = [replace(m, resident=i % 3 == 0) for i, m in enumerate(plan.modules)]  # the KB model: force streaming
    plan = replace(plan, mode="streamed", prefetch_depth=1, pin=pin, modules=modules)
    registrar = CheckedRegistrar()
    build = lambda name: ckpt.build(name, dtype=torch.bfloat16)  # noqa: E731  (the planner's sizes are bf16)
    models = StreamingModels(build, plan, "cpu", engine_factory=lambda: ThrottledCopyEngine(pin=pin, registrar=registrar))
    seen = []

    def on_step(info):
        seen.append(registrar.pinned_bytes)
        engines = [s.engine for s in models.streamers.values()]
        assert len(engines) == 1 and engines[0].pinned_bytes == registrar.pinned_bytes  # one expert's at a time

    inputs = SamplingInputs(prompt_embeds=outputs["prompt_embeds"], negative_prompt_embeds=outputs["negative_prompt_embeds"],
                            condition=outputs["condition"], video_noise=outputs["initial_video_noise"],
                            audio_noise=outputs["initial_audio_noise"], video_fps=float(a["video_fps"]))

    def run(models, callback=None):
        try:
            return sample(models, FlowMatchPairScheduler(ckpt.configs.scheduler), inputs, int(a["num_inference_steps"]),
                          GuidanceConfig(text_scale=float(a["cfg_scale"])), ckpt.configs.boundary_timestep,
                          callback=callback)
        finally:
            models.finish()

    video, audio = run_as_comfyui(run, models, on_step)
    resident_plan = replace(plan, modules=[replace(m, resident=True) for m in plan.modules])
    reference = run(StreamingModels(build, resident_plan, "cpu"))
    assert torch.equal(video, reference[0]) and torch.equal(audio, reference[1])
    assert seen and min(seen) > 0
    assert max(seen) <= plan.pinned_bytes + PAGE_BYTES, (max(seen), plan.pinned_bytes)
    assert registrar.registered == {} and not mova_threads()  # every arena given back, every worker ended
