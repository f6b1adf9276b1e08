"""The shipped MOVA workflows and the node schemas through a real ComfyUI 0.3.75 server (HTTP + websocket).

Each workflow in workflows/api is patched to the tiny random-weight checkpoint (64x64, 9 frames at 8 fps,
3 steps), queued with ``POST /prompt`` and followed on the websocket; the mp4 it writes is downloaded with
``GET /view`` and its streams are decoded with PyAV (``mova_model.media.av_io.probe_media``).
"""
import json

import numpy as np
import pytest
import torch

from host_workflows import (CLIP_FRAMES, SHIPPED, TINY, VOICE_RATE, dac_sample_rate, load_api, node_of, nodes_of,
                            output_files, patch_for_speed, text_of, upload_media, video_files)
from mova_model.media.av_io import probe_media

# node_id -> (required inputs, optional inputs, outputs); "COMBO" stands for a list of choices.
SCHEMAS = {
    "MovaLoader": ({"checkpoint": "COMBO", "dtype": "COMBO", "device": "COMBO", "memory_mode": "COMBO",
                    "vram_budget_gb": "FLOAT", "weights": "COMBO"}, {"prefetch_depth": "INT"}, ["MOVA_MODEL", "STRING"]),
    "MovaTextImageConditioner": (
        {"model": "MOVA_MODEL", "prompt": "STRING", "negative_prompt": "STRING", "width": "INT", "height": "INT",
         "frames": "INT", "fps": "FLOAT"},
        {"image": "IMAGE"}, ["MOVA_CONDITIONING"]),
    "MovaJointSampler": (
        {"model": "MOVA_MODEL", "conditioning": "MOVA_CONDITIONING", "seed": "INT", "steps": "INT", "cfg": "FLOAT"},
        {"guidance": "MOVA_GUIDANCE", "held": "MOVA_HELD"}, ["LATENT"]),
    "MovaAVDecoder": ({"model": "MOVA_MODEL", "latent": "LATENT"}, {}, ["IMAGE", "AUDIO"]),
    "MovaMux": ({"frames": "IMAGE", "fps": "FLOAT", "filename_prefix": "STRING"}, {"audio": "AUDIO"}, ["VIDEO"]),
    "MovaGuidance": ({"preset": "COMBO", "text_scale": "FLOAT", "bridge_scale": "FLOAT"},
                     {"video_text_scale": "FLOAT", "audio_text_scale": "FLOAT", "a2v_strength": "FLOAT",
                      "v2a_strength": "FLOAT"}, ["MOVA_GUIDANCE", "STRING"]),
    "MovaMultiGPU": ({"model": "MOVA_MODEL", "devices": "STRING", "split": "COMBO"}, {"timeout_s": "FLOAT"},
                     ["MOVA_MODEL"]),
    "MovaLoraLoader": ({"model": "MOVA_MODEL", "lora_name": "COMBO", "strength": "FLOAT"},
                       {"video_strength": "FLOAT", "audio_strength": "FLOAT", "bridge_strength": "FLOAT",
                        "expert": "COMBO", "allow_partial": "BOOLEAN"},
                       ["MOVA_MODEL", "STRING"]),
    "MovaAudioDriver": ({"model": "MOVA_MODEL", "conditioning": "MOVA_CONDITIONING", "audio": "AUDIO",
                         "mode": "COMBO"}, {}, ["MOVA_HELD", "STRING"]),
    "MovaVideoDriver": ({"model": "MOVA_MODEL", "conditioning": "MOVA_CONDITIONING", "frames": "IMAGE",
                         "mode": "COMBO"}, {"source_fps": "FLOAT"}, ["MOVA_HELD", "STRING"]),
}  # fmt: skip


def _input_type(spec) -> str:
    kind = spec[0]
    return "COMBO" if isinstance(kind, list) else kind


@pytest.fixture(scope="module")
def object_info(comfy):
    return comfy.object_info()


