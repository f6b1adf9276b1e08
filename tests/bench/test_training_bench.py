"""bench/training.py --gpu: each VRAM budget runs what the training plan decides for it (it used to force
streaming, so its 12/16/24 GB rows were one and the same run). The decisions are made on the CPU from the
configs; the GPU run itself needs a GPU (`python -m bench.gpu_check` runs a training step under 12 GB)."""
import argparse

from bench.training import budget_decisions
from training_clips import streaming_budget_gb


def test_budgets_get_the_plans_decision(tiny_checkpoint_dir):
    args = argparse.Namespace(size=(160, 160), frames=17, fps=8.0)
    # the tiny checkpoint's blocks are small beside the reserve: it streams only in a narrow band of budgets
    streaming = streaming_budget_gb(tiny_checkpoint_dir, "both", clip=(160, 160, 17, 8.0), rank=16)
    small, large = budget_decisions(tiny_checkpoint_dir, args, budgets=(streaming, 24.0))
    assert small["streamed"] and not large["streamed"]
    assert 0 < small["plan_vram_gb"] and 0 < large["plan_vram_gb"] <= 24.0
