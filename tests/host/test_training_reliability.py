"""MOVA Train LoRA through a real ComfyUI 0.3.75 server, where issue 17 found it failing:

- cancel while the dataset is encoded stops within one clip (it used to encode every clip first);
- an existing LoRA is never replaced unless `overwrite` is on, also not by a cancelled run: the new one gets
  the next free name and the summary says so; re-queueing a cancelled run continues it (`resume`);
- training state files are not offered by the MOVA LoRA Loader;
- a read-only dataset folder trains, its clips cached under ComfyUI's temp folder; an unwritable
  `cache_folder` is named;
- a caption that is not UTF-8 and a 300-character lora_name are named before any training.
"""
import time

import pytest
import torch
from safetensors.torch import save_file

from host_workflows import load_api, text_of
from mova_model.training.files import read_lora_metadata
from read_only import read_only_folder
from training_clips import write_clip, write_dataset

TRAIN = dict(width=48, height=32, frames=9, fps=8.0)
TRAIN_NODE = "3"
SUMMARY_NODE = "6"
NAME_NODE = "11"


def train_only(checkpoint: str, dataset, lora_name: str, steps: int = 2, seed: int = 7, **inputs) -> dict:
    """The shipped training workflow without its sampling half: Loader -> Dataset -> Train LoRA -> summaries."""
    wf = {k: v for k, v in load_api("train_lora").items() if k in ("1", "2", TRAIN_NODE, "4", SUMMARY_NODE)}
    wf[NAME_NODE] = {"class_type": "PreviewAny", "inputs": {"source": [TRAIN_NODE, 1]}}
    wf["1"]["inputs"]["checkpoint"] = checkpoint
    wf["2"]["inputs"].update(folder=str(dataset), **TRAIN)
    wf[TRAIN_NODE]["inputs"].update(lora_name=lora_name, steps=steps, rank=4, alpha=4.0, learning_rate=0.01,
                                    weights="as stored", save_every=1, val_every=0, seed=seed, **inputs)
    return wf


def train_progress(result) -> list:
    return [e["data"]["value"] for e in result.events
            if e["type"] == "progress" and str(e["data"].get("node")) == TRAIN_NODE]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("host_train_rel") / "clips", count=2)


@pytest.fixture()
def lora_dir(comfy):
    folder = comfy.server.models_dir / "loras" / "mova"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_cancel_while_encoding_the_dataset_stops_within_one_clip(comfy, mova_checkpoint, tmp_path):
    data = write_dataset(tmp_path / "twelve", count=12)
    cache = data / ".mova_cache"
    entries = lambda: len(list(cache.glob("*.safetensors"))) if cache.is_dir() else 0  # noqa: E731
    stamps = {}

    def on_event(event):
        data_ = event.get("data") or {}
        if event["type"] == "executing" and str(data_.get("node")) == TRAIN_NODE and "interrupt" not in stamps:
            deadline = time.monotonic() + 300
            while entries() < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            stamps["interrupt"], stamps["encoded"] = time.monotonic(), entries()
            comfy.interrupt()
        elif event["type"] in ("execution_interrupted", "execution_success", "execution_error"):
            stamps["end"] = time.monotonic()

    result = comfy.run(train_only(mova_checkpoint, data, "cancel_encoding", steps=2), timeout=600, on_event=on_event)
    assert result.status == "interrupted", f"{result.status}: {result.error}"
    after = entries()
    print(f"\ninterrupt after {stamps['encoded']} of 12 clips -> end in {stamps['end'] - stamps['interrupt']:.2f} s, "
          f"{after} clips encoded")
    assert after <= stamps["encoded"] + 2 and after < 12, (stamps, after)
    assert train_progress(result) == []  # no training step ran