@pytest.mark.parametrize("node_id", sorted(SCHEMAS))
def test_object_info_shows_node_with_types(object_info, node_id):
    required, optional, outputs = SCHEMAS[node_id]
    assert node_id in object_info, f"{node_id} missing from /object_info"
    info = object_info[node_id]
    assert info["category"].startswith("MOVA/")
    got_required = {name: _input_type(spec) for name, spec in info["input"]["required"].items()}
    got_optional = {name: _input_type(spec) for name, spec in info["input"].get("optional", {}).items()}
    assert {k: got_required.get(k) for k in required} == required
    assert {k: got_optional.get(k) for k in optional} == optional
    assert info["output"] == outputs
    assert info["output_node"] is (node_id == "MovaMux")


def test_loader_lists_the_tiny_checkpoint(comfy, mova_checkpoint):
    options = comfy.object_info("MovaLoader")["MovaLoader"]["input"]["required"]["checkpoint"]
    choices = options[0] if isinstance(options[0], list) else options[1].get("options", [])
    assert mova_checkpoint in choices


# -- the four shipped workflows -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped_runs(comfy, mova_checkpoint, tmp_path_factory):
    """name -> (patched workflow, RunResult, output files before): each shipped workflow run once, on demand."""
    upload_media(comfy, tmp_path_factory.mktemp("media"))
    cache = {}

    def run(name):
        if name not in cache:
            wf = patch_for_speed(load_api(name), mova_checkpoint, prefix=f"mova_test/{name}")
            before = output_files(comfy)
            result = comfy.run(wf, timeout=300)
            cache[name] = (wf, result, before)
        return cache[name]

    return run


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_workflow_writes_mp4_with_requested_streams(comfy, mova_checkpoint, shipped_runs, name):
    wf, result, before = shipped_runs(name)
    assert result.status == "success", f"{name}: {result.error}\n{comfy.server.log_tail(30)}"
    mux = node_of(wf, "MovaMux")
    assert mux in result.executed_nodes()
    videos = [p for p in result.outputs if p.suffix == ".mp4"]
    assert len(videos) == 1, result.output_records
    record = result.output_records[mux]
    assert any(item["filename"] == videos[0].name for items in record.values() for item in items)
    new = video_files(output_files(comfy) - before)
    assert len(new) == 1 and not any(p.name.startswith(".") for p in new), new  # one mp4, no temporary left

    info = probe_media(videos[0])
    rate = dac_sample_rate(comfy, mova_checkpoint)
    assert (info.width, info.height) == (TINY["width"], TINY["height"])
    assert info.frames == TINY["frames"]
    assert info.fps == pytest.approx(TINY["fps"])
    assert info.video_seconds == pytest.approx(TINY["frames"] / TINY["fps"])
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert info.audio_rate == rate
    assert abs(info.audio_seconds - info.video_seconds) <= 1.0 / TINY["fps"], info


@pytest.mark.parametrize("name", SHIPPED)
def test_progress_and_previews_arrive_on_the_websocket(shipped_runs, name):
    wf, result, _ = shipped_runs(name)
    assert result.status == "success", result.error
    steps = TINY["steps"]
    sampler = node_of(wf, "MovaJointSampler")
    assert result.progress_count >= steps
    assert result.preview_count >= steps
    sampler_progress = [e["data"] for e in result.events if e["type"] == "progress" and str(e["data"].get("node")) == sampler]
    assert [(p["value"], p["max"]) for p in sampler_progress] == [(i, steps) for i in range(1, steps + 1)]
    previews = [e for e in result.events if e["type"] == "binary" and e["kind"] in (1, 4)]
    assert all(e["bytes"] > 100 for e in previews)  # a real JPEG, not an empty frame


def test_memory_plan_is_shown(shipped_runs, mova_checkpoint):
    wf, result, _ = shipped_runs("i2va")
    plan = next(nid for nid in nodes_of(wf, "PreviewAny") if wf[nid]["inputs"]["source"][0] == node_of(wf, "MovaLoader"))
    text = text_of(result, plan)
    assert mova_checkpoint in text and "float32" in text and "cpu" in text
    assert "memory-mapped" in text  # the CPU plan says how it computes


