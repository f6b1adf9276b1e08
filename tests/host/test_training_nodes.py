"""LoRA training through a real ComfyUI 0.3.75 server: the dataset and train nodes' schemas, the shipped
training workflow (train on a small synthetic dataset, then sample with the new LoRA) queued over HTTP,
a bad dataset answered with a message, and an interrupt that keeps the last completed step on disk."""
import copy

import pytest

from host_workflows import TINY, load_api, node_of, patch_for_speed, text_of
from mova_model.network.lora import load_lora
from mova_model.training.files import read_lora_metadata
from training_clips import write_dataset

TRAIN = dict(width=48, height=32, frames=9, fps=8.0)


def patch_training(wf: dict, checkpoint: str, dataset, lora_name: str, steps: int = 2, seed: int = 7) -> dict:
    wf = patch_for_speed(wf, checkpoint, seed=seed, prefix=f"mova_test/{lora_name}")
    wf[node_of(wf, "MovaTrainingDataset")]["inputs"].update(folder=str(dataset), **TRAIN)
    wf[node_of(wf, "MovaTrainLora")]["inputs"].update(
        lora_name=lora_name, steps=steps, rank=4, alpha=4.0, learning_rate=0.01, weights="as stored",
        save_every=1, val_every=0, seed=seed)
    return wf


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("host_train") / "clips", count=2)


def test_training_nodes_are_listed_with_their_types(comfy):
    info = comfy.object_info()
    data = info["MovaTrainingDataset"]
    assert data["category"] == "MOVA/training" and data["output"] == ["MOVA_DATASET", "STRING"]
    train = info["MovaTrainLora"]
    assert train["output"] == ["MOVA_MODEL", "STRING", "IMAGE", "STRING"]
    required = train["input"]["required"]
    assert required["model"][0] == "MOVA_MODEL" and required["dataset"][0] == "MOVA_DATASET"


def test_training_workflow_trains_saves_and_samples_with_the_lora(comfy, mova_checkpoint, dataset):
    wf = patch_training(load_api("train_lora"), mova_checkpoint, dataset, "host_trained")
    result = comfy.run(wf, timeout=900)
    assert result.status == "success", f"{result.error}\n{comfy.server.log_tail(40)}"
    train = node_of(wf, "MovaTrainLora")
    progress = [(e["data"]["value"], e["data"]["max"]) for e in result.events
                if e["type"] == "progress" and str(e["data"].get("node")) == train]
    assert (1, 2) in progress and (2, 2) in progress
    summary = text_of(result, "6")
    assert "trained: steps=2" in summary and "lora=mova/host_trained.safetensors" in summary, summary
    assert "2 clip(s) usable" in text_of(result, "4")
    lora_file = comfy.server.models_dir / "loras" / "mova" / "host_trained.safetensors"
    assert read_lora_metadata(lora_file)["steps"] == "2" and load_lora(lora_file).rank == 4
    assert any(p.suffix == ".png" for p in result.outputs)  # the loss curve
    assert [p for p in result.outputs if p.suffix == ".mp4"]
    options = comfy.object_info("MovaLoraLoader")["MovaLoraLoader"]["input"]["required"]["lora_name"]
    choices = options[0] if isinstance(options[0], list) else options[1].get("options", [])
    assert "mova/host_trained.safetensors" in choices


def test_an_empty_dataset_is_a_clear_error_and_writes_nothing(comfy, mova_checkpoint, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    wf = patch_training(load_api("train_lora"), mova_checkpoint, empty, "never_written")
    result = comfy.run(wf, timeout=300)
    assert result.status == "error" and "no usable clip" in (result.error or ""), result.error
    assert not (comfy.server.models_dir / "loras" / "mova" / "never_written.safetensors").exists()


def test_interrupt_keeps_the_last_completed_step(comfy, mova_checkpoint, dataset):
    wf = patch_training(load_api("train_lora"), mova_checkpoint, dataset, "host_interrupted", steps=40, seed=99)
    result = comfy.run(copy.deepcopy(wf), timeout=600, interrupt_after_progress=2)
    assert result.status == "interrupted", f"{result.status}: {result.error}"
    lora_file = comfy.server.models_dir / "loras" / "mova" / "host_interrupted.safetensors"
    steps = int(read_lora_metadata(lora_file)["steps"])
    assert 1 <= steps < 40
    assert not [p for p in lora_file.parent.iterdir() if p.name.endswith(".tmp")]
