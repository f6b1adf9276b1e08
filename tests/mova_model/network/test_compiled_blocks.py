"""Compiled blocks give the eager numbers, also after a LoRA is attached, re-weighted or removed (dynamo guards on
the adapter list and recompiles), with fp8 weights, under the block streamer, and through a LoRA pipeline.

torch.compile is slow on a small CPU, so one test uses Inductor (code generation) on one small block; the others
use the "aot_eager" backend, which traces and guards exactly like Inductor but runs the traced aten ops."""

import pytest
import torch

from mova_model.memory.fp8 import quantize_module_
from mova_model.memory.streaming import BlockStreamer, ThrottledCopyEngine
from mova_model.network import compiled_blocks
from mova_model.network.bridge import BridgeConditioner
from mova_model.network.compiled_blocks import CompileTimer, compile_blocks, uncompile_blocks
from mova_model.network.dit_block import DiTBlock
from mova_model.checkpoint.folder import build_meta_module
from mova_model.network.lora import LoraPatch, LoraWeights
from mova_model.network.ops import CastLinear, LoraAdapter, Operations, init_random_
from mova_model.network.rope import video_rope
from mova_model.sampling.pipeline import MovaPipeline
from mova_model.sampling.speed import SpeedOptions


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test counts its own compiles: Dynamo's caches (and its per-function recompile limit, which the
    LoRA-change tests approach) start empty."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()

# Inductor fuses and reorders float32 reductions (layer norms, softmax): not bit-identical to eager.
# Measured ~2e-6 on outputs of magnitude ~3; 1e-4 relative leaves room for other CPUs.
REL_TOLERANCE = 1e-4
DIM, HEADS = 96, 4  # head_dim 24: a valid 3-D video RoPE split


def _block(seed=0):
    return init_random_(DiTBlock(DIM, HEADS, 2 * DIM, 1e-6, Operations()), torch.Generator().manual_seed(seed)).eval()


