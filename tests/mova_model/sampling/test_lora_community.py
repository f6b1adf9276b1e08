"""Community Wan LoRAs on the tiny checkpoint: each naming gives the latents of its deltas merged into the expert
weights by ComfyUI's formula; routing to the high / low / both experts; strength 0 is the base exactly; `.diff` and
`.diff_b` alone; a Wan 2.2 high/low pair as two patches."""

import pytest
import torch

from mova_model.network.lora import LoraPatch
from mova_model.sampling.guidance import GuidanceConfig
from mova_model.sampling.pipeline import MovaPipeline
from wan_lora_files import (FORMATS, expert_state, merge_state, merged_checkpoint, random_wan_lora, shapes_of, write,
                            WanLora)

ONE_PASS = GuidanceConfig(text_scale=1.0, bridge_scale=1.0)
EXPERTS = {"high": ("video_dit",), "low": ("video_dit_2",), "both": ("video_dit", "video_dit_2")}
TOL = dict(atol=1e-5, rtol=1e-5)
"""Lazy low-rank terms vs merged weights: the same sums in another order (fp32)."""
KINDS = {"comfy_lora_AB": "ComfyUI native", "comfy_down_up": "ComfyUI native", "comfy_unprefixed": "ComfyUI native",
         "kohya": "kohya/musubi", "wan_fun": "kohya Wan-Fun", "musubi_baked": "ComfyUI native",
         "diffusers": "diffusers/peft", "peft": "diffusers/peft"}


def _sample(pipe, cond):
    return pipe.sample(cond, seed=5, steps=2, guidance=ONE_PASS)


@pytest.fixture(scope="module")
def wan_lora(tiny_checkpoint_dir):
    return random_wan_lora(shapes_of(expert_state(tiny_checkpoint_dir, "video_dit")), seed=3)


@pytest.fixture(scope="module")
def base_latents(tiny_pipe, tiny_cond):
    return _sample(tiny_pipe, tiny_cond)


@pytest.fixture(scope="module")
def merged(tiny_checkpoint_dir, tiny_cond, tmp_path_factory):
    """merged({component: WanLora}, strength) -> latents sampled from a copy of the checkpoint with those merged."""

    def run(loras, strength=1.0):
        merges = {c: merge_state(expert_state(tiny_checkpoint_dir, c), lora, strength) for c, lora in loras.items()}
        folder = merged_checkpoint(tiny_checkpoint_dir, tmp_path_factory.mktemp("merged") / "MOVA-tiny", merges)
        return _sample(MovaPipeline.from_pretrained(folder, device="cpu", dtype=torch.float32), tiny_cond)

    return run


def _same(a, b):
    torch.testing.assert_close(a.video, b.video, **TOL)
    torch.testing.assert_close(a.audio, b.audio, **TOL)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_naming_gives_the_merged_latents(fmt, tiny_pipe, tiny_cond, wan_lora, merged, base_latents, tmp_path):
    carried = write(wan_lora, tmp_path / f"{fmt}.safetensors", fmt)
    weights = tiny_pipe.load_lora(tmp_path / f"{fmt}.safetensors")
    assert weights.format.startswith(KINDS[fmt]), weights.format
    assert weights.skipped == () and weights.components() == ("video_dit", "video_dit_2")
    assert weights.metadata["note"] == fmt  # the file's metadata travels with it
    got = _sample(tiny_pipe.with_lora(LoraPatch(weights, 0.8)), tiny_cond)
    want = merged({c: carried for c in EXPERTS["both"]}, strength=0.8)
    _same(got, want)
    assert not torch.allclose(got.video, base_latents.video, atol=1e-3)


def test_routing_high_low_both(tiny_pipe, tiny_cond, wan_lora, merged, base_latents, tmp_path):
    carried = write(wan_lora, tmp_path / "k.safetensors", "kohya")
    results = {}
    for expert, components in EXPERTS.items():
        weights = tiny_pipe.load_lora(tmp_path / "k.safetensors", expert=expert)
        assert weights.components() == components
        results[expert] = _sample(tiny_pipe.with_lora(LoraPatch(weights)), tiny_cond)
        _same(results[expert], merged({c: carried for c in components}))
    # the two-step run uses both experts, so each routing changes the clip in its own way
    for a, b in (("high", "low"), ("high", "both"), ("low", "both")):
        assert not torch.allclose(results[a].video, results[b].video, atol=1e-3), (a, b)
    assert not torch.allclose(results["high"].video, base_latents.video, atol=1e-3)
    assert not torch.allclose(results["low"].video, base_latents.video, atol=1e-3)


def test_a_wan22_pair_is_two_patches(tiny_pipe, tiny_checkpoint_dir, tiny_cond, merged, tmp_path):
    shapes = shapes_of(expert_state(tiny_checkpoint_dir, "video_dit"))
    high, low = random_wan_lora(shapes, seed=11), random_wan_lora(shapes, seed=12)
    high_carried = write(high, tmp_path / "high_noise.safetensors", "comfy_down_up")
    low_carried = write(low, tmp_path / "low_noise.safetensors", "comfy_down_up")
    pipe = tiny_pipe.with_lora(LoraPatch(tiny_pipe.load_lora(tmp_path / "high_noise.safetensors", expert="high")))
    pipe = pipe.with_lora(LoraPatch(tiny_pipe.load_lora(tmp_path / "low_noise.safetensors", expert="low")))
    _same(_sample(pipe, tiny_cond), merged({"video_dit": high_carried, "video_dit_2": low_carried}))


def test_strength_zero_is_the_base_exactly(tiny_pipe, tiny_cond, wan_lora, base_latents, tmp_path):
    write(wan_lora, tmp_path / "c.safetensors", "comfy_lora_AB")
    weights = tiny_pipe.load_lora(tmp_path / "c.safetensors")
    assert weights.deltas  # pairs and full deltas: both must vanish at 0
    zero = _sample(tiny_pipe.with_lora(LoraPatch(weights, 0.0)), tiny_cond)
    assert torch.equal(zero.video, base_latents.video) and torch.equal(zero.audio, base_latents.audio)
    after = _sample(tiny_pipe, tiny_cond)  # and nothing stayed attached
    assert torch.equal(after.video, base_latents.video)


def test_diff_and_diff_b_alone(tiny_pipe, tiny_cond, wan_lora, merged, base_latents, tmp_path):
    only_deltas = WanLora({}, dict(wan_lora.deltas))
    carried = write(only_deltas, tmp_path / "d.safetensors", "comfy_lora_AB")
    assert set(carried.deltas) == set(wan_lora.deltas)  # norms, biases, modulation tables, a 2-D weight
    weights = tiny_pipe.load_lora(tmp_path / "d.safetensors", expert="high")
    assert not weights.pairs and len(weights.deltas["video_dit"]) == len(wan_lora.deltas)
    got = _sample(tiny_pipe.with_lora(LoraPatch(weights, 1.5)), tiny_cond)
    _same(got, merged({"video_dit": carried}, strength=1.5))
    assert not torch.allclose(got.video, base_latents.video, atol=1e-4)