def test_an_existing_lora_is_kept_and_a_cancelled_run_continues_when_requeued(comfy, mova_checkpoint, dataset,
                                                                              lora_dir):
    mine = lora_dir / "keep.safetensors"
    save_file({"video_dit.blocks.0.self_attn.q.lora_A.weight": torch.ones(8, 16)}, str(mine), {"note": "my own"})
    original = mine.read_bytes()
    wf = train_only(mova_checkpoint, dataset, "keep", steps=6, seed=3)

    cancelled = comfy.run(wf, timeout=600, interrupt_after_progress=2)
    assert cancelled.status == "interrupted", f"{cancelled.status}: {cancelled.error}"
    assert mine.read_bytes() == original, "a cancelled run replaced the user's LoRA"
    second = lora_dir / "keep_2.safetensors"
    saved = int(read_lora_metadata(second)["steps"])
    assert 1 <= saved < 6

    resumed = comfy.run(wf, timeout=600)  # the same workflow queued again: continues keep_2
    assert resumed.status == "success", resumed.error
    summary = text_of(resumed, SUMMARY_NODE)
    assert f"continued the unfinished training of keep_2.safetensors from its step {saved}" in summary, summary
    assert text_of(resumed, NAME_NODE) == "mova/keep_2.safetensors"
    assert min(train_progress(resumed)) >= saved
    assert read_lora_metadata(second)["steps"] == "6" and mine.read_bytes() == original

    fresh = comfy.run(train_only(mova_checkpoint, dataset, "keep", steps=2, seed=4), timeout=600)
    assert fresh.status == "success", fresh.error
    summary = text_of(fresh, SUMMARY_NODE)
    assert "keep.safetensors already exists and was kept" in summary and "keep_3.safetensors" in summary, summary
    assert text_of(fresh, NAME_NODE) == "mova/keep_3.safetensors" and mine.read_bytes() == original

    replaced = comfy.run(train_only(mova_checkpoint, dataset, "keep", steps=2, seed=5, overwrite=True), timeout=600)
    assert replaced.status == "success", replaced.error
    assert "replaced the existing keep.safetensors (overwrite is on)" in text_of(replaced, SUMMARY_NODE)
    assert read_lora_metadata(mine)["steps"] == "2"


def test_training_state_files_are_not_offered_as_loras(comfy, mova_checkpoint, dataset, lora_dir):
    (lora_dir / "older_run.state.safetensors").write_bytes(b"a state file named as earlier versions did")
    result = comfy.run(train_only(mova_checkpoint, dataset, "listed", steps=1), timeout=600)
    assert result.status == "success", result.error
    assert (lora_dir / "listed.train-state").is_file()
    options = comfy.object_info("MovaLoraLoader")["MovaLoraLoader"]["input"]["required"]["lora_name"]
    choices = options[0] if isinstance(options[0], list) else options[1].get("options", [])
    assert "mova/listed.safetensors" in choices
    assert not [c for c in choices if "state" in c], choices


def test_a_read_only_dataset_trains_with_its_cache_in_comfyuis_temp_folder(comfy, mova_checkpoint, tmp_path):
    data = write_dataset(tmp_path / "read_only", count=1)
    with read_only_folder(data):
        result = comfy.run(train_only(mova_checkpoint, data, "from_read_only", steps=1), timeout=600)
        assert result.status == "success", result.error
        assert not (data / ".mova_cache").exists()
    temp_cache = comfy.server.base / "temp" / "mova_training_cache"
    summary = text_of(result, SUMMARY_NODE)
    assert f"the encoded clips are cached in {temp_cache}" in summary, summary
    assert len(list(temp_cache.glob("*.safetensors"))) >= 1

    refused = comfy.run(train_only(mova_checkpoint, data, "never", steps=1, cache_folder="/proc/mova_cache"),
                        timeout=300)
    assert refused.status == "error" and "cache_folder /proc/mova_cache: cannot write" in refused.error, refused.error
    assert train_progress(refused) == []


def test_a_latin1_caption_and_a_300_character_name_are_named_before_training(comfy, mova_checkpoint, dataset,
                                                                             tmp_path, lora_dir):
    latin = tmp_path / "latin"
    latin.mkdir()
    write_clip(latin / "clip.mp4", caption=None)
    (latin / "clip.txt").write_bytes("café au lait".encode("latin-1"))
    result = comfy.run(train_only(mova_checkpoint, latin, "never_latin", steps=1), timeout=300)
    assert result.status == "error", result.status
    assert result.error_details["exception_type"].rsplit(".", 1)[-1] == "ValueError", result.error_details
    assert "clip.mp4: caption clip.txt is not UTF-8 text (byte 0xe9 at offset 3)" in result.error, result.error

    result = comfy.run(train_only(mova_checkpoint, dataset, "n" * 300, steps=1), timeout=300)
    assert result.status == "error" and "lora_name: at most 120 characters, got 300" in result.error, result.error
    assert train_progress(result) == []
    assert not [p for p in lora_dir.iterdir() if p.name.startswith("nnnn")]
