"""bench/plans.py: one table row per plan, the planner's own figures (the README's GGUF plan table)."""
from bench.plans import main, plan_row


def test_rows_follow_the_planner():
    small = plan_row(12, 32, "bf16", 193)
    quantized = plan_row(24, 32, "gguf:Q4_K", 193)
    assert small["decision"] == "streamed" and small["fits"] and small["moved_gb"] > 0
    assert quantized["decision"] == "all-resident" and quantized["resident"] == "40/40" and quantized["moved_gb"] == 0
    assert small["denoise_gb"] <= 12.0 and quantized["denoise_gb"] <= 24.0


def test_table_has_a_row_per_plan(capsys):
    assert main(["--vram", "12,24", "--weights", "bf16,gguf:Q8_0", "--frames", "97"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "GB |" in line]
    assert len(rows) == 4 and rows[0].startswith("| 12 GB | 97 | bf16 |")
