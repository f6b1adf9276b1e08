"""bench/gpu_check.py before any GPU runs it: its CPU-only exit, and every section's rows on the CPU self-test
(the CPU standing in for the GPU), plus the judgements (peaks against the plan, the expert switch, pinned bytes)
on numbers. The GPU figures themselves need a GPU: `python -m bench.gpu_check` there."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check, gpu_check_rows
from bench.gpu_check import Ctx, Row

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ctx(tmp_path, tiny_checkpoint_dir):
    """A CPU self-test context whose "synthetic" checkpoint is the tiny one (fast), outside ComfyUI conditions."""
    return Ctx(device=torch.device("cpu"), work=tmp_path, checkpoint=tiny_checkpoint_dir, steps=2,
               comfy_conditions=False)  # 2 steps: the second runs the low-noise expert


def _by_name(rows):
    return {r.name: r for r in rows}


def test_without_a_gpu_it_exits_with_a_clear_message():
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "no CUDA GPU here" in proc.stderr and "--device cpu" in proc.stderr and proc.stdout == ""


def test_equality_rows_cover_every_path(ctx):
    ctx.skip = ("compiled",)  # minutes of Inductor on a 2-core CPU; the row itself is the same code
    rows = _by_name(gpu_check.equality_rows(ctx))
    expected = {"conditioning (UMT5 + VAE encode)", "resident", "streamed, pin=all", "streamed, pin=ring",
                "fp8 storage", "fp8 _scaled_mm vs cast path", "compiled blocks", "attention sdpa (bf16)",
                "batched guidance (dual CFG, 3 rows)", "Ulysses, single rank", "decoding (Wan VAE + DAC)"}
    assert expected <= set(rows)
    assert rows["fp8 _scaled_mm vs cast path"].status == "SKIP" and "8.9" in rows["fp8 _scaled_mm vs cast path"].figure
    assert rows["compiled blocks"].status == "SKIP"
    passed = expected - {"fp8 _scaled_mm vs cast path", "compiled blocks"}
    assert {n: rows[n].status for n in passed} == {n: "PASS" for n in passed}, [rows[n] for n in passed]
    assert all("rel L2" in rows[n].figure for n in passed)


def test_streamed_rows_pass_under_comfyui_conditions(ctx):
    ctx.comfy_conditions = True
    ctx.skip = ("conditioning", "resident", "fp8", "compiled", "attention", "batched", "Ulysses", "decoding")
    rows = _by_name(gpu_check.equality_rows(ctx))
    assert rows["streamed, pin=all"].status == "PASS", rows["streamed, pin=all"].figure
    assert rows["streamed, pin=ring"].status == "PASS"


def test_a_failing_path_is_one_row_with_its_cause(ctx, monkeypatch):
    from mova_model.sampling.pipeline import MovaPipeline

    ctx.skip = ("conditioning", "streamed", "fp8", "compiled", "attention", "batched", "Ulysses", "decoding")
    real = MovaPipeline.sample

    def broken(self, *args, **kwargs):
        if self.device.type == "cpu" and self.memory.mode == "resident":
            try:
                raise KeyError("inner")
            except KeyError as inner:
                raise RuntimeError("outer") from inner
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MovaPipeline, "sample", broken)
    (row,) = [r for r in gpu_check.equality_rows(ctx) if r.name == "resident"]
    assert row.status == "FAIL" and row.figure == "error: RuntimeError: outer (caused by KeyError: 'inner')"


def test_memory_rows_run_and_skip_what_the_cpu_cannot_measure(ctx):
    rows = _by_name(gpu_check_rows.memory_rows(ctx))
    assert rows["streamed run (budget)"].status == "SKIP" and "every other module" in rows["streamed run (budget)"].figure
    for name in ("VRAM conditioning", "VRAM denoise (every step)", "VRAM VAE decode", "VRAM audio decode"):
        assert rows[name].status == "SKIP" and "plan" in rows[name].figure, rows[name]
    assert rows["pinned host memory while streaming"].status == "SKIP"
    switch = rows["expert switch"]
    assert switch.status == "SKIP" and "switch at step" in switch.figure, switch  # the run did switch experts


def test_training_row_runs_a_step(ctx):
    (row,) = gpu_check_rows.training_rows(ctx)
    assert row.status == "PASS" and "loss" in row.figure and "plan" in row.figure, row


def test_speed_and_two_gpu_rows_on_the_cpu(ctx):
    (speed,) = gpu_check_rows.speed_rows(ctx)
    assert speed.status == "SKIP" and speed.figure.startswith("self-test ran") and "identical=yes" in speed.figure
    assert [r.figure for r in gpu_check.multigpu_rows(ctx)] == ["skipped: no GPU (cpu self-test)"] * 2
    ctx.quick = True
    assert gpu_check_rows.speed_rows(ctx)[0].figure == "skipped: --quick"


def test_sections_run_in_their_own_processes_and_make_one_table(tmp_path, capsys):
    out = tmp_path / "rows.json"
    code = gpu_check.main(["--device", "cpu", "--only", "multigpu", "--work", str(tmp_path), "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "CPU self-test" in table and "0 passed, 0 failed, 2 skipped" in table
    rows = json.loads(out.read_text())["rows"]
    assert [(r["section"], r["status"]) for r in rows] == [("multigpu", "SKIP")] * 2


def test_a_section_whose_process_dies_is_one_failed_row(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")  # the section's process ends without its rows
    rows = gpu_check.run_sections(Ctx(device=torch.device("cpu"), work=tmp_path), ["speed"], isolate_argv=[])
    assert len(rows) == 1 and rows[0].status == "FAIL" and rows[0].name == "(section)"
    assert "ended with status 1" in rows[0].figure


# -- the judgements, on numbers -----------------------------------------------------------------------------


def test_peak_rows_compare_with_the_plan_and_the_budget():
    gb = gpu_check.GB
    assert gpu_check_rows.peak_row("m", "p", int(1.0 * gb), 1.0 * gb).status == "PASS"
    assert gpu_check_rows.peak_row("m", "p", int(1.04 * gb), 1.0 * gb).status == "PASS"  # allocator rounding
    assert gpu_check_rows.peak_row("m", "p", int(1.2 * gb), 1.0 * gb).status == "FAIL"
    assert gpu_check_rows.peak_row("m", "p", int(1.04 * gb), 1.0 * gb, budget=1.02 * gb).status == "FAIL"
    assert gpu_check_rows.peak_row("m", "p", None, 1.0 * gb).status == "SKIP"


def test_the_switch_row_fails_when_two_experts_are_alive():
    gb, expert = gpu_check.GB, 2.0 * gpu_check.GB
    one_at_a_time = [("video_dit", 5 * gb), ("video_dit", 4 * gb), ("video_dit_2", 5.1 * gb), ("video_dit_2", 4 * gb)]
    both = [("video_dit", 5 * gb), ("video_dit", 4 * gb), ("video_dit_2", 7 * gb), ("video_dit_2", 4 * gb)]
    assert gpu_check_rows.switch_row("m", one_at_a_time, expert, 6 * gb).status == "PASS"
    assert gpu_check_rows.switch_row("m", both, expert, 6 * gb).status == "FAIL"
    assert gpu_check_rows.switch_row("m", one_at_a_time[:2], expert, 6 * gb).status == "FAIL"  # never switched


def test_planned_pinned_bytes_follow_the_pin_mode(tiny_checkpoint_dir):
    from mova_model.sampling.pipeline import MovaPipeline

    pipe = MovaPipeline.from_pretrained(tiny_checkpoint_dir)
    plan = gpu_check.streamed_plan(pipe.memory_plan(**gpu_check.TINY_CLIP, vram_bytes=64e9), "all")
    streamed = [m.nbytes for m in plan.modules if not m.resident]
    assert plan.pinned_bytes == sum(streamed) > 0  # what the pinned-memory rows compare with
    assert dataclasses.replace(plan, pin="ring").pinned_bytes == 2 * max(streamed)
    assert gpu_check_rows.streaming_budget(pipe, gpu_check.TINY_CLIP, 4) is None  # kilobyte weights never stream


def test_the_host_workflow_is_the_shipped_i2va_in_budget_mode():
    wf = gpu_check_rows.host_workflow("gpu-check", 1.5, "cuda", dict(width=64, height=48, num_frames=5, video_fps=8.0),
                                      "first.png", 2)
    kinds = {node["class_type"]: node["inputs"] for node in wf.values()}
    assert kinds["MovaLoader"]["memory_mode"] == "budget" and kinds["MovaLoader"]["vram_budget_gb"] == 1.5
    assert kinds["MovaLoader"]["device"] == "cuda" and kinds["LoadImage"]["image"] == "first.png"
    assert kinds["MovaTextImageConditioner"]["frames"] == 5 and kinds["MovaJointSampler"]["steps"] == 2
