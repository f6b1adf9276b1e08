"""Bad inputs through a real ComfyUI 0.3.75 server: a readable message naming the input and what is allowed
(the ``execution_error``'s ``exception_message`` or the 400 answer's ``node_errors``), never a raw torch
error, and no file written (the whole i2va graph, Mux included, is queued each time).
"""
import json
import shutil
import time

import pytest

from host_workflows import load_api, node_of, output_files, patch_for_speed

# What our nodes raise for user mistakes; anything else (RuntimeError from torch, KeyError, ...) is a bug.
READABLE_ERRORS = ("InputError", "ValueError", "CheckpointError", "MediaError", "ConfigError")
RAW_TORCH_WORDS = ("Traceback", "size mismatch", "mat1 and mat2", "must match the size", "Expected all tensors",
                   "torch.", "CUDA", "out of bounds", "invalid argument")


def _i2va(checkpoint: str, **overrides) -> dict:
    return patch_for_speed(load_api("i2va"), checkpoint, prefix="mova_test/bad_input", **overrides)


def _run_failing(comfy, workflow: dict):
    """Run ``workflow``, expecting a failure; -> (result, readable message). Checks no file was written."""
    before = output_files(comfy)
    result = comfy.run(workflow, timeout=300)
    assert result.status in ("error", "rejected"), f"expected a failure, got {result.status}"
    assert output_files(comfy) == before, "a failed run wrote files"
    assert not [p for p in result.outputs if p.suffix == ".mp4"]
    if result.status == "error":
        exc_type = result.error_details.get("exception_type", "")
        assert exc_type.rsplit(".", 1)[-1] in READABLE_ERRORS, (exc_type, result.error)
        message = result.error
    else:
        message = json.dumps(result.node_errors, ensure_ascii=False)
    assert message and not any(word in message for word in RAW_TORCH_WORDS), message
    return result, message


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"width": 60}, ["width", "multiple of 16", "60"]),
        ({"height": 72}, ["height", "multiple of 16", "72"]),
        ({"frames": 10}, ["frames", "4k+1", "10"]),
        ({"fps": 0.0}, ["fps", "greater than 0"]),
    ],
    ids=["width-60", "height-72", "frames-10", "fps-0"],
)
def test_bad_geometry_is_named_by_the_conditioner(comfy, mova_checkpoint, overrides, words):
    wf = _i2va(mova_checkpoint, **overrides)
    result, message = _run_failing(comfy, wf)
    assert result.status == "error"
    assert str(result.error_details["node_id"]) == node_of(wf, "MovaTextImageConditioner")
    for word in words:
        assert word in message, message


def _queue_expecting_node_errors(comfy, workflow: dict) -> dict:
    """``POST /prompt`` directly; -> its ``node_errors``. ComfyUI answers 400 when no output node is valid,
    and 200 plus ``node_errors`` when it runs the outputs that are (here: only the memory-plan preview),
    so the answer is read here rather than through ``comfy.run``. Waits for any queued part to finish and
    checks it wrote no file."""
    before = output_files(comfy)
    status, body = comfy.post_json("/prompt", {"prompt": workflow, "client_id": comfy.client_id})
    assert isinstance(body, dict) and status in (200, 400), (status, body)
    if status == 200:
        for _ in range(600):
            if comfy.history(body["prompt_id"]).get("status", {}).get("completed") is not None:
                break
            time.sleep(0.1)
    assert output_files(comfy) == before, "a rejected prompt wrote files"
    node_errors = body.get("node_errors") or {}
    message = json.dumps(node_errors, ensure_ascii=False)
    assert not any(word in message for word in RAW_TORCH_WORDS), message
    return node_errors


def test_negative_fps_fails_validation(comfy, mova_checkpoint):
    wf = _i2va(mova_checkpoint, fps=-2.0)
    node_errors = _queue_expecting_node_errors(comfy, wf)
    errors = node_errors.get(node_of(wf, "MovaTextImageConditioner"), {}).get("errors", [])
    assert errors, node_errors
    assert errors[0]["extra_info"]["input_name"] == "fps"
    assert "smaller than min of 0" in errors[0]["message"], errors