def test_a2v_notes_say_resampled_mixed_and_padded(comfy, mova_checkpoint, shipped_runs):
    wf, result, _ = shipped_runs("a2v")
    assert result.status == "success", result.error
    driver = node_of(wf, "MovaAudioDriver")
    notes_node = next(nid for nid in nodes_of(wf, "PreviewAny") if wf[nid]["inputs"]["source"][0] == driver)
    notes = text_of(result, notes_node)
    rate = dac_sample_rate(comfy, mova_checkpoint)
    assert f"resampled {VOICE_RATE} Hz -> {rate} Hz" in notes, notes
    assert "mixed 2 channels to mono" in notes, notes
    clip_seconds = TINY["frames"] / TINY["fps"]
    assert f"padded with silence from 0.70 s to the clip's {clip_seconds:.2f} s" in notes, notes


def test_v2a_notes_say_frames_trimmed(shipped_runs):
    wf, result, _ = shipped_runs("v2a")
    assert result.status == "success", result.error
    driver = node_of(wf, "MovaVideoDriver")
    notes_node = next(nid for nid in nodes_of(wf, "PreviewAny") if wf[nid]["inputs"]["source"][0] == driver)
    notes = text_of(result, notes_node)
    assert f"used the first {TINY['frames']} of {CLIP_FRAMES} frames" in notes, notes
    # The video's own fps reaches the driver (issue 9: a 60 fps video was taken frame by frame, 2.5x slow):
    # the clip here has the conditioner's fps, so nothing is resampled and nothing is assumed.
    assert wf[driver]["inputs"]["source_fps"] == [node_of(wf, "GetVideoComponents"), 2]
    assert "source_fps not given" not in notes and "took" not in notes, notes


# -- our decoder feeding ComfyUI's own video nodes --------------------------------------------------------------
def test_decoder_feeds_core_create_video_and_save_video(comfy, mova_checkpoint):
    wf = patch_for_speed(load_api("i2va"), mova_checkpoint, seed=7)
    decoder = node_of(wf, "MovaAVDecoder")
    del wf[node_of(wf, "MovaMux")]
    wf["20"] = {"class_type": "CreateVideo",
                "inputs": {"images": [decoder, 0], "fps": TINY["fps"], "audio": [decoder, 1]}}
    wf["21"] = {"class_type": "SaveVideo",
                "inputs": {"video": ["20", 0], "filename_prefix": "mova_test/core_video", "format": "mp4",
                           "codec": "h264"}}  # fmt: skip
    result = comfy.run(wf, timeout=300)
    assert result.status == "success", f"{result.error}\n{comfy.server.log_tail(30)}"
    (video,) = [p for p in result.outputs if p.suffix == ".mp4"]
    info = probe_media(video)
    assert info.frames == TINY["frames"] and (info.width, info.height) == (TINY["width"], TINY["height"])
    assert info.fps == pytest.approx(TINY["fps"])
    assert info.audio_codec is not None and info.audio_seconds > 0
    assert abs(info.audio_seconds - info.video_seconds) <= 1.0 / TINY["fps"], info


# -- the template browser ---------------------------------------------------------------------------------------
def test_workflows_appear_in_the_template_browser(comfy):
    templates = comfy.get_json("/workflow_templates")
    pack = next(name for name, items in templates.items() if "mova_i2va" in items)
    assert {"mova_i2va", "mova_t2va", "mova_a2v", "mova_v2a"} <= set(templates[pack])
    assert not [t for t in templates[pack] if t.endswith("_api")]  # the API-format copies stay out of the list
    graph = comfy.get_json(f"/api/workflow_templates/{pack}/mova_i2va.json")
    assert {n["type"] for n in graph["nodes"]} >= {"MovaLoader", "MovaJointSampler", "MovaMux", "LoadImage"}
    sampler = next(n for n in graph["nodes"] if n["type"] == "MovaJointSampler")
    assert "fixed" in sampler["widgets_values"]  # shipped with a fixed seed


