"""The memory planner's decisions for the cards people own, as one table (planner estimates, not measurements).

For each VRAM budget x weight storage x frame count (360p, 640x352, text CFG, the released architecture), the
plan `python -m mova_model plan` would print, reduced to one row: decision, video blocks resident, denoise VRAM,
host RAM, bytes moved per step and the predicted step time. The README's GGUF table is this output; rerun it
after any change to the planner so the table stays the planner's own figures.

Usage (from the repository root): `python -m bench.plans [--ram 32] [--vram 12,16,24]
[--weights bf16,fp8,gguf:Q8_0,gguf:Q5_K,gguf:Q4_K] [--frames 97,193]`.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Sequence

from mova_model.memory.planner import plan_memory
from mova_model.memory.sizes import GB, Architecture, PlanInputs


def plan_row(vram_gb: float, ram_gb: float, weights: str, frames: int, size=(640, 352)) -> dict:
    """One plan reduced to the figures of a table row (bytes in GB, seconds)."""
    stored = "gguf" if weights.startswith("gguf:") else "bf16"
    inputs = PlanInputs(vram_bytes=vram_gb * GB, ram_bytes=ram_gb * GB, width=size[0], height=size[1],
                        frames=frames, fps=24.0, cfg_passes=2, weights=weights, stored=stored, mode="budget",
                        variant="360p")
    plan = plan_memory(inputs, Architecture.released(), log=False)
    video = [m for m in plan.modules if m.kind == "video"]
    return {"card": vram_gb, "frames": frames, "weights": weights.replace("gguf:", ""), "decision": plan.mode,
            "resident": f"{sum(m.resident for m in video)}/{len(video)}",
            "denoise_gb": plan.vram_phases.get("denoise", 0.0) / GB, "host_gb": plan.host_ram_bytes / GB,
            "moved_gb": plan.bytes_per_step / GB, "step_s": plan.step_s, "fits": plan.fits}


def table(rows: Sequence[dict]) -> str:
    lines = ["| card | frames | weights | decision | video blocks resident | denoise VRAM | host RAM | moved per step "
             "| step (plan) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        decision = r["decision"] if r["fits"] else f"{r['decision']} (does not fit)"
        moved = f"{r['moved_gb']:.1f} GB" if r["moved_gb"] else "0"
        lines.append(f"| {r['card']:g} GB | {r['frames']} | {r['weights']} | {decision} | {r['resident']} | "
                     f"{r['denoise_gb']:.1f} GB | {r['host_gb']:.1f} GB | {moved} | {r['step_s']:.1f} s |")
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plans", description=__doc__.splitlines()[0])
    parser.add_argument("--ram", type=float, default=32.0, help="host RAM budget, GB")
    parser.add_argument("--vram", default="12,16,24", help="VRAM budgets, GB (comma-separated)")
    parser.add_argument("--weights", default="bf16,gguf:Q8_0,gguf:Q5_K,gguf:Q4_K", help="weight storages")
    parser.add_argument("--frames", default="97,193", help="frame counts (4k+1)")
    args = parser.parse_args(argv)
    rows = [plan_row(float(v), args.ram, w, int(f)) for v in args.vram.split(",") for f in args.frames.split(",")
            for w in args.weights.split(",")]
    sys.stdout.write(table(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
