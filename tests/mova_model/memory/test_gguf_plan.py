"""The memory planner with GGUF weights: bytes per weight per type, the dequantization scratch, `plan --weights
gguf:TYPE`, and the sizes measured from a loaded GGUF checkpoint (mixed types)."""

import dataclasses

import pytest

from gguf_helpers import write_gguf_pair
from mova_model.checkpoint.gguf_store import GGUFStore
from mova_model.memory.planner import dequant_scratch_bytes, plan_cli, plan_memory
from mova_model.memory.sizes import ALIGN, GB, GGUF_VECTOR_BYTES, Architecture, PlanInputs, execution_modules
from mova_model.memory.stored_sizes import stored_weights
from mova_model.network.gguf_dequant import CHUNK_WEIGHTS, SCRATCH_BYTES_PER_WEIGHT
from mova_model.sampling.pipeline import MovaPipeline

ARCH = Architecture.released()


def _inputs(weights: str, **kw) -> PlanInputs:
    base = dict(vram_bytes=12 * GB, ram_bytes=32 * GB, frames=97, mode="budget", weights=weights,
                stored="gguf" if weights.startswith("gguf:") else "bf16")
    base.update(kw)
    return PlanInputs(**base)


@pytest.mark.parametrize("qtype, bits", [("Q4_K", 4.5), ("Q5_K", 5.5), ("Q6_K", 6.5625), ("Q8_0", 8.5), ("Q2_K", 2.625)])
def test_block_bytes_follow_the_type(qtype, bits):
    video = next(m for m in execution_modules(ARCH, _inputs(f"gguf:{qtype}")) if m.kind == "video")
    matrix, vector, _ = ARCH.video.block_params()
    assert video.nbytes == int(-(-matrix * bits // 8)) + GGUF_VECTOR_BYTES * vector + ALIGN * 27
    assert video.params == matrix + vector


def test_smaller_types_move_less_and_need_the_dequant_scratch():
    plans = {w: plan_memory(_inputs(w), ARCH, log=False) for w in ("bf16", "fp8", "gguf:Q8_0", "gguf:Q5_K", "gguf:Q4_K")}
    moved = [plans[w].bytes_per_step for w in ("bf16", "gguf:Q8_0", "gguf:Q5_K", "gguf:Q4_K")]
    assert moved == sorted(moved, reverse=True) and moved[-1] < moved[0] / 3
    largest = ARCH.video.dim * ARCH.video.ffn_dim
    scratch = dequant_scratch_bytes(ARCH, _inputs("gguf:Q4_K"))
    assert scratch == 2 * largest + CHUNK_WEIGHTS * SCRATCH_BYTES_PER_WEIGHT
    assert plans["gguf:Q4_K"].vram_denoise["GGUF dequant"] == scratch
    assert "GGUF dequant" in plans["gguf:Q4_K"].format() and "weights gguf:Q4_K (stored gguf)" in plans["gguf:Q4_K"].format()
    assert plans["gguf:Q4_K"].step_s > plans["gguf:Q4_K"].compute_s_per_step  # dequantization costs device time


def test_q4_k_expert_resident_where_bf16_streams():
    """At 49 frames on a 16 GB card the Q4_K expert fits whole; in bf16 it streams most blocks."""
    q4 = plan_memory(_inputs("gguf:Q4_K", vram_bytes=16 * GB, frames=49), ARCH, log=False)
    bf16 = plan_memory(_inputs("bf16", vram_bytes=16 * GB, frames=49), ARCH, log=False)
    assert q4.fits and q4.mode == "all-resident"
    assert bf16.mode == "streamed" and bf16.counts()["video"][1] > 20


def test_plan_cli_weights_gguf(capsys):
    assert plan_cli(["--vram", "12", "--ram", "32", "--frames", "97", "--weights", "gguf:q4_k"]) == 0
    out = capsys.readouterr().out
    assert "weights gguf:Q4_K (stored gguf)" in out and "GGUF dequant" in out
    assert plan_cli(["--vram", "12", "--ram", "32", "--weights", "gguf:IQ2_XS"]) == 2
    assert "Q4_K" in capsys.readouterr().err


def test_measured_sizes_of_a_mixed_gguf_checkpoint(tmp_path):
    gguf_dir, twin = write_gguf_pair(tmp_path)
    found = stored_weights(gguf_dir)
    assert found.stored == "gguf" and found.weights.startswith("gguf:")
    store = GGUFStore(gguf_dir / "video_dit", "video_dit")
    blocks = [i for k, i in store.tensors.items() if k.startswith("blocks.")]
    measured = dict(found.bytes_per_param)
    second = GGUFStore(gguf_dir / "video_dit_2", "video_dit_2")
    blocks2 = [i for k, i in second.tensors.items() if k.startswith("blocks.")]
    expected = max(sum(i.nbytes for i in b) / sum(i.numel for i in b) for b in (blocks, blocks2))
    assert measured["video"] == pytest.approx(expected) and set(measured) == {"video", "audio", "a2v", "v2a"}
    assert "video_dit: GGUF" in found.describe() and "Q4_K" in found.describe()
    assert stored_weights(twin).stored == "bf16" and stored_weights(twin).describe() == ""
    pipe = MovaPipeline.from_pretrained(gguf_dir)
    plan = pipe.memory_plan(640, 352, 33, 24.0, vram_bytes=12 * GB)
    assert plan.inputs.bytes_per_param == found.bytes_per_param and plan.inputs.stem_bytes == found.stem_bytes
    arch = Architecture.from_configs(pipe.configs)
    video = next(m for m in plan.modules if m.kind == "video")
    assert video.nbytes == int(-(-video.params * measured["video"] // 1)) + ALIGN * 27
    assert dataclasses.replace(plan.inputs).gguf_type == found.weights[5:]
    assert arch.video.dim == 256