# -- LoRA: the loader node patches a copy, stacks, and refuses a file that is not in models/loras ---------------
def _tiny_lora(path, checkpoint_dir, rank=2, seed=0):
    """A LoRA for the tiny checkpoint's audio DiT and bridge, in the official key layout, as safetensors."""
    import torch

    from mova_model.checkpoint.folder import MovaCheckpoint
    from mova_model.network.lora import LoraWeights, save_lora_safetensors
    from mova_model.network.ops import CastLinear

    ckpt = MovaCheckpoint.open(checkpoint_dir)
    g = torch.Generator().manual_seed(seed)
    pairs = {}
    for component in ("audio_dit", "dual_tower_bridge"):
        module = ckpt.build(component)
        pairs[component] = {name: (torch.randn(rank, layer.in_features, generator=g) * 0.5,
                                   torch.randn(layer.out_features, rank, generator=g) * 0.5)
                            for name, layer in module.named_modules()
                            if isinstance(layer, CastLinear) and ("blocks" in name or "conditioners" in name)}
    return save_lora_safetensors(LoraWeights(pairs=pairs, rank=rank, alpha=float(rank)), path)


def test_lora_loader_changes_the_result_and_stacks(comfy, mova_checkpoint):
    loras = comfy.server.models_dir / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    _tiny_lora(loras / "mova_tiny_lora.safetensors", comfy.server.models_dir / "mova" / mova_checkpoint)
    base_wf = patch_for_speed(load_api("t2va"), mova_checkpoint, seed=11, prefix="mova_test/lora_base")
    base = comfy.run(base_wf, timeout=300)
    assert base.status == "success", base.error

    def with_loras(strengths, prefix):
        wf = patch_for_speed(load_api("t2va"), mova_checkpoint, seed=11, prefix=prefix)
        loader = node_of(wf, "MovaLoader")
        source = [loader, 0]
        for i, strength in enumerate(strengths):
            wf[f"3{i}"] = {"class_type": "MovaLoraLoader", "inputs": {"model": source, "lora_name": "mova_tiny_lora.safetensors",
                                                                     "strength": strength}}
            source = [f"3{i}", 0]
        for node in wf.values():
            if node["class_type"] in ("MovaTextImageConditioner", "MovaJointSampler", "MovaAVDecoder"):
                node["inputs"]["model"] = source
        return comfy.run(wf, timeout=300)

    zero = with_loras([0.0], "mova_test/lora_zero")
    strong = with_loras([1.0, 0.5], "mova_test/lora_stacked")
    assert zero.status == "success" and strong.status == "success", (zero.error, strong.error)

    def audio_of(result):
        import av

        (video,) = [p for p in result.outputs if p.suffix == ".mp4"]
        with av.open(str(video)) as container:
            return np.concatenate([f.to_ndarray().ravel() for f in container.decode(container.streams.audio[0])])

    assert np.array_equal(audio_of(zero), audio_of(base))  # strength 0 = no LoRA
    assert not np.array_equal(audio_of(strong), audio_of(base))
    # The base model was not modified by its patched copies: re-run the sampler on the original model (an explicit
    # "official" guidance node makes ComfyUI re-execute it; numerically it is the same text CFG 5).
    again_wf = json.loads(json.dumps(base_wf))
    again_wf["40"] = {"class_type": "MovaGuidance", "inputs": {"preset": "official (text CFG)", "text_scale": 5.0,
                                                               "bridge_scale": 1.0}}
    again_wf[node_of(again_wf, "MovaJointSampler")]["inputs"]["guidance"] = ["40", 0]
    again_wf[node_of(again_wf, "MovaMux")]["inputs"]["filename_prefix"] = "mova_test/lora_base_again"
    again = comfy.run(again_wf, timeout=300)
    assert again.status == "success" and np.array_equal(audio_of(again), audio_of(base))