def _inputs(seed=1, tokens=32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, tokens, DIM, generator=g), torch.randn(1, 8, DIM, generator=g),
            torch.randn(1, 6, DIM, generator=g) * 0.1, video_rope(DIM // HEADS, (2, 4, 4)))


def _close(a, b, tol=REL_TOLERANCE):
    return ((a - b).abs().max() / b.abs().max()).item() <= tol


def _adapter(layer, seed, scale):
    g = torch.Generator().manual_seed(seed)
    return LoraAdapter(torch.randn(4, layer.in_features, generator=g) * 0.2,
                       torch.randn(layer.out_features, 4, generator=g) * 0.2, scale)


@torch.no_grad()
def _lora_sequence(blocks, args, timer, backend):
    """(eager, compiled) outputs of blocks[0] for: no LoRA, a LoRA, the LoRA re-weighted, a second LoRA, none."""
    block = blocks[0]
    q, ffn = block.self_attn.q, block.ffn[0]
    states = [lambda: None,
              lambda: q.adapters.append(_adapter(q, 1, 0.5)),
              lambda: setattr(q.adapters[0], "scale", 2.0),
              lambda: ffn.adapters.append(_adapter(ffn, 2, 1.0)),
              lambda: (q.adapters.clear(), ffn.adapters.clear())]
    results = []
    for change in states:
        change()
        eager = block(*args)
        compile_blocks(blocks, timer, backend=backend)
        compiled = block(*args)
        uncompile_blocks(blocks)
        results.append((eager, compiled))
    return results


def test_inductor_block_with_lora_changes_matches_eager():
    blocks = [_block()]
    timer = CompileTimer()
    results = _lora_sequence(blocks, _inputs(), timer, backend="inductor")
    for i, (eager, compiled) in enumerate(results):
        assert _close(compiled, eager), f"state {i}"
    assert not _close(results[1][0], results[0][0])  # the LoRA really changes the output
    assert not _close(results[2][0], results[1][0])  # and so does its new strength
    assert timer.compiles >= 2 and timer.total_s > 0  # recompiled when adapters were added
    assert getattr(blocks[0], "_compiled_call_impl", None) is None


def test_fp8_blocks_and_a_second_instance_share_the_guarded_graph():
    blocks = [_block(0), _block(1)]
    for block in blocks:
        quantize_module_(block)
    args = _inputs(3)
    eager = [b(*args) for b in blocks]
    timer = CompileTimer()
    compile_blocks(blocks, timer, backend="aot_eager")
    with torch.no_grad():
        compiled = [b(*args) for b in blocks]
    uncompile_blocks(blocks)
    assert all(_close(c, e, 1e-6) for c, e in zip(compiled, eager))
    results = _lora_sequence(blocks, args, CompileTimer(), backend="aot_eager")
    assert all(_close(c, e, 1e-6) for e, c in results)


def test_compiled_blocks_under_the_block_streamer():
    blocks = [_block(4), _block(5)]
    args = _inputs(6)
    with torch.no_grad():
        eager = blocks[1](blocks[0](*args), *args[1:])
        compile_blocks(blocks, CompileTimer(), backend="aot_eager")
        with BlockStreamer(blocks, "cpu", prefetch_depth=1, copy_engine=ThrottledCopyEngine()).prepare() as streamer:
            x = streamer(blocks[0], *args)
            streamed = streamer(blocks[1], x, *args[1:])
    uncompile_blocks(blocks)
    assert _close(streamed, eager, 1e-6)


def test_bridge_conditioners_are_compiled_targets():
    conditioner = BridgeConditioner(DIM, 48, HEADS, Operations())
    assert list(compiled_blocks.compiled_targets(torch.nn.ModuleList([conditioner, _block()])))[0] is conditioner


def _tiny_lora(pipe, rank=4):
    """Random low-rank pairs for every Linear of the audio blocks and bridge conditioners of `pipe`'s checkpoint."""
    g = torch.Generator().manual_seed(7)
    pairs = {}
    for component in ("audio_dit", "dual_tower_bridge"):
        module = build_meta_module(component, pipe.checkpoint.config(component))
        pairs[component] = {name: (torch.randn(rank, layer.in_features, generator=g) / layer.in_features ** 0.5,
                                   torch.randn(layer.out_features, rank, generator=g) * 0.3)
                            for name, layer in module.named_modules()
                            if isinstance(layer, CastLinear) and ("blocks." in name or "conditioners" in name)}
    return LoraPatch(LoraWeights(pairs=pairs, rank=rank, alpha=float(rank)), strength=0.8)


def test_pipeline_with_compiled_blocks_and_lora(tiny_pipe, tiny_cond, monkeypatch):
    monkeypatch.setattr(compiled_blocks, "COMPILE_BACKEND", "aot_eager")
    lora = _tiny_lora(tiny_pipe)
    compiled = MovaPipeline(tiny_pipe.checkpoint, cache=tiny_pipe.cache, speed=SpeedOptions(compile_blocks=True))
    kw = dict(seed=4, steps=3)
    eager_lora = tiny_pipe.with_lora(lora).sample(tiny_cond, **kw)
    eager_base = tiny_pipe.sample(tiny_cond, **kw)
    compiled_lora_pipe = compiled.with_lora(lora)
    compiled_lora = compiled_lora_pipe.sample(tiny_cond, **kw)
    compiled_base = compiled.sample(tiny_cond, **kw)  # same cached modules, LoRA removed
    assert _close(compiled_lora.video, eager_lora.video, 1e-5) and _close(compiled_base.video, eager_base.video, 1e-5)
    assert _close(compiled_lora.audio, eager_lora.audio, 1e-5) and _close(compiled_base.audio, eager_base.audio, 1e-5)
    assert not _close(eager_lora.video, eager_base.video, 1e-3)
    # the cached modules are back to eager for pipelines without the option
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in tiny_pipe.cache.get("audio_dit").blocks)
    assert compiled_lora_pipe.speed.compile_blocks


def test_switching_fp8_matmul_recompiles_instead_of_reusing_the_cast_graph(monkeypatch):
    from mova_model.network import fp8_matmul

    block = _block(8)
    quantize_module_(block)
    args = _inputs(9)
    with torch.no_grad():
        eager = {}
        for on in (False, True):
            monkeypatch.setattr(fp8_matmul._STATE, "enabled", on)
            eager[on] = block(*args)
        timer = CompileTimer()
        compile_blocks([block], timer, backend="aot_eager")
        for on in (False, True):
            monkeypatch.setattr(fp8_matmul._STATE, "enabled", on)
            assert _close(block(*args), eager[on], 1e-6), on
    uncompile_blocks([block])
    assert not _close(eager[True], eager[False], 1e-3) and timer.compiles == 2