def test_mux_rejects_zero_fps(comfy):
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": comfy.images["first_frame"]}},
        "2": {"class_type": "MovaMux", "inputs": {"frames": ["1", 0], "fps": 0.0, "filename_prefix": "mova_test/bad_fps"}},
    }
    result, message = _run_failing(comfy, workflow)
    assert result.status == "error"
    assert "fps must be greater than 0" in message, message


def test_batch_of_images_as_first_frame_is_refused(comfy, mova_checkpoint):
    wf = _i2va(mova_checkpoint)
    load = node_of(wf, "LoadImage")
    wf["30"] = {"class_type": "RepeatImageBatch", "inputs": {"image": [load, 0], "amount": 2}}
    wf[node_of(wf, "MovaTextImageConditioner")]["inputs"]["image"] = ["30", 0]
    result, message = _run_failing(comfy, wf)
    assert result.status == "error"
    assert "image" in message and "one first frame" in message and "batch of 2" in message, message


def test_missing_checkpoint_message_names_it(comfy, mova_checkpoint):
    wf = _i2va(mova_checkpoint)
    wf[node_of(wf, "MovaLoader")]["inputs"]["checkpoint"] = "MOVA-does-not-exist"
    result, message = _run_failing(comfy, wf)
    assert "MOVA-does-not-exist" in message and "not" in message and "checkpoint" in message.lower(), message
    if result.status == "error":
        assert "models/mova" in message or "model_index.json" in message, message


def test_missing_checkpoint_is_a_validation_error(comfy, mova_checkpoint):
    """A name that is not in the Loader's list must be refused by ``POST /prompt`` (400 + node_errors), as
    ComfyUI does for V1 combos, not queued and failed at run time."""
    wf = _i2va(mova_checkpoint)
    loader = node_of(wf, "MovaLoader")
    wf[loader]["inputs"]["checkpoint"] = "MOVA-does-not-exist"
    node_errors = _queue_expecting_node_errors(comfy, wf)
    errors = node_errors.get(loader, {}).get("errors", [])
    assert errors, f"POST /prompt accepted a checkpoint that is not in the list: node_errors={node_errors}"
    assert errors[0]["extra_info"]["input_name"] == "checkpoint"
    text = json.dumps(errors)
    assert "MOVA-does-not-exist" in text and mova_checkpoint in text, errors  # the bad name and what is allowed


@pytest.fixture()
def extra_checkpoint(comfy, mova_checkpoint):
    """Make a folder under models/mova for one test; removed afterwards."""
    made = []

    def make(name: str) -> str:
        dest = comfy.server.models_dir / "mova" / name
        shutil.rmtree(dest, ignore_errors=True)
        made.append(dest)
        return dest

    yield make
    for dest in made:
        shutil.rmtree(dest, ignore_errors=True)


def test_truncated_checkpoint_is_named_not_a_torch_error(comfy, mova_checkpoint, extra_checkpoint):
    dest = extra_checkpoint("mova-truncated")
    shutil.copytree(comfy.server.models_dir / "mova" / mova_checkpoint, dest)
    shard = max((dest / "video_dit").glob("*.safetensors"), key=lambda p: p.stat().st_size)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # a download cut off half way
    wf = _i2va("mova-truncated")
    result, message = _run_failing(comfy, wf)
    assert result.status == "error", message
    assert str(result.error_details["node_id"]) == node_of(wf, "MovaLoader")
    assert "not a usable MOVA checkpoint" in message and "mova-truncated" in message, message
    assert "video_dit" in message and shard.name in message, message
    assert "truncated" in message or "file size does not match" in message, message


def test_folder_of_another_model_is_not_a_mova_checkpoint(comfy, mova_checkpoint, extra_checkpoint):
    dest = extra_checkpoint("wan-t2v-other")
    (dest / "transformer").mkdir(parents=True)
    (dest / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline", "_diffusers_version": "0.36.0",
        "transformer": ["diffusers", "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"],
        "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
    }))  # fmt: skip
    (dest / "transformer" / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    wf = _i2va("wan-t2v-other")
    result, message = _run_failing(comfy, wf)
    assert result.status == "error", message
    assert str(result.error_details["node_id"]) == node_of(wf, "MovaLoader")
    assert "not a MOVA checkpoint" in message and "WanPipeline" in message, message
