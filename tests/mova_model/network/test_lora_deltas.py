"""Full-size LoRA deltas (`.diff`, `.diff_b`, a modulation table) under the conditions a GPU run has: fp8 weights with
fp8 matmul switched on, compiled blocks (dynamo must guard on the attached deltas), the block streamer, and
`torch.inference_mode` in a worker thread (how ComfyUI runs a node)."""

import threading

import torch

from mova_model.memory.fp8 import quantize_module_
from mova_model.memory.streaming import BlockStreamer, ThrottledCopyEngine
from mova_model.network import fp8_matmul
from mova_model.network.compiled_blocks import CompileTimer, compile_blocks, uncompile_blocks
from mova_model.network.dit_block import DiTBlock
from mova_model.network.lora import LoraPatch, LoraPatchSet, LoraWeights, clear
from mova_model.network.ops import Operations, init_random_
from mova_model.network.rope import video_rope

DIM, HEADS = 96, 4


def _block(seed=0):
    return init_random_(DiTBlock(DIM, HEADS, 2 * DIM, 1e-6, Operations()), torch.Generator().manual_seed(seed)).eval()


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 32, DIM, generator=g), torch.randn(1, 8, DIM, generator=g),
            torch.randn(1, 6, DIM, generator=g) * 0.1, video_rope(DIM // HEADS, (2, 4, 4)))


def _deltas(block, seed=2):
    """A patch set on one block: a norm weight and bias, a bias, a full Linear weight and the modulation table."""
    g = torch.Generator().manual_seed(seed)
    params = dict(block.named_parameters())
    names = ("norm3.weight", "norm3.bias", "self_attn.q.bias", "ffn.2.weight", "modulation", "self_attn.norm_k.weight")
    deltas = {name: (torch.randn(params[name].shape, generator=g) * 0.1, 1.0) for name in names}
    return LoraWeights(pairs={}, rank=1, alpha=1.0, deltas={"video_dit": deltas})


def _merged(block, weights, strength):
    """A copy of `block` with the deltas merged into its parameters (ComfyUI's `param += strength · diff`)."""
    merged = _block(0)
    merged.load_state_dict(block.state_dict())
    with torch.no_grad():
        for name, (delta, factor) in weights.deltas["video_dit"].items():
            dict(merged.named_parameters())[name].add_(strength * factor * delta)
    return merged


def test_deltas_equal_the_merged_block_and_vanish_when_cleared():
    block, args = _block(), _inputs()
    weights = _deltas(block)
    with torch.no_grad():
        base = block(*args)
        assert LoraPatchSet((LoraPatch(weights, 0.7),)).apply("video_dit", block) == 6
        patched = block(*args)
        want = _merged(block, weights, 0.7)(*args)
        clear(block)
        assert torch.equal(block(*args), base)
    torch.testing.assert_close(patched, want, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(patched, base, atol=1e-4)


def test_deltas_in_a_worker_thread_under_inference_mode():
    block, args = _block(), _inputs()
    weights = _deltas(block)
    LoraPatchSet((LoraPatch(weights, 0.7),)).apply("video_dit", block)
    with torch.no_grad():
        want = block(*args)
    result = {}

    def work():
        with torch.inference_mode():
            result["out"] = block(*args)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert torch.equal(result["out"], want)


def test_a_layer_with_a_weight_delta_takes_the_cast_path_under_fp8_matmul(monkeypatch):
    block = _block(3)
    quantize_module_(block)
    LoraPatchSet((LoraPatch(_deltas(block), 1.0),)).apply("video_dit", block)
    patched, plain = block.ffn[2], block.ffn[0]  # ffn.2 has a weight delta, ffn.0 none
    g = torch.Generator().manual_seed(4)
    x_patched, x_plain = torch.randn(4, 2 * DIM, generator=g), torch.randn(4, DIM, generator=g)
    with torch.no_grad():
        cast_patched, cast_plain = patched(x_patched), plain(x_plain)
        monkeypatch.setattr(fp8_matmul._STATE, "enabled", True)  # as on an fp8 GPU
        assert not torch.equal(plain(x_plain), cast_plain)  # a plain fp8 layer now runs _scaled_mm
        assert torch.equal(patched(x_patched), cast_patched)  # the patched one keeps dequantized weight + delta
        clear(block)
        assert not torch.equal(patched(x_patched), cast_patched)


def test_compiled_block_follows_changed_deltas():
    block, args = _block(4), _inputs(5)
    weights = _deltas(block)
    timer = CompileTimer()
    results = []
    with torch.no_grad():
        for strength in (0.5, 1.5):  # dynamo must guard on the attached deltas, not reuse the first graph
            LoraPatchSet((LoraPatch(weights, strength),)).apply("video_dit", block)
            eager = block(*args)
            compile_blocks([block], timer, backend="aot_eager")
            results.append((eager, block(*args)))
            uncompile_blocks([block])
    for eager, compiled in results:
        torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(results[1][1], results[0][1], atol=1e-4)
    assert timer.compiles >= 2


def test_deltas_under_the_block_streamer():
    blocks = [_block(6), _block(7)]
    args = _inputs(8)
    for block in blocks:
        LoraPatchSet((LoraPatch(_deltas(block, seed=9), 1.0),)).apply("video_dit", block)
    with torch.no_grad():
        eager = blocks[1](blocks[0](*args), *args[1:])
        with BlockStreamer(blocks, "cpu", prefetch_depth=1, copy_engine=ThrottledCopyEngine()).prepare() as streamer:
            streamed = streamer(blocks[1], streamer(blocks[0], *args), *args[1:])
    assert torch.equal(streamed, eager)


def test_a_community_patch_travels_to_worker_processes():
    """MOVA Multi-GPU sends the pipeline's LoRA set to spawned workers as plain data (`parallel.portable`)."""
    import pickle

    from mova_model.parallel.portable import from_portable, to_portable

    down, up, table = torch.randn(4, 96), torch.randn(192, 4), torch.randn(1, 6, 96)
    weights = LoraWeights(pairs={"video_dit": {"blocks.0.ffn.0": (down, up)}}, rank=4, alpha=4.0,
                          scales={"video_dit": {"blocks.0.ffn.0": 2.5}}, deltas={"video_dit": {"blocks.0.modulation": (table, 1.0)}},
                          format="kohya/musubi (prefix 'lora_unet_')", skipped=(("k", "why"),), metadata={"ss_x": "y"})
    patches = LoraPatchSet((LoraPatch(weights, 0.5, (("video", 2.0),)),))
    back = from_portable(pickle.loads(pickle.dumps(to_portable(patches))))
    got = back.patches[0]
    assert (got.strength, got.part_strengths) == (0.5, (("video", 2.0),))
    assert got.weights.layer_scale("video_dit", "blocks.0.ffn.0") == 2.5 and got.weights.format == weights.format
    assert got.weights.skipped == (("k", "why"),) and got.weights.metadata == {"ss_x": "y"}
    assert torch.equal(got.weights.deltas["video_dit"]["blocks.0.modulation"][0], table)
    assert torch.equal(got.weights.pairs["video_dit"]["blocks.0.ffn.0"][1], up)
