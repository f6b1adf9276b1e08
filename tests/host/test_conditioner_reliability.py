"""The conditioner through a real ComfyUI 0.3.75 server, where issue 17 found it failing: a keyframe on the
frame the first (or last) image already sets is refused with a message instead of silently dropped; a 10 MB
prompt does not grow the server (the text is cut before tokenizing); the widgets' limits are the shared
bounds the CLIs use."""
from pathlib import Path

import pytest

from host_workflows import load_api, node_of, output_files, patch_for_speed


def _i2va(checkpoint: str, **conditioner) -> dict:
    wf = patch_for_speed(load_api("i2va"), checkpoint, prefix="mova_test/conditioner_rel", seed=5)
    wf[node_of(wf, "MovaTextImageConditioner")]["inputs"].update(conditioner)
    return wf


@pytest.mark.parametrize("inputs, words", [
    (dict(keyframes=["2", 0], keyframe_positions="0"), "frame 0 (the first frame) is where the image input goes"),
    (dict(last_image=["2", 0], keyframes=["2", 0], keyframe_positions="-1"),
     "frame 8 (the last frame) is where the last_image input goes"),
], ids=["0-with-image", "minus1-with-last-image"])
def test_a_keyframe_on_a_given_first_or_last_frame_is_refused(comfy, mova_checkpoint, inputs, words):
    wf = _i2va(mova_checkpoint, **inputs)
    before = output_files(comfy)
    result = comfy.run(wf, timeout=300)
    assert result.status == "error", result.status
    assert str(result.error_details["node_id"]) == node_of(wf, "MovaTextImageConditioner")
    assert words in result.error and "remove" in result.error, result.error
    assert output_files(comfy) == before


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_10_mb_prompt_does_not_grow_the_server(comfy, mova_checkpoint):
    pid = comfy.server.pid
    sentence = "A dog barks twice while rain falls on a tin roof. "
    wf = _i2va(mova_checkpoint, prompt=(sentence * (10_000_000 // len(sentence) + 1))[:10_000_000])
    start = comfy.rss_bytes()
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the current size
    result = comfy.run(wf, timeout=600)
    assert result.status == "success", result.error
    grown = (_peak_rss(pid) - start) / 1e9
    print(f"\nserver peak RSS grew by {grown:.2f} GB with a 10 MB prompt")
    assert grown < 0.5, f"the server's peak memory grew by {grown:.2f} GB: the prompt was tokenized whole"
    assert "only the first 32,768 are read" in comfy.server.log_text()


def test_the_widgets_limits_are_the_shared_bounds(comfy):
    from mova_model import bounds

    info = comfy.object_info()
    conditioner = info["MovaTextImageConditioner"]["input"]["required"]
    assert conditioner["frames"][1]["max"] == bounds.FRAMES.high == 1025
    assert conditioner["width"][1]["max"] == bounds.WIDTH.high and conditioner["fps"][1]["max"] == bounds.FPS.high
    sampler = info["MovaJointSampler"]["input"]["required"]
    assert sampler["seed"][1]["max"] == bounds.SEED.high and sampler["steps"][1]["max"] == bounds.STEPS.high
    assert sampler["cfg"][1]["max"] == bounds.CFG.high
    train = info["MovaTrainLora"]["input"]["required"]
    assert train["learning_rate"][1]["max"] == bounds.LEARNING_RATE.high
    assert train["seed"][1]["max"] == bounds.TRAIN_SEED.high
