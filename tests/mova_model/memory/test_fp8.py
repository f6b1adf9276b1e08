"""fp8 storage: quantize/dequantize bounds, module conversion, pre-quantized folders, end-to-end error."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from mova_model.memory.fp8 import (FP8_MAX, SCALE_SUFFIX, dequantize_tensor, fp8_error, is_fp8_candidate,
                                   prepare_fp8_layers, quantize_module_, quantize_state_dict, quantize_tensor)
from mova_model.memory.streaming import MaterializationCounter
from mova_model.network.ops import FP8_DTYPE, Operations, cast_tensor, init_random_

PARITY = Path(os.environ.get("MOVA_PARITY_DIR", Path(__file__).resolve().parents[4] / "shared" / "parity"))
needs_parity = pytest.mark.skipif(not (PARITY / "checkpoint" / "model_index.json").is_file(),
                                  reason="parity fixtures missing")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("spread", [1e-3, 1.0, 300.0])
def test_round_trip_error_bound(dtype, spread):
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(64, 96, generator=gen) * spread).to(dtype)
    q, scale = quantize_tensor(w)
    assert q.dtype == FP8_DTYPE and scale.dtype == torch.float32 and scale.shape == ()
    assert torch.isclose(q.float().abs().max(), torch.tensor(FP8_MAX))
    back = dequantize_tensor(q, scale, torch.float32)
    w32 = w.float()
    # e4m3: 3 mantissa bits -> half-ULP relative error 2^-4 for normals; subnormal spacing 2^-9 (x scale)
    bound = torch.maximum(w32.abs() * 2 ** -4, torch.full_like(w32, 2 ** -10) * scale) * (1 + 1e-6) + 1e-12
    assert bool(((back - w32).abs() <= bound).all())
    assert fp8_error(w32, back)["rel_l2"] < 0.04


def test_zero_and_nonfinite():
    q, scale = quantize_tensor(torch.zeros(4, 4))
    assert scale.item() == 1.0 and not q.float().any()
    with pytest.raises(ValueError):
        quantize_tensor(torch.tensor([[1.0, float("inf")]]))


def test_dequantize_matches_ops_cast():
    w = torch.randn(8, 8)
    q, scale = quantize_tensor(w)
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(dequantize_tensor(q, scale, dtype), cast_tensor(q, dtype, torch.device("cpu"), scale))


def test_candidate_rule():
    bf = torch.bfloat16
    assert is_fp8_candidate("blocks.0.self_attn.q.weight", (8, 8), bf)
    assert is_fp8_candidate("audio_to_video_conditioners.3.inner.k.weight", (8, 4), bf)
    assert is_fp8_candidate("text_embedding.0.weight", (8, 4), bf)
    for key, shape in [("blocks.0.self_attn.q.bias", (8,)), ("blocks.0.modulation", (1, 6, 8)),
                       ("blocks.0.norm3.weight", (8,)), ("patch_embedding.weight", (8, 4, 1, 2, 2)),
                       ("time_embedding.0.weight", (8, 4)), ("time_projection.1.weight", (48, 8)),
                       ("head.head.weight", (4, 8)), ("shared.weight", (100, 8)),
                       ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", (32, 4))]:
        assert not is_fp8_candidate(key, shape, bf), key
    assert not is_fp8_candidate("blocks.0.self_attn.q.weight", (8, 8), FP8_DTYPE)


def test_state_dict_and_module_paths_agree():
    ops = Operations()
    model = init_random_(nn.Sequential(ops.Linear(16, 32), nn.GELU(), ops.Linear(32, 16)), torch.Generator().manual_seed(3))
    state = quantize_state_dict(model.state_dict())
    assert state["0.weight"].dtype == FP8_DTYPE and state["0.weight" + SCALE_SUFFIX].shape == ()
    assert state["0.bias"].dtype == torch.float32
    # load the quantized state into a fresh meta module (the pre-quantized path)
    fresh = nn.Sequential(ops.Linear(16, 32), nn.GELU(), ops.Linear(32, 16))
    assert prepare_fp8_layers(fresh, state.keys()) == 2
    fresh.load_state_dict(state, assign=True, strict=True)
    # quantize on load (the bf16-files path)
    counter = MaterializationCounter()
    assert quantize_module_(model, prefix="video_dit", counter=counter) == 2
    assert counter.count("video_dit", kind="convert") == 1 and counter.nbytes("video_dit") == 16 * 32 * 2
    x = torch.randn(3, 16)
    assert torch.equal(model(x), fresh(x))
    assert model[0].weight.dtype == FP8_DTYPE and fresh[0].weight.dtype == FP8_DTYPE


@needs_parity
def test_prequantized_folder_loads_and_checks(tmp_path):
    from mova_model.checkpoint.folder import MovaCheckpoint
    from mova_model.checkpoint.describe import describe
    from mova_model.memory.quantize import quantize_cli, stored_format

    dst = tmp_path / "fp8"
    assert quantize_cli([str(PARITY / "checkpoint"), str(dst)]) == 0
    assert stored_format(dst) == "fp8" and stored_format(PARITY / "checkpoint") == "bf16"
    assert quantize_cli([str(PARITY / "checkpoint"), str(dst)]) == 2  # refuses to overwrite
    _, problems = describe(dst, check=True)
    assert problems == []
    ckpt = MovaCheckpoint.open(dst).validate()
    video = ckpt.build("video_dit")
    q = video.blocks[0].self_attn.q
    assert q.weight.dtype == FP8_DTYPE and q.weight_scale.dtype == torch.float32
    assert video.time_embedding[0].weight.dtype != FP8_DTYPE
    reference = MovaCheckpoint.open(PARITY / "checkpoint").build("video_dit")
    ref_q = reference.blocks[0].self_attn.q.weight
    expect_q, expect_scale = quantize_tensor(ref_q)
    assert torch.equal(q.weight.view(torch.uint8), expect_q.view(torch.uint8))
    assert torch.equal(q.weight_scale, expect_scale)
    # text encoder and VAEs are untouched
    assert (dst / "text_encoder").is_dir() and (dst / "tokenizer").is_dir()


@needs_parity
def test_e2e_error_fp8_vs_bf16(tmp_path):
    """End-to-end parity case with bf16 weights and with fp8 weights (bf16 compute): fp8 adds an error of the
    same order as bf16's own, both against the official float32 outputs."""
    from safetensors.torch import load_file

    from mova_model.memory.quantize import quantize_checkpoint
    fp8_dir = tmp_path / "fp8"
    quantize_checkpoint(PARITY / "checkpoint", fp8_dir)
    official = load_file(str(PARITY / "cases" / "e2e_i2va.outputs.safetensors"))
    results = {name: run_e2e(folder, torch.bfloat16)
               for name, folder in (("bf16", PARITY / "checkpoint"), ("fp8", fp8_dir))}
    errors = {name: fp8_error(official["final_video_latents"], out[0])["rel_l2"] for name, out in results.items()}
    between = fp8_error(results["bf16"][0], results["fp8"][0])["rel_l2"]
    logging.getLogger(__name__).info(f"e2e rel-L2 vs official fp32: bf16 {errors['bf16']:.4f} fp8 {errors['fp8']:.4f}; fp8 vs bf16 {between:.4f}")
    assert errors["bf16"] < 0.05
    assert errors["fp8"] < 0.15
    assert between > 0  # fp8 really changed the weights


def run_e2e(folder: Path, dtype: torch.dtype):
    """The e2e_i2va case on `folder` at `dtype`: (final video latents, final audio latents), float32."""
    import json

    from safetensors.torch import load_file

    from mova_model.checkpoint.folder import MovaCheckpoint
    from mova_model.sampling.guidance import GuidanceConfig
    from mova_model.sampling.pipeline import MovaPipeline
    case = next(c for c in json.loads((PARITY / "index.json").read_text())["cases"] if c["name"] == "e2e_i2va")
    a = case["args"]
    inputs = load_file(str(PARITY / "cases" / "e2e_i2va.inputs.safetensors"))
    pipe = MovaPipeline(MovaCheckpoint.open(folder), device="cpu", dtype=dtype)
    cond = pipe.prepare_conditioning(a["prompt"], a["negative_prompt"], inputs["image_uint8"].numpy(),
                                     width=int(a["width"]), height=int(a["height"]), num_frames=int(a["num_frames"]),
                                     video_fps=float(a["video_fps"]))
    latents = pipe.sample(cond, seed=int(a["seed"]), steps=int(a["num_inference_steps"]),
                          guidance=GuidanceConfig(text_scale=float(a["cfg_scale"])))
    return latents.video.float(), latents.audio.float()
