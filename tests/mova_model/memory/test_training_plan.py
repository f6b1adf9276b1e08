"""The training plan (`plan --train`): LoRA sizes agree with the trainer, and the 24/16/12 GB 360p plans."""

import subprocess
import sys

from mova_model.checkpoint.folder import MovaCheckpoint, build_meta_module
from mova_model.memory.sizes import GB, Architecture, PlanInputs
from mova_model.memory.training_plan import lora_params, plan_training
from mova_model.training.targets import LoraTargets
from mova_model.training.trainable_lora import TrainableLora

COMPONENTS = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")


def test_lora_parameter_count_matches_the_trainer(tiny_checkpoint_dir):
    ck = MovaCheckpoint.open(tiny_checkpoint_dir)
    arch = Architecture.from_configs(ck.configs)
    for targets in ("official", "attention"):
        metas = {n: build_meta_module(n, ck.config(n)) for n in COMPONENTS}
        lora = TrainableLora.for_modules(metas, 4, 4.0, LoraTargets.parse(targets))
        assert sum(p.numel() for p in lora.lora_parameters()) == lora_params(arch, 4, COMPONENTS, targets)


def test_360p_plans_for_24_16_12_gb_cards():
    def plan(vram, frames, experts="high"):
        inputs = PlanInputs(vram_bytes=vram * GB, ram_bytes=48 * GB, frames=frames, cfg_passes=1, weights="fp8",
                            mode="budget")
        return plan_training(inputs, rank=16, experts=experts)

    full = plan(24, 193)
    assert full.fits and full.vram_peak <= 24 * GB and full.host_peak <= 48 * GB
    assert not plan(16, 193).fits and plan(16, 97).fits and plan(12, 49).fits
    assert plan(24, 193, "both").host_peak > full.host_peak  # both experts' weights in host RAM


def test_plan_train_cli(repo_root):
    proc = subprocess.run([sys.executable, "-m", "mova_model", "plan", "--train", "--vram", "24", "--ram", "48",
                           "--fp8", "--experts", "high"], capture_output=True, text=True, cwd=repo_root, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "MOVA LoRA training plan" in proc.stdout and "fits: yes" in proc.stdout and "official low-resource" in proc.stdout
