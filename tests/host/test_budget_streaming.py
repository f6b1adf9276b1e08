"""Issue 16 item 1 and issue 17 item 5 through the real ComfyUI server: a Loader in `budget` mode whose plan
streams (ComfyUI runs every node inside `torch.inference_mode()` on its prompt-worker thread, where the block
streamer's copies used to fail with `RuntimeError: streamed copy failed` and leave a thread behind per run).

The checkpoint is the tiny one with a wider video expert (256 wide, 4 layers), so that its DiTs, not its VAE,
decide the budget; the budget is the middle of the range where its plan streams part of the blocks (computed
with the same planner the pack uses). The streamed run must give the resident run's mp4 byte for byte, and the
server must have as many threads afterwards as before.
"""
import shutil
import time
from pathlib import Path

import pytest

from host_workflows import TINY, load_api, node_of, patch_for_speed
from mova_model.checkpoint.tiny import TinySpec, write_tiny_checkpoint
from mova_model.memory.model_store import MemoryOptions
from mova_model.sampling.pipeline import MovaPipeline


def streaming_budget_gb(folder: Path) -> float:
    """Halfway between the smallest budget whose plan fits and the smallest whose plan keeps every block."""
    pipe = MovaPipeline.from_pretrained(folder, memory=MemoryOptions(mode="budget", vram_budget_gb=64.0))

    def plan(gb: float):
        return pipe.memory_plan(TINY["width"], TINY["height"], TINY["frames"], TINY["fps"], vram_bytes=gb * 1e9)

    def smallest(ok, lo: float, hi: float) -> float:
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if ok(mid) else (mid, hi)
        return hi

    resident = smallest(lambda gb: plan(gb).mode == "all-resident", 0.01, 64.0)
    budget = (resident + smallest(lambda gb: plan(gb).fits, 0.01, resident)) / 2
    assert plan(budget).mode == "streamed" and plan(budget).fits, plan(budget).format()
    return budget


@pytest.fixture(scope="module")
def streamable_checkpoint(comfy):
    name = "mova-streamable"
    dest = comfy.server.models_dir / "mova" / name
    write_tiny_checkpoint(dest, spec=TinySpec(video_dim=256, video_heads=2, video_layers=4))
    yield name
    shutil.rmtree(dest, ignore_errors=True)


def server_threads(comfy) -> int:
    return len(list(Path(f"/proc/{comfy.server.pid}/task").iterdir()))


def test_budget_mode_streams_under_comfyui_and_equals_resident(comfy, streamable_checkpoint):
    mova_checkpoint = streamable_checkpoint
    budget = streaming_budget_gb(comfy.server.models_dir / "mova" / mova_checkpoint)
    plain = patch_for_speed(load_api("i2va"), mova_checkpoint, seed=515, prefix="mova_test/budget_resident")
    resident = comfy.run(plain, timeout=300)
    assert resident.status == "success", resident.error
    threads = []
    for run in range(2):  # a leak shows as one more thread per run (lazily started threads exist after the first)
        log_offset = len(comfy.server.log_text())
        wf = patch_for_speed(load_api("i2va"), mova_checkpoint, seed=515 + run, prefix=f"mova_test/budget_streamed{run}")
        wf[node_of(wf, "MovaLoader")]["inputs"].update(memory_mode="budget", vram_budget_gb=budget)
        streamed = comfy.run(wf, timeout=300)
        assert streamed.status == "success", f"{streamed.error}\n{comfy.server.log_tail(30)}"
        log = comfy.server.log_text()[log_offset:]
        assert "decision          streamed   fits: yes" in log and "streamer on cpu" in log, log[-3000:]
        if run == 0:  # the resident run's seed
            (a,) = [p for p in resident.outputs if p.suffix == ".mp4"]
            (b,) = [p for p in streamed.outputs if p.suffix == ".mp4"]
            assert a.read_bytes() == b.read_bytes()
        time.sleep(0.5)
        threads.append(server_threads(comfy))
    assert threads[1] <= threads[0], f"a streamed run left a thread behind: {threads}"


def test_train_lora_refuses_a_budget_it_cannot_fit_with_the_plan(comfy, streamable_checkpoint, tmp_path):
    """Issue 16 item 3: the MOVA Train LoRA node plans the step with the Loader's memory mode (here a 0.2 GB
    budget, below the plan's reserve alone) and refuses with the plan's numbers before encoding any clip."""
    from training_clips import write_dataset

    dataset = write_dataset(tmp_path / "clips", count=1)
    wf = patch_for_speed(load_api("train_lora"), streamable_checkpoint, seed=3, prefix="mova_test/budget_train")
    wf[node_of(wf, "MovaLoader")]["inputs"].update(memory_mode="budget", vram_budget_gb=0.2)
    wf[node_of(wf, "MovaTrainingDataset")]["inputs"].update(folder=str(dataset), width=48, height=32, frames=9, fps=8.0)
    wf[node_of(wf, "MovaTrainLora")]["inputs"].update(lora_name="budget_refused", steps=2, rank=4, alpha=4.0)
    result = comfy.run(wf, timeout=300)
    assert result.status == "error", result.status
    message = result.error or ""
    assert "MOVA Train LoRA" in message and "does not fit in the memory available" in message, message
    assert "0.2 GB available" in message and "GB of VRAM" in message and "reserve" in message, message
    assert not (comfy.server.models_dir / "loras" / "mova" / "budget_refused.safetensors").exists()
    assert not (dataset / ".mova_cache").exists()  # refused before encoding
