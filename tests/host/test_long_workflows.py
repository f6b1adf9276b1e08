"""Long clips and keyframes through a real ComfyUI 0.3.75 server: the two shipped workflows (24 s from three
segments with a prompt each; first + last frame), MOVA Extend's schema, and its bad inputs (a clear error, no
file written). Patched to the tiny checkpoint: segments of 9 frames at 8 fps, overlap 5, 3 steps."""
import pytest

from host_workflows import (TINY, dac_sample_rate, load_api, node_of, nodes_of, output_files, patch_for_speed,
                            upload_media, video_files)
from mova_model.media.av_io import probe_media

OVERLAP = 5


def patch_long(workflow, checkpoint, prefix, overlap=OVERLAP, seed=None):
    wf = patch_for_speed(workflow, checkpoint, prefix=prefix, seed=seed)
    for i, nid in enumerate(nodes_of(wf, "MovaExtend")):
        wf[nid]["inputs"].update(overlap=overlap, steps=TINY["steps"])
        if seed is not None:
            wf[nid]["inputs"]["seed"] = seed + 1 + i
    return wf


@pytest.fixture(scope="module")
def media(comfy, tmp_path_factory):
    return upload_media(comfy, tmp_path_factory.mktemp("media"))


def test_extend_schema(comfy):
    info = comfy.object_info("MovaExtend")["MovaExtend"]
    required = info["input"]["required"]
    assert required["previous"][0] == "LATENT" and required["conditioning"][0] == "MOVA_CONDITIONING"
    assert required["overlap"][0] == "INT" and required["hold_mode"][0] in (["clean", "renoise"], "COMBO")
    assert info["output"] == ["LATENT"] and info["category"] == "MOVA/sampling"
    conditioner = comfy.object_info("MovaTextImageConditioner")["MovaTextImageConditioner"]["input"]["optional"]
    assert conditioner["last_image"][0] == "IMAGE" and conditioner["keyframes"][0] == "IMAGE"


def test_three_segment_workflow_joins_to_the_exact_length(comfy, mova_checkpoint, media):
    wf = patch_long(load_api("long24"), mova_checkpoint, "mova_test/long24")
    before = output_files(comfy)
    result = comfy.run(wf, timeout=600)
    assert result.status == "success", f"{result.error}\n{comfy.server.log_tail(30)}"
    assert len(nodes_of(wf, "MovaExtend")) == 2 and len(nodes_of(wf, "MovaTextImageConditioner")) == 3
    (video,) = [p for p in result.outputs if p.suffix == ".mp4"]
    assert len(video_files(output_files(comfy) - before)) == 1
    info = probe_media(video)
    frames = 3 * TINY["frames"] - 2 * OVERLAP
    assert info.frames == frames and (info.width, info.height) == (TINY["width"], TINY["height"])
    assert info.audio_rate == dac_sample_rate(comfy, mova_checkpoint)
    assert abs(info.audio_seconds - frames / TINY["fps"]) <= 1.0 / TINY["fps"], info


def test_first_last_frame_workflow(comfy, mova_checkpoint, media):
    wf = patch_long(load_api("first_last"), mova_checkpoint, "mova_test/first_last")
    assert len(nodes_of(wf, "LoadImage")) == 2
    result = comfy.run(wf, timeout=300)
    assert result.status == "success", f"{result.error}\n{comfy.server.log_tail(30)}"
    (video,) = [p for p in result.outputs if p.suffix == ".mp4"]
    info = probe_media(video)
    assert info.frames == TINY["frames"] and info.audio_codec == "aac"


@pytest.mark.parametrize("overlap, message", [(7, "4m+1"), (TINY["frames"], "shorter than the segment")])
def test_bad_overlap_is_a_clear_error_and_writes_nothing(comfy, mova_checkpoint, media, overlap, message):
    wf = patch_long(load_api("long24"), mova_checkpoint, f"mova_test/bad_overlap_{overlap}", overlap=overlap, seed=77)
    before = output_files(comfy)
    result = comfy.run(wf, timeout=300)
    assert result.status == "error"
    assert message in (result.error or "") and "Traceback" not in result.error, result.error
    assert video_files(output_files(comfy) - before) == set()


def test_foreign_previous_latent_is_refused(comfy, mova_checkpoint, media):
    wf = patch_long(load_api("long24"), mova_checkpoint, "mova_test/foreign_latent", seed=78)
    wf["90"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    wf[nodes_of(wf, "MovaExtend")[0]]["inputs"]["previous"] = ["90", 0]
    before = output_files(comfy)
    result = comfy.run(wf, timeout=300)
    assert result.status == "error" and "not made by the MOVA Joint Sampler" in str(result.error)
    assert video_files(output_files(comfy) - before) == set()