def test_a_kohya_wan_lora_through_the_lora_loader(comfy, mova_checkpoint):
    """A kohya-format Wan LoRA in models/loras, routed by the node's `expert`: on the high-noise expert it gives the
    same clip as the same pairs in the official MOVA format (video_dit keys); on the low-noise one another clip; a
    file with a key MOVA has no layer for is refused naming it, unless allow_partial."""
    from safetensors.torch import load_file, save_file

    from mova_model.network.lora import LoraWeights, save_lora_safetensors
    from wan_lora_files import TOP_TARGETS, WanLora, expert_state, random_wan_lora, shapes_of, write

    loras = comfy.server.models_dir / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    state = expert_state(comfy.server.models_dir / "mova" / mova_checkpoint, "video_dit")
    lora = random_wan_lora(shapes_of(state), seed=21, with_deltas=False)
    lora = WanLora({t: (down, up * 3.0, 8.0) for t, (down, up, _) in lora.pairs.items() if t not in TOP_TARGETS})
    write(lora, loras / "wan_kohya.safetensors", "kohya")
    save_lora_safetensors(LoraWeights({"video_dit": {t: (d, u) for t, (d, u, _) in lora.pairs.items()}}, rank=4, alpha=8.0),
                          loras / "wan_as_mova.safetensors")
    tensors = load_file(str(loras / "wan_kohya.safetensors"))
    tensors["lora_unet_blocks_0_cross_attn_k_img.lora_down.weight"] = torch.zeros(4, state["blocks.0.cross_attn.k.weight"].shape[1])
    tensors["lora_unet_blocks_0_cross_attn_k_img.lora_up.weight"] = torch.zeros(state["blocks.0.cross_attn.k.weight"].shape[0], 4)
    save_file(tensors, str(loras / "wan_kohya_i2v.safetensors"))

    def run(name, prefix, **inputs):
        wf = patch_for_speed(load_api("t2va"), mova_checkpoint, seed=13, prefix=f"mova_test/{prefix}")
        wf["30"] = {"class_type": "MovaLoraLoader", "inputs": {"model": [node_of(wf, "MovaLoader"), 0], "lora_name": name,
                                                              "strength": 1.0, **inputs}}
        for node in wf.values():
            if node["class_type"] in ("MovaTextImageConditioner", "MovaJointSampler", "MovaAVDecoder"):
                node["inputs"]["model"] = ["30", 0]
        return comfy.run(wf, timeout=300)

    def audio_of(result):
        import av

        assert result.status == "success", result.error
        (video,) = [p for p in result.outputs if p.suffix == ".mp4"]
        with av.open(str(video)) as container:
            return np.concatenate([f.to_ndarray().ravel() for f in container.decode(container.streams.audio[0])])

    high = audio_of(run("wan_kohya.safetensors", "kohya_high", expert="high"))
    assert np.array_equal(high, audio_of(run("wan_as_mova.safetensors", "kohya_as_mova")))
    assert not np.array_equal(high, audio_of(run("wan_kohya.safetensors", "kohya_low", expert="low")))
    refused = run("wan_kohya_i2v.safetensors", "kohya_refused", expert="high")
    assert refused.status == "error" and "kohya/musubi" in refused.error and "cross_attn_k_img" in refused.error, refused.error
    assert "allow_partial" in refused.error
    assert np.array_equal(high, audio_of(run("wan_kohya_i2v.safetensors", "kohya_partial", expert="high",
                                             allow_partial=True)))


def test_lora_name_outside_the_list_is_a_validation_error(comfy, mova_checkpoint):
    wf = patch_for_speed(load_api("t2va"), mova_checkpoint)
    loader = node_of(wf, "MovaLoader")
    wf["30"] = {"class_type": "MovaLoraLoader", "inputs": {"model": [loader, 0], "lora_name": "nope.safetensors",
                                                          "strength": 1.0}}
    wf[node_of(wf, "MovaJointSampler")]["inputs"]["model"] = ["30", 0]
    status, body = comfy.post_json("/prompt", {"prompt": wf, "client_id": comfy.client_id})
    # the memory-plan preview does not depend on the LoRA, so ComfyUI may queue it and answer 200 with node_errors
    errors = json.dumps(body.get("node_errors") or body)
    assert status in (200, 400) and "30" in (body.get("node_errors") or {"30": 0})
    assert "nope.safetensors" in errors and "models/loras" in errors
