"""The shipped LoRA-training workflow in the real ComfyUI frontend (headless Chromium): both formats load
with no missing or red node, and the tiny version trains and samples when queued from the page."""
import pytest

from host_fixtures import REPO_ROOT
from host_workflows import API_DIR, load_api, node_of, output_files, patch_for_speed, video_files
from mova_model.network.lora import load_lora
from training_clips import write_dataset

FILES = [API_DIR / "mova_train_lora_api.json", REPO_ROOT / "workflows" / "mova_train_lora.json"]
TRAIN = dict(width=48, height=32, frames=9, fps=8.0)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_training_workflow_loads_without_missing_or_red_nodes(frontend, path):
    report = frontend.check(path, "load_" + path.stem, timeout=90)
    assert report["missing_node_types"] == [] and report["errored_nodes"] == [], report
    assert report["page_errors"] == [], report
    assert report["node_count"] == len(load_api("train_lora")), report
    assert report["exit_code"] == 0, report


def test_tiny_training_runs_when_queued_from_the_page(comfy, mova_checkpoint, frontend, tmp_path):
    dataset = write_dataset(tmp_path / "clips", count=1)
    wf = patch_for_speed(load_api("train_lora"), mova_checkpoint, seed=8080, prefix="mova_test/browser_train")
    wf[node_of(wf, "MovaTrainingDataset")]["inputs"].update(folder=str(dataset), **TRAIN)
    wf[node_of(wf, "MovaTrainLora")]["inputs"].update(lora_name="browser_trained", steps=2, rank=4, alpha=4.0,
                                                      weights="as stored", save_every=0, val_every=0)
    before = video_files(output_files(comfy))
    report = frontend.check(wf, "queued_train_lora", queue=True, timeout=600)
    assert report["missing_node_types"] == [] and report["errored_nodes"] == [], report
    assert report["queue"]["status"] == "success", report
    assert node_of(wf, "MovaMux") in report["queue"]["executed_nodes"], report
    assert len(video_files(output_files(comfy)) - before) == 1
    assert load_lora(comfy.server.models_dir / "loras" / "mova" / "browser_trained.safetensors").rank == 4
