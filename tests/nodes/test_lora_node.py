"""Community Wan LoRAs against ComfyUI's own LoRA code, and the MOVA LoRA Loader node in-process.

ComfyUI 0.3.75 core (`comfy.lora.model_lora_keys_unet`, `comfy.lora_convert.convert_lora`, `comfy.lora.load_lora`,
`comfy.lora.calculate_weight`) merges each file into the tiny expert's weights; sampling with those merged
weights must give the latents of the same file loaded by this pack. The real server run is in
tests/host/test_workflows.py."""
from types import SimpleNamespace

import pytest
import torch

from wan_lora_files import (COMFY_CORE_FORMATS, expert_state, merge_state, merged_checkpoint, random_wan_lora,
                            shapes_of, write)

ONE_PASS = dict(text_scale=1.0, bridge_scale=1.0)


@pytest.fixture(scope="module")
def tiny(node_module, tmp_path_factory):
    from mova_model.checkpoint.tiny import write_tiny_checkpoint

    node_module("lora")  # ComfyUI importable
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_mova") / "MOVA-tiny")


def comfy_merge(state, path, strength):
    """ComfyUI core's merge of the LoRA file at `path` into an expert `state` (keys without the model prefix)."""
    import comfy.lora
    import comfy.lora_convert
    from safetensors.torch import load_file

    prefixed = {f"diffusion_model.{k}": v for k, v in state.items()}
    model = SimpleNamespace(state_dict=lambda: prefixed, model_config=SimpleNamespace(unet_config={}))
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    lora = comfy.lora_convert.convert_lora(load_file(str(path)))
    patches = comfy.lora.load_lora(lora, key_map, log_missing=False)
    merged = dict(state)
    for key, patch in patches.items():
        name = key[len("diffusion_model."):]
        merged[name] = comfy.lora.calculate_weight([(strength, patch, 1.0, None, None)], state[name].clone(), key)
    return merged, len(patches)


@pytest.mark.parametrize("fmt", COMFY_CORE_FORMATS)
def test_comfyui_core_merge_gives_the_same_latents(fmt, tiny, tmp_path):
    from mova_model.network.lora import LoraPatch
    from mova_model.sampling.guidance import GuidanceConfig
    from mova_model.sampling.pipeline import MovaPipeline

    carried = write(random_wan_lora(shapes_of(expert_state(tiny, "video_dit")), seed=5), tmp_path / "lora.safetensors", fmt)
    merges = {}
    for expert in ("video_dit", "video_dit_2"):
        state = expert_state(tiny, expert)
        merges[expert], patched = comfy_merge(state, tmp_path / "lora.safetensors", 0.7)
        assert patched == len(carried.pairs) + len(carried.deltas)  # ComfyUI loaded every layer of the file
        ours = merge_state(state, carried, 0.7)
        for key in state:  # the tests' reference formula is ComfyUI's
            torch.testing.assert_close(merges[expert][key], ours[key], atol=1e-6, rtol=1e-6)
    folder = merged_checkpoint(tiny, tmp_path / "merged", merges)
    reference = MovaPipeline.from_pretrained(folder, device="cpu", dtype=torch.float32)
    pipe = MovaPipeline.from_pretrained(tiny, device="cpu", dtype=torch.float32)
    cond = pipe.prepare_conditioning("a dog barks", "", None, width=32, height=32, num_frames=5, video_fps=8.0)
    want = reference.sample(cond, seed=2, steps=2, guidance=GuidanceConfig(**ONE_PASS))
    got = pipe.with_lora(LoraPatch(pipe.load_lora(tmp_path / "lora.safetensors"), 0.7)).sample(
        cond, seed=2, steps=2, guidance=GuidanceConfig(**ONE_PASS))
    torch.testing.assert_close(got.video, want.video, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.audio, want.audio, atol=1e-5, rtol=1e-5)


# -- the node --------------------------------------------------------------------------------------------------------
@pytest.fixture
def loras(node_module, tmp_path, monkeypatch):
    import folder_paths

    folder = tmp_path / "loras"
    folder.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(folder)], {".safetensors", ".pt"}))
    folder_paths.filename_list_cache.clear()
    yield folder
    folder_paths.filename_list_cache.clear()


@pytest.fixture(scope="module")
def handle(node_module, tiny):
    import importlib

    MovaPipeline = importlib.import_module("comfyui_mova.mova_model.sampling.pipeline").MovaPipeline
    return node_module("types").MovaModelHandle(MovaPipeline.from_pretrained(tiny), "tiny")


def _kohya_with_image_layers(tiny, path):
    """A kohya LoRA for the tiny expert plus two Wan 2.1 I2V (`k_img`) tensors MOVA has no layer for."""
    from safetensors.torch import load_file, save_file

    write(random_wan_lora(shapes_of(expert_state(tiny, "video_dit")), seed=1, with_deltas=False), path, "kohya")
    tensors = load_file(str(path))
    tensors["lora_unet_blocks_0_cross_attn_k_img.lora_down.weight"] = torch.zeros(4, 48)
    tensors["lora_unet_blocks_0_cross_attn_k_img.lora_up.weight"] = torch.zeros(48, 4)
    save_file(tensors, str(path))
    return len(tensors)


def test_loader_routes_and_reports(node_module, handle, loras, tiny):
    loader = node_module("lora").MovaLoraLoader
    total = _kohya_with_image_layers(tiny, loras / "wan_style.safetensors")
    with pytest.raises(ValueError) as info:
        loader.execute(handle, "wan_style.safetensors", 1.0)
    message = str(info.value)
    assert "kohya/musubi (prefix 'lora_unet_')" in message and "lora_unet_blocks_0_cross_attn_k_img.lora_down.weight" in message
    assert "Wan 2.1 image-to-video" in message and "allow_partial" in message and f"2 of {total} tensors" in message

    model, report = loader.execute(handle, "wan_style.safetensors", 0.5, expert="low", allow_partial=True).result
    assert model.pipeline.lora.patches[0].weights.components() == ("video_dit_2",)
    assert "kohya/musubi" in report and "video_dit_2: 33 pairs" in report
    assert report.count("skipped lora_unet_blocks_0_cross_attn_k_img") == 2
    assert "expert low" in model.plan_text and handle.pipeline.lora.patches == ()
    with pytest.raises(ValueError, match="expert = 'middle' is not allowed; choose one of: 'both', 'high', 'low'"):
        loader.execute(handle, "wan_style.safetensors", 1.0, expert="middle")
