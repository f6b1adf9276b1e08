"""LoRA files that must be refused (with what and where), allow_partial, the official format's routing, and the
conversions: official <-> ComfyUI native per expert, community -> comfy / official (round trips equal)."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mova_model.network.lora import LoraError, LoraWeights, load_lora, save_lora_safetensors
from mova_model.network.lora_export import lora_convert_cli
from wan_lora_files import expert_state, random_wan_lora, shapes_of, write


@pytest.fixture(scope="module")
def shapes(tiny_checkpoint_dir):
    return shapes_of(expert_state(tiny_checkpoint_dir, "video_dit"))


@pytest.fixture
def load(tiny_pipe):
    return tiny_pipe.load_lora


def _file(tmp_path, tensors, name="x.safetensors"):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / name))
    return tmp_path / name


def _pair(prefix, inn, out, rank=4, down=".lora_down.weight", up=".lora_up.weight"):
    return {prefix + down: torch.randn(rank, *inn) if isinstance(inn, tuple) else torch.randn(rank, inn),
            prefix + up: torch.randn(out, rank)}


# -- refusals -------------------------------------------------------------------------------------------------------
def test_an_empty_file_is_refused(tmp_path, load):
    with pytest.raises(LoraError, match="holds no tensors"):
        load(_file(tmp_path, {}))


def test_unmatched_keys_are_refused_naming_them_and_the_format(tmp_path, load):
    tensors = {**_pair("diffusion_model.blocks.0.self_attn.q", 48, 48),
               **_pair("diffusion_model.blocks.0.cross_attn.k_img", 48, 48),
               **_pair("diffusion_model.blocks.9.ffn.0", 48, 96), "diffusion_model.blocks.0.diff_m": torch.zeros(6, 48)}
    path = _file(tmp_path, tensors)
    with pytest.raises(LoraError) as info:
        load(path)
    message = str(info.value)
    assert "ComfyUI native (prefix 'diffusion_model.')" in message and "5 of 7 tensors do not match" in message
    for words in ("diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight", "Wan 2.1 image-to-video",
                  "block 9: video_dit has blocks 0-2", "diff_m", "allow_partial"):
        assert words in message, (words, message)
    weights = load(path, allow_partial=True)
    assert list(weights.pairs["video_dit"]) == ["blocks.0.self_attn.q"] and len(weights.skipped) == 5
    assert {key for key, _ in weights.skipped} == set(tensors) - {"diffusion_model.blocks.0.self_attn.q.lora_down.weight",
                                                                  "diffusion_model.blocks.0.self_attn.q.lora_up.weight"}
    only_bad = _file(tmp_path, _pair("diffusion_model.blocks.0.cross_attn.k_img", 48, 48), "bad.safetensors")
    with pytest.raises(LoraError, match="none of its 2 tensors match"):
        load(only_bad, allow_partial=True)


def test_wrong_shapes_say_which_model_the_lora_is_for(tmp_path, load):
    t2v = _file(tmp_path, _pair("lora_unet_patch_embedding", (16, 1, 2, 2), 48), "t2v.safetensors")
    t2v_tensors = load_file(str(t2v))
    t2v_tensors["lora_unet_patch_embedding.lora_up.weight"] = torch.randn(48, 4, 1, 1, 1)
    save_file(t2v_tensors, str(t2v))
    with pytest.raises(LoraError, match=r"patch embedding takes 16 input channels, MOVA's experts take 12 \(a Wan "
                                        r"text-to-video LoRA"):
        load(t2v)
    small = _file(tmp_path, _pair("transformer.blocks.0.attn1.to_q", 1536, 1536, down=".lora_A.weight",
                                  up=".lora_B.weight"), "small.safetensors")
    with pytest.raises(LoraError, match=r"video_dit\.blocks\.0\.self_attn\.q is a Linear 48->48, the LoRA pair is "
                                        r"1536->1536 \(made for Wan 2.1 1.3B, width 1536; this expert is 48 wide\)"):
        load(small)
    norm = _file(tmp_path, {"diffusion_model.blocks.0.norm3.diff": torch.zeros(64)}, "norm.safetensors")
    with pytest.raises(LoraError, match=r"video_dit\.blocks\.0\.norm3\.weight is \[48\], the \.diff is \[64\]"):
        load(norm)


@pytest.mark.parametrize("tensors, words", [
    ({**_pair("lora_unet_blocks_0_self_attn_q", 48, 48), **_pair("diffusion_model.blocks.0.self_attn.k", 48, 48)},
     ["mixed LoRA formats", "kohya/musubi ('lora_unet_'", "ComfyUI native ('diffusion_model.'"]),
    ({**_pair("transformer.blocks.0.attn1.to_q", 48, 48), **_pair("transformer.blocks.0.self_attn.k", 48, 48)},
     ["mixed LoRA formats", "Wan layer names", "diffusers layer names"]),
    ({**_pair("video_dit.blocks.0.self_attn.q", 48, 48, down=".lora_A.weight", up=".lora_B.weight"),
      **_pair("diffusion_model.blocks.0.self_attn.k", 48, 48)}, ["mixed LoRA formats", "MOVA component keys"]),
], ids=["kohya+comfy", "wan+diffusers-names", "official+comfy"])
def test_mixed_formats_are_refused(tmp_path, load, tensors, words):
    with pytest.raises(LoraError) as info:
        load(_file(tmp_path, tensors), allow_partial=True)
    for word in words:
        assert word in str(info.value), str(info.value)


@pytest.mark.parametrize("suffixes, name", [
    ((".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b"), "LoHa"),
    ((".lokr_w1", ".lokr_w2"), "LoKr"),
    ((".lora_down.weight", ".lora_up.weight", ".dora_scale"), "DoRA"),
])
def test_lycoris_and_other_adapters_are_refused_by_name(tmp_path, load, suffixes, name):
    tensors = {f"lora_unet_blocks_0_self_attn_q{s}": torch.zeros(4, 4) for s in suffixes}
    with pytest.raises(LoraError, match=rf"{name}.*not supported.*plain LoRA"):
        load(_file(tmp_path, tensors), allow_partial=True)


def test_incomplete_or_conflicting_entries_are_named(tmp_path, load):
    tensors = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(4, 48),
               "diffusion_model.blocks.0.self_attn.k.alpha": torch.tensor(4.0),
               **_pair("diffusion_model.blocks.0.self_attn.v", 48, 48),
               "diffusion_model.blocks.0.self_attn.v.diff": torch.zeros(48, 48)}
    with pytest.raises(LoraError) as info:
        load(_file(tmp_path, tensors))
    message = str(info.value)
    assert "blocks.0.self_attn.q has no lora_up/lora_B tensor" in message
    assert "blocks.0.self_attn.k has a .alpha but no LoRA pair" in message
    assert "both a LoRA pair and a .diff" in message


def test_a_wan_lora_needs_a_model_and_expert_is_checked(tmp_path, tiny_pipe):
    path = _file(tmp_path, _pair("lora_unet_blocks_0_self_attn_q", 48, 48))
    with pytest.raises(LoraError, match="without MOVA component names.*MOVA LoRA Loader"):
        load_lora(path)
    with pytest.raises(LoraError, match="expert must be one of both, high, low"):
        tiny_pipe.load_lora(path, expert="mid")


# -- the official format: routing and strictness ----------------------------------------------------------------------
def _official(tiny_pipe, components=("video_dit", "video_dit_2", "audio_dit"), rank=2, seed=0):
    from mova_model.network.ops import CastLinear

    g = torch.Generator().manual_seed(seed)
    pairs = {}
    for component in components:
        module = tiny_pipe.lora_module(component)
        pairs[component] = {name: (torch.randn(rank, layer.in_features, generator=g),
                                   torch.randn(layer.out_features, rank, generator=g))
                            for name, layer in module.named_modules() if isinstance(layer, CastLinear) and "blocks.0." in name}
    return LoraWeights(pairs=pairs, rank=rank, alpha=3.0, source="official-test")


def test_the_official_format_keeps_its_parts_and_expert_filters_the_video_ones(tmp_path, tiny_pipe):
    path = save_lora_safetensors(_official(tiny_pipe), tmp_path / "mova.safetensors", {"note": "kept"})
    both = tiny_pipe.load_lora(path)
    assert set(both.components()) == {"video_dit", "video_dit_2", "audio_dit"} and both.format == "MOVA official"
    assert both.metadata["note"] == "kept"
    assert set(tiny_pipe.load_lora(path, expert="high").components()) == {"video_dit", "audio_dit"}
    assert set(tiny_pipe.load_lora(path, expert="low").components()) == {"video_dit_2", "audio_dit"}
    high_only = save_lora_safetensors(_official(tiny_pipe, ("video_dit",)), tmp_path / "high.safetensors")
    with pytest.raises(LoraError, match="video parts for video_dit only; expert='low' keeps none"):
        tiny_pipe.load_lora(high_only, expert="low")
    tensors = load_file(str(path))
    tensors["audio_dit.blocks.0.ffn.0.lora_A.weight"] = torch.zeros(2, 5)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"rank": "2", "alpha": "3.0"})
    with pytest.raises(LoraError, match=r"MOVA official LoRA: 2 of \d+ tensors do not match.*audio_dit\.blocks\.0\.ffn\.0"):
        tiny_pipe.load_lora(bad)
    partial = tiny_pipe.load_lora(bad, allow_partial=True)
    assert "blocks.0.ffn.0" not in partial.pairs["audio_dit"] and len(partial.skipped) == 2


# -- conversions ----------------------------------------------------------------------------------------------------
def _same_pairs(a, b, component_a, component_b):
    assert sorted(a.pairs[component_a]) == sorted(b.pairs[component_b])
    for path, (down, up) in a.pairs[component_a].items():
        assert torch.equal(down, b.pairs[component_b][path][0]) and torch.equal(up, b.pairs[component_b][path][1])
        assert a.layer_scale(component_a, path) == b.layer_scale(component_b, path)


def test_official_to_comfy_per_expert_and_back(tmp_path, tiny_pipe, tiny_checkpoint_dir, capsys):
    original = _official(tiny_pipe)
    src = save_lora_safetensors(original, tmp_path / "mova.safetensors", {"note": "trained here"})
    out = tmp_path / "wan.safetensors"
    tiny = ["--checkpoint", str(tiny_checkpoint_dir)]
    assert lora_convert_cli([str(src), str(out), "--to", "comfy", *tiny]) == 2
    assert "audio_dit parts, which a Wan (ComfyUI-native) LoRA cannot hold" in capsys.readouterr().err
    assert not list(tmp_path.glob("wan*"))
    assert lora_convert_cli([str(src), str(out), "--to", "comfy", "--video-only", *tiny]) == 0
    high, low = tmp_path / "wan_high_noise.safetensors", tmp_path / "wan_low_noise.safetensors"
    assert capsys.readouterr().out.split() == [str(high), str(low)]
    with safe_open(str(high), "pt") as handle:
        meta, keys = handle.metadata(), list(handle.keys())
    assert meta["note"] == "trained here" and meta["mova_component"] == "video_dit" and meta["format"] == "pt"
    assert all(k.startswith("diffusion_model.blocks.0.") for k in keys) and any(k.endswith(".alpha") for k in keys)
    for path, expert, component in ((high, "high", "video_dit"), (low, "low", "video_dit_2")):
        back = tiny_pipe.load_lora(path, expert=expert)
        assert back.format == "ComfyUI native (prefix 'diffusion_model.')" and back.components() == (component,)
        _same_pairs(original, back, component, component)
    # ... and back to the official format (checked against the tiny checkpoint)
    again = tmp_path / "again.safetensors"
    assert lora_convert_cli([str(high), str(again), "--to", "official", "--expert", "high",
                             "--checkpoint", str(tiny_checkpoint_dir)]) == 0
    official = load_lora(again)
    assert (official.rank, official.alpha) == (original.rank, original.alpha) and official.components() == ("video_dit",)
    _same_pairs(original, official, "video_dit", "video_dit")
    assert official.metadata["note"] == "trained here"
    # an existing output is never replaced unless asked (issue 17, item 2)
    capsys.readouterr()
    before = {p: p.read_bytes() for p in (high, low, again)}
    assert lora_convert_cli([str(src), str(out), "--to", "comfy", "--video-only", *tiny]) == 2
    assert f"{high}, {low} already exists; pass --overwrite" in capsys.readouterr().err
    assert lora_convert_cli([str(high), str(again), "--to", "official", "--expert", "high", *tiny]) == 2
    assert {p: p.read_bytes() for p in (high, low, again)} == before
    assert lora_convert_cli([str(src), str(out), "--to", "comfy", "--video-only", "--overwrite", *tiny]) == 0


def test_a_community_lora_to_comfy_and_official(tmp_path, tiny_pipe, tiny_checkpoint_dir, shapes, capsys):
    lora = random_wan_lora(shapes, seed=4)
    write(lora, tmp_path / "kohya.safetensors", "kohya")
    source = tiny_pipe.load_lora(tmp_path / "kohya.safetensors", expert="high")
    out = tmp_path / "comfy.safetensors"
    assert lora_convert_cli([str(tmp_path / "kohya.safetensors"), str(out), "--to", "comfy",
                             "--checkpoint", str(tiny_checkpoint_dir)]) == 0
    assert capsys.readouterr().out.split() == [str(out)]
    back = tiny_pipe.load_lora(out, expert="high")
    _same_pairs(source, back, "video_dit", "video_dit")
    assert set(back.deltas["video_dit"]) == set(source.deltas["video_dit"])
    assert all(torch.equal(t, source.deltas["video_dit"][p][0]) for p, (t, _) in back.deltas["video_dit"].items())
    assert back.metadata["note"] == "kohya" and back.metadata["mova_converted_from"].startswith("kohya/musubi")
    # the official format holds Linear pairs only: deltas and the conv pair are refused, the rest folds per-layer scales
    assert lora_convert_cli([str(out), str(tmp_path / "o.safetensors"), "--to", "official",
                             "--checkpoint", str(tiny_checkpoint_dir)]) == 2
    assert "full-size deltas" in capsys.readouterr().err
    pairs_only = random_wan_lora(shapes, seed=4, with_deltas=False)
    pairs_only.pairs.pop("patch_embedding")
    write(pairs_only, tmp_path / "pairs.safetensors", "diffusers")
    assert lora_convert_cli([str(tmp_path / "pairs.safetensors"), str(tmp_path / "o.safetensors"), "--to", "official",
                             "--expert", "low", "--checkpoint", str(tiny_checkpoint_dir)]) == 0
    official = load_lora(tmp_path / "o.safetensors")
    assert official.components() == ("video_dit_2",)
    for path, (down, up, alpha) in pairs_only.pairs.items():
        got_down, got_up = official.pairs["video_dit_2"][path]
        want = (alpha / down.shape[0]) * (up @ down)
        torch.testing.assert_close(official.base_scaling * (got_up @ got_down), want, atol=1e-6, rtol=1e-5)


def test_convert_checks_against_the_released_layout_without_a_checkpoint(tmp_path, capsys):
    wan14b = _file(tmp_path, {**_pair("lora_unet_blocks_39_ffn_0", 5120, 13824), "lora_unet_blocks_39_ffn_0.alpha": torch.tensor(4.0)})
    assert lora_convert_cli([str(wan14b), str(tmp_path / "out.safetensors"), "--to", "comfy"]) == 0
    assert sorted(load_file(str(tmp_path / "out.safetensors"))) == [
        "diffusion_model.blocks.39.ffn.0.alpha", "diffusion_model.blocks.39.ffn.0.lora_down.weight",
        "diffusion_model.blocks.39.ffn.0.lora_up.weight"]
    wan13b = _file(tmp_path, _pair("lora_unet_blocks_0_ffn_0", 1536, 8960), "small.safetensors")
    assert lora_convert_cli([str(wan13b), str(tmp_path / "small_out.safetensors"), "--to", "comfy"]) == 2
    assert "made for Wan 2.1 1.3B, width 1536; this expert is 5120 wide" in capsys.readouterr().err
    assert not (tmp_path / "small_out.safetensors").exists()
