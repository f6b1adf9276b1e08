"""Block streaming: streamed == resident bit for bit, prefetch logic, counting, release.

Equality tests run both as plain calls and as ComfyUI calls nodes (a worker thread inside
`torch.inference_mode()`, `comfyui_conditions`): the copies run on the engine's own thread, where the caller's
inference mode does not apply.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from comfyui_conditions import CONDITIONS, mova_threads, run_in

from mova_model.memory.streaming import (BlockLayout, BlockStreamer, MaterializationCounter, ThrottledCopyEngine,
                                         module_tags, release_on_error)
from mova_model.network.ops import Operations, init_random_

PARITY = Path(os.environ.get("MOVA_PARITY_DIR", Path(__file__).resolve().parents[4] / "shared" / "parity"))


class TinyBlock(nn.Module):
    def __init__(self, ops: Operations, dim: int = 16) -> None:
        super().__init__()
        self.lin = ops.Linear(dim, dim)
        self.norm = ops.RMSNorm(dim)
        self.table = ops.Parameter(1, 3, dim)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return x + scale * torch.tanh(self.lin(self.norm(x))) * self.table[:, 0]


def _stack(n: int = 6, seed: int = 0) -> nn.ModuleList:
    ops = Operations()
    blocks = nn.ModuleList(TinyBlock(ops) for _ in range(n))
    return init_random_(blocks, torch.Generator().manual_seed(seed))


def _run(blocks, executor, x, passes: int = 2):
    for _ in range(passes):
        for block in blocks:
            x = executor(block, x, scale=0.5)
    return x


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("depth", [0, 1, 2, 5, 9])
def test_stack_streamed_identical_and_restored(depth, condition):
    blocks = _stack()
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    reference = _run(blocks, lambda m, *a, **k: m(*a, **k), x)
    host_ptrs = [p.data_ptr() for p in blocks.parameters()]
    counter = MaterializationCounter()
    streamer = BlockStreamer(list(blocks), "cpu", prefetch_depth=depth, resident={blocks[1]},
                             copy_engine=ThrottledCopyEngine(), counter=counter, tags=module_tags(stack=blocks))

    def streamed():
        with streamer:
            return _run(blocks, streamer, x)

    out = run_in(condition, streamed)
    assert torch.equal(out, reference)
    assert not mova_threads()  # the copy worker ended with the streamer
    # host tensors are back in place after every call and after release
    assert [p.data_ptr() for p in blocks.parameters()] == host_ptrs
    assert counter.count("stack.1") == 1  # resident: copied once
    # every streamed block copied at least once per pass; cyclic prefetch may copy the first blocks of a
    # third pass that never comes, but never more than `depth` extra copies
    streamed = counter.count("stack") - 1
    assert 2 * 5 <= streamed <= 2 * 5 + depth


def test_slot_count_bounds_device_memory():
    blocks = _stack(n=8)
    streamer = BlockStreamer(list(blocks), "cpu", prefetch_depth=2, copy_engine=ThrottledCopyEngine())
    streamer.prepare()
    assert len(streamer._slots) == 3
    assert streamer.stats.slot_bytes == 3 * BlockLayout(blocks[0], "b").nbytes
    streamer.release()
    assert streamer._slots == []


def test_out_of_order_calls_work():
    blocks = _stack(n=6)
    x = torch.randn(1, 3, 16)
    order = list(blocks)
    streamer = BlockStreamer(order, "cpu", prefetch_depth=2, copy_engine=ThrottledCopyEngine())
    with streamer:
        # skip blocks 1 and 2 (like a bridge switched off) and run 4 before 3
        seq = [blocks[0], blocks[4], blocks[3], blocks[5], blocks[0]]
        out = x
        expect = x
        for b in seq:
            out = streamer(b, out)
            expect = b(expect)
    assert torch.equal(out, expect)


def test_bound_parameters_live_in_slot_memory():
    blocks = _stack(n=3)
    seen = []

    class Probe(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            seen.append(self.inner.lin.weight.data_ptr())
            return self.inner(x)

    probes = [Probe(b) for b in blocks]
    host = [b.lin.weight.data_ptr() for b in blocks]
    streamer = BlockStreamer(probes, "cpu", prefetch_depth=1, copy_engine=ThrottledCopyEngine())
    with streamer:
        x = torch.zeros(1, 2, 16)
        for p in probes:
            x = streamer(p, x)
        slot_ptrs = {s.data_ptr() for s in streamer._slots}
        slot_ends = {s.data_ptr() + s.numel() for s in streamer._slots}
    assert not set(seen) & set(host)
    assert all(any(lo <= ptr < hi for lo, hi in zip(sorted(slot_ptrs), sorted(slot_ends))) for ptr in seen)


def test_release_on_error_frees_memory():
    blocks = _stack(n=4)
    streamer = BlockStreamer(list(blocks), "cpu", prefetch_depth=2, resident={blocks[0]},
                             copy_engine=ThrottledCopyEngine())
    with pytest.raises(KeyboardInterrupt):
        with release_on_error(streamer):
            streamer(blocks[0], torch.zeros(1, 1, 16))
            streamer(blocks[1], torch.zeros(1, 1, 16))
            raise KeyboardInterrupt
    assert streamer._slots == [] and not streamer._resident_buffers and not streamer._inflight
    assert all(not layout.bound for layout in streamer._layouts.values())


def test_throttled_engine_copies_every_byte():
    blocks = _stack(n=2)
    layout = BlockLayout(blocks[0], "b")
    engine = ThrottledCopyEngine(bandwidth=1e9, chunk_bytes=256)
    buffer = torch.zeros(layout.nbytes, dtype=torch.uint8)
    engine.wait(engine.submit(layout, buffer, 0))
    engine.close()
    assert engine.bytes_copied == sum(p.numel() * p.element_size() for p in blocks[0].parameters())
    before = {k: v.clone() for k, v in blocks[0].state_dict().items()}
    layout.bind(buffer)
    after = blocks[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    layout.unbind()


@pytest.mark.skipif(not (PARITY / "checkpoint" / "model_index.json").is_file(), reason="parity fixtures missing")
@pytest.mark.parametrize("condition", CONDITIONS)
def test_parity_denoiser_streamed_equals_resident(condition):
    from mova_model.checkpoint.folder import MovaCheckpoint
    from mova_model.network.denoiser import BridgeScales, execution_order, joint_forward

    ckpt = MovaCheckpoint.open(PARITY / "checkpoint")
    video, audio, bridge = (ckpt.build(n) for n in ("video_dit", "audio_dit", "dual_tower_bridge"))
    inputs = load_file(str(PARITY / "cases" / "denoiser_high_noise.inputs.safetensors"))
    args = (torch.cat([inputs["latents"], inputs["condition"]], 1), inputs["audio_latents"], inputs["prompt_embeds"],
            inputs["timestep"], inputs["audio_timestep"], 8.0)
    reference = joint_forward(video, audio, bridge, *args)
    order = execution_order(video, audio, bridge, BridgeScales())
    counter = MaterializationCounter()
    tags = module_tags(video_dit=video, audio_dit=audio, dual_tower_bridge=bridge)
    streamer = BlockStreamer(order, "cpu", prefetch_depth=2, resident={video.blocks[0], audio.blocks[1]},
                             copy_engine=ThrottledCopyEngine(), counter=counter, tags=tags)

    def streamed():
        with streamer:
            return (joint_forward(video, audio, bridge, *args, executor=streamer),
                    joint_forward(video, audio, bridge, *args, executor=streamer))

    first, second = run_in(condition, streamed)
    for got in (first, second):
        assert torch.equal(got[0], reference[0]) and torch.equal(got[1], reference[1])
    assert counter.count("video_dit.blocks.0") == 1
    assert counter.count("dual_tower_bridge.audio_to_video_conditioners") >= 2 * len(bridge.audio_to_video_conditioners)


@pytest.mark.parametrize("condition", CONDITIONS)
def test_stack_streamer_with_hooks(condition):
    from mova_model.memory.streaming import outside_blocks, stack_streamer

    ops = Operations()

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = ops.Linear(16, 16)
            self.inner = nn.Module()
            self.inner.layers = nn.ModuleList(TinyBlock(ops) for _ in range(5))
            self.inner.final = ops.RMSNorm(16)

        def forward(self, x):
            x = self.embed(x)
            for layer in self.inner.layers:
                x = layer(x)
            return self.inner.final(x)

    model = init_random_(Model(), torch.Generator().manual_seed(4))
    x = torch.randn(2, 3, 16)
    reference = model(x)
    assert outside_blocks(model, model.inner.layers) == [model.embed, model.inner.final]
    counter = MaterializationCounter()

    def streamed():  # the text encoder's way (`pipeline.encode_prompts`)
        with torch.no_grad(), stack_streamer(model, model.inner.layers, "cpu", 1, ThrottledCopyEngine(),
                                             counter) as streamer:
            streamer.attach()
            return model(x)

    out = run_in(condition, streamed)
    assert torch.equal(out, reference)
    assert counter.count("text_encoder.inner.layers") >= 5 and counter.count("text_encoder.embed") == 1
    assert not model.inner.layers[0]._forward_pre_hooks  # detached on release
