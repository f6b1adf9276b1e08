"""Sampler choice and restyle through a real ComfyUI 0.3.75 server: the new inputs in /object_info, the restyle
workflow with its sound kept and a core sigma node (KarrasScheduler) driving the Joint Sampler, and the bad values a
user can wire (an unknown solver, SplitSigmas' high part that does not end at 0, denoise above 1) refused with a
message and no file written. (The restyle workflow as shipped runs with the others in test_workflows.py.)"""
import json

import pytest

from host_workflows import TINY, dac_sample_rate, load_api, node_of, output_files, patch_for_speed, text_of, upload_media
from mova_model.media.av_io import probe_media


def _run_failing(comfy, workflow: dict) -> str:
    """Run ``workflow`` expecting a refusal (a node's ValueError, or the server's validation); -> the message.
    Nothing may be written and no raw torch error may show."""
    before = output_files(comfy)
    result = comfy.run(workflow, timeout=300)
    assert result.status in ("error", "rejected"), f"expected a failure, got {result.status}"
    assert output_files(comfy) == before, "a failed run wrote files"
    if result.status == "error":
        assert result.error_details.get("exception_type", "").rsplit(".", 1)[-1] in ("ValueError", "InputError", "ChoiceError")
        message = result.error
    else:
        message = json.dumps(result.node_errors, ensure_ascii=False)
    assert "Traceback" not in message and "torch." not in message, message
    return message


@pytest.fixture(scope="module")
def media(comfy, tmp_path_factory):
    return upload_media(comfy, tmp_path_factory.mktemp("restyle_media"))


def _restyle(checkpoint, seed, prefix="mova_test/restyle_variant"):
    return patch_for_speed(load_api("restyle"), checkpoint, seed=seed, prefix=prefix)


def test_object_info_lists_the_new_inputs(comfy):
    info = comfy.object_info()
    optional = info["MovaJointSampler"]["input"]["optional"]
    assert optional["solver"][0] == ["euler", "unipc", "dpm++"] or optional["solver"][1]["options"] == ["euler", "unipc", "dpm++"]
    assert {k: optional[k][0] for k in ("shift", "sigmas", "init_latent", "denoise", "audio_denoise")} == {
        "shift": "FLOAT", "sigmas": "SIGMAS", "init_latent": "LATENT", "denoise": "FLOAT", "audio_denoise": "FLOAT"}
    assert {"solver", "shift", "sigmas"} <= set(info["MovaExtend"]["input"]["optional"])
    encode = info["MovaEncode"]
    assert set(encode["input"]["required"]) == {"model", "conditioning", "frames"}
    assert {k: v[0] for k, v in encode["input"]["optional"].items()} == {"audio": "AUDIO", "source_fps": "FLOAT"}
    assert encode["output"] == ["LATENT", "STRING"] and encode["category"] == "MOVA/sampling"


def test_sound_kept_with_core_sigmas(comfy, mova_checkpoint, media):
    wf = _restyle(mova_checkpoint, seed=6060)
    sampler = node_of(wf, "MovaJointSampler")
    wf["30"] = {"class_type": "KarrasScheduler", "inputs": {"steps": 3, "sigma_max": 1.0, "sigma_min": 0.05, "rho": 7.0}}
    wf[sampler]["inputs"].update(sigmas=["30", 0], denoise=1.0, audio_denoise=0.0, solver="dpm++")
    result = comfy.run(wf, timeout=300)
    assert result.status == "success", f"{result.error}\n{comfy.server.log_tail(30)}"
    progress = [e["data"] for e in result.events if e["type"] == "progress" and str(e["data"].get("node")) == sampler]
    assert [(p["value"], p["max"]) for p in progress] == [(1, 3), (2, 3), (3, 3)]  # the list's 3 steps
    notes = text_of(result, "12")  # the PreviewAny showing MOVA Encode's notes
    rate = dac_sample_rate(comfy, mova_checkpoint)
    assert f"used the first {TINY['frames']} of" in notes and f"resampled 44100 Hz -> {rate} Hz" in notes, notes
    (video,) = [p for p in result.outputs if p.suffix == ".mp4"]
    info = probe_media(video)
    assert info.frames == TINY["frames"] and info.audio_codec == "aac"


@pytest.mark.parametrize("change, words", [
    ({"solver": "heun"}, ["solver = 'heun' is not allowed", "'euler', 'unipc', 'dpm++'"]),
    ({"sigmas": "SPLIT"}, ["sigmas must end at 0"]),
    ({"denoise": 1.5}, ["denoise", "1.5"]),
], ids=["unknown-solver", "split-sigmas-high", "denoise-above-1"])
def test_bad_values_are_refused_with_a_message(comfy, mova_checkpoint, media, change, words):
    wf = _restyle(mova_checkpoint, seed=6161, prefix="mova_test/bad_restyle")
    sampler = node_of(wf, "MovaJointSampler")
    if change.get("sigmas") == "SPLIT":
        wf["30"] = {"class_type": "KarrasScheduler", "inputs": {"steps": 4, "sigma_max": 1.0, "sigma_min": 0.05, "rho": 7.0}}
        wf["31"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["30", 0], "step": 2}}
        change = {"sigmas": ["31", 0], "denoise": 1.0}
    wf[sampler]["inputs"].update(change)
    message = _run_failing(comfy, wf)
    for word in words:
        assert word in message, message
