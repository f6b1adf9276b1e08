"""The memory, training, host and speed sections of `bench/gpu_check.py` (see its docstring for what each row
checks). Every figure that needs device-memory statistics is None on the CPU self-test, and its row is then
skipped with the plan's figure shown, so the code that measures still runs."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from bench.gpu_check import (GB, NEGATIVE, PROMPT, SEED, Ctx, Row, comfy_like, error_figure, free_device,
                             gradient_image, judge)

SYN_CLIP = dict(width=320, height=192, num_frames=17, video_fps=24.0)
SELFTEST_CLIP = dict(width=64, height=64, num_frames=5, video_fps=24.0)
PEAK_MARGIN = 1.05
"""Measured VRAM may exceed the plan's figure by 5 % (allocator rounding) before a row fails."""
PINNED_SLACK = 64 * 2 ** 20
SWITCH_EXPERT_SHARE = 0.5
"""The switch step may exceed the other steps' peak by at most this share of one expert's weights (two experts
alive at once exceed it by a whole expert)."""
SPEED_GOAL = 1.15


class HostRegistrations:
    """Bytes page-locked in place with `cudaHostRegister` (and not yet unregistered) by this process, counted by
    wrapping the two calls of `torch.cuda.cudart()` once: pinned memory that torch's own statistics do not see."""

    _installed: Optional["HostRegistrations"] = None

    def __init__(self) -> None:
        self.live: Dict[int, int] = {}

    @classmethod
    def install(cls) -> "HostRegistrations":
        if cls._installed is None:
            counter, cudart = cls(), torch.cuda.cudart()
            register, unregister = cudart.cudaHostRegister, cudart.cudaHostUnregister

            def counted_register(ptr, nbytes, flags):
                code = register(ptr, nbytes, flags)
                if int(getattr(code, "value", code)) == 0:
                    counter.live[int(ptr)] = int(nbytes)
                return code

            def counted_unregister(ptr):
                code = unregister(ptr)
                counter.live.pop(int(ptr), None)
                return code

            cudart.cudaHostRegister, cudart.cudaHostUnregister = counted_register, counted_unregister
            cls._installed = counter
        return cls._installed

    @property
    def nbytes(self) -> int:
        return sum(self.live.values())


class DeviceStats:
    """Peak and current device memory and pinned host memory of this process; None on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.registrations = HostRegistrations.install() if self.cuda else None

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def allocated(self) -> Optional[int]:
        return torch.cuda.memory_allocated(self.device) if self.cuda else None

    def peak(self) -> Optional[int]:
        """Peak bytes the caching allocator had reserved from the device since the last reset (what the card
        must really hold, fragmentation included; the CUDA context comes on top)."""
        return torch.cuda.max_memory_reserved(self.device) if self.cuda else None

    def pinned(self) -> Optional[int]:
        """Pinned host bytes: torch's caching host allocator (rounded blocks, cached ones included) plus ranges
        page-locked in place with `cudaHostRegister`."""
        if not self.cuda:
            return None
        return int(torch.cuda.host_memory_stats().get("allocated_bytes.current", 0)) + self.registrations.nbytes

    def cap(self, nbytes: float) -> None:
        """Make allocations past `nbytes` (plus what is allocated now) fail, as on a card of that size."""
        if self.cuda:
            total = torch.cuda.get_device_properties(self.device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, (nbytes + torch.cuda.memory_allocated(self.device))
                                                           / total), self.device)


def clip_of(ctx: Ctx) -> dict:
    return dict(SYN_CLIP if ctx.cuda else SELFTEST_CLIP)


def streaming_budget(pipe, clip: dict, steps: int) -> Optional[float]:
    """The smallest VRAM budget (bytes, on a 2^(1/4) grid) at which the planner streams and the clip fits,
    +10 %: most of the video expert streams, as on a 12 GB card at 360p."""
    for k in range(0, 64):
        budget = 1e8 * 2 ** (k / 4)
        plan = pipe.memory_plan(**clip, steps=steps, vram_bytes=budget)
        if plan.fits and plan.mode == "streamed":
            larger = pipe.memory_plan(**clip, steps=steps, vram_bytes=budget * 1.1)
            return budget * 1.1 if larger.fits and larger.mode == "streamed" else budget
        if plan.fits:  # all-resident already: the weights are too small to need streaming
            return None
    return None


def peak_row(section: str, name: str, measured: Optional[int], planned: float, budget: Optional[float] = None) -> Row:
    goal = f"<= plan x {PEAK_MARGIN:g}" + (f" and <= budget {budget / GB:.2f} GB" if budget else "")
    if measured is None:
        return Row(section, name, "SKIP", f"plan {planned / GB:.3f} GB; no device-memory statistics on the CPU", goal)
    limit = min(planned * PEAK_MARGIN, budget) if budget else planned * PEAK_MARGIN
    return Row(section, name, judge(measured, limit),
               f"reserved {measured / GB:.3f} GB, plan {planned / GB:.3f} GB ({measured / max(planned, 1.0):.2f}x)", goal)


def switch_row(section: str, steps: list, expert_bytes: float, plan_figure: float) -> Row:
    """steps: [(expert name, peak bytes or None)] per step, in order."""
    goal = f"switch step <= other steps + {SWITCH_EXPERT_SHARE:g} x one expert"
    switch = next((i for i, (expert, _) in enumerate(steps) if expert == "video_dit_2"), None)
    if switch is None:
        return Row(section, "expert switch", "FAIL", "the run never switched to the low-noise expert", goal)
    if steps[switch][1] is None:
        return Row(section, "expert switch", "SKIP", f"switch at step {switch + 1}; no device-memory statistics", goal)
    others = max(p for i, (_, p) in enumerate(steps) if i != switch)
    at = steps[switch][1]
    figure = (f"switch step {at / GB:.3f} GB, other steps {others / GB:.3f} GB, one expert {expert_bytes / GB:.3f} GB, "
              f"plan {plan_figure / GB:.3f} GB")
    return Row(section, "expert switch", judge(at, others + SWITCH_EXPERT_SHARE * expert_bytes), figure, goal)


def _phase_run(ctx: Ctx, pipe, clip: dict, stats: DeviceStats, plan=None) -> Dict[str, object]:
    """Conditioning, sampling (peak per step), VAE decode and audio decode of one clip, each peak measured from
    the same baseline; pinned host bytes after every step and after the run."""
    from mova_model.sampling.guidance import GuidanceConfig

    out: Dict[str, object] = {"steps": [], "pinned": []}
    free_device(ctx)
    base = stats.allocated() or 0  # what others hold (the cache emptied): the phases are measured above it
    rel = lambda peak: None if peak is None else peak - base  # noqa: E731

    stats.reset_peak()
    cond = comfy_like(lambda: pipe.prepare_conditioning(PROMPT, NEGATIVE, gradient_image(), **clip), ctx.comfy_conditions)
    out["conditioning"] = rel(stats.peak())

    def on_step(info) -> None:
        out["steps"].append((info.expert, rel(stats.peak())))
        out["pinned"].append(stats.pinned())
        stats.reset_peak()

    free_device(ctx)
    stats.reset_peak()
    latents = comfy_like(lambda: pipe.sample(cond, seed=SEED, steps=ctx.steps, guidance=GuidanceConfig(text_scale=5.0),
                                             callback=on_step, plan=plan), ctx.comfy_conditions)
    out["plan"] = pipe.last_plan
    free_device(ctx)
    out["pinned_after"] = stats.pinned()
    stats.reset_peak()
    comfy_like(lambda: pipe.decode_video(latents), ctx.comfy_conditions)
    out["VAE decode"] = rel(stats.peak())
    free_device(ctx)
    stats.reset_peak()
    comfy_like(lambda: pipe.decode_audio(latents), ctx.comfy_conditions)
    out["audio decode"] = rel(stats.peak())
    pipe.release_all()
    free_device(ctx)
    return out


def memory_rows(ctx: Ctx) -> List[Row]:
    from mova_model.memory.model_store import MemoryOptions
    from mova_model.sampling.pipeline import MovaPipeline

    section, rows = "memory", []
    folder, clip = ctx.synthetic(), clip_of(ctx)
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    probe = MovaPipeline.from_pretrained(folder, device=ctx.device, dtype=dtype)
    budget = streaming_budget(probe, clip, ctx.steps)
    stats = DeviceStats(ctx.device)
    pinned_before = stats.pinned()
    forced = None
    if budget is None:  # weights too small for the planner to stream (tiny widths): stream every other module
        from bench.gpu_check import streamed_plan

        pipe = MovaPipeline.from_pretrained(folder, device=ctx.device, dtype=dtype)
        plan = forced = streamed_plan(pipe.memory_plan(**clip, steps=ctx.steps, vram_bytes=64e9), "all")
    else:
        pipe = MovaPipeline.from_pretrained(folder, device=ctx.device, dtype=dtype,
                                            memory=MemoryOptions(mode="budget", vram_budget_gb=budget / GB))
        plan = pipe.memory_plan(**clip, steps=ctx.steps)
    start = time.perf_counter()
    stats.cap(budget if budget is not None else float("inf"))
    try:
        run = _phase_run(ctx, pipe, clip, stats, plan=forced)
    except Exception as exc:  # noqa: BLE001 - the switch rows below still run
        run = exc
    finally:
        stats.cap(float("inf"))
    seconds = time.perf_counter() - start
    counts = plan.counts().get("video", (0, 0))
    where = f"budget {budget / GB:.2f} GB" if budget is not None else "no budget streams these widths: every other module"
    status = "PASS" if plan.mode == "streamed" and budget is not None else ("SKIP" if not ctx.cuda else "FAIL")
    rows.append(Row(section, "streamed run (budget)", status,
                    f"{where}: video blocks {counts[0]} resident / {counts[1]} streamed, pin={plan.pin}, "
                    f"{clip['width']}x{clip['height']}x{clip['num_frames']}", "the planner streams", seconds))
    if isinstance(run, Exception):
        rows.append(Row(section, "streamed run: conditioning, sampling, decoding", "FAIL", error_figure(run)))
    else:
        rows += _phase_rows(section, run, plan, budget, pinned_before)
    pipe = probe = None
    free_device(ctx)
    rows.append(_switch(ctx, folder, clip, dtype, stats))
    return rows


def _phase_rows(section: str, run: dict, plan, budget: Optional[float], pinned_before: Optional[int]) -> List[Row]:
    rows = []
    phases = plan.vram_phases
    rows.append(peak_row(section, "VRAM conditioning", run["conditioning"],
                         max(phases.get("text encode", 0.0), phases.get("VAE encode", 0.0)), budget))
    denoise = [p for _, p in run["steps"]]
    rows.append(peak_row(section, "VRAM denoise (every step)", None if None in denoise else max(denoise),
                         phases.get("denoise", 0.0), budget))
    for phase in ("VAE decode", "audio decode"):
        rows.append(peak_row(section, f"VRAM {phase}", run[phase], phases.get(phase, 0.0), budget))
    planned = run["plan"].pinned_bytes
    during = [p for p in run["pinned"] if p is not None]
    goal = "<= plan x 1.1 + 64 MiB"
    if not during:
        rows.append(Row(section, "pinned host memory while streaming", "SKIP",
                        f"plan {planned / GB:.3f} GB (pin={run['plan'].pin}); no pinned-memory statistics on the CPU", goal))
        rows.append(Row(section, "pinned host memory after the run", "SKIP", "no pinned-memory statistics on the CPU",
                        "<= before + 64 MiB"))
    else:
        held = max(during) - (pinned_before or 0)
        rows.append(Row(section, "pinned host memory while streaming", judge(held, planned * 1.1 + PINNED_SLACK),
                        f"measured {held / GB:.3f} GB, plan {planned / GB:.3f} GB (pin={run['plan'].pin})", goal))
        after = run["pinned_after"] - (pinned_before or 0)
        rows.append(Row(section, "pinned host memory after the run", judge(after, PINNED_SLACK),
                        f"{after / GB:.3f} GB still pinned", "<= before + 64 MiB"))
    return rows


def _switch(ctx: Ctx, folder: Path, clip: dict, dtype: torch.dtype, stats: DeviceStats) -> Row:
    """The expert switch with everything resident: one expert's weights on the device at a time."""
    from mova_model.memory.model_store import MemoryOptions
    from mova_model.sampling.pipeline import MovaPipeline

    start = time.perf_counter()
    try:
        pipe = MovaPipeline.from_pretrained(folder, device=ctx.device, dtype=dtype, memory=MemoryOptions(mode="resident"))
        run = _phase_run(ctx, pipe, clip, stats)
        expert = float(sum(f.stat().st_size for f in (Path(folder) / "video_dit_2").glob("*.safetensors")))
        row = switch_row("memory", run["steps"], expert, run["plan"].vram_phases.get(
            "expert switch", run["plan"].vram_phases.get("denoise", 0.0)))
    except Exception as exc:  # noqa: BLE001
        row = Row("memory", "expert switch", "FAIL", error_figure(exc))
    row.seconds = time.perf_counter() - start
    return row


def training_rows(ctx: Ctx) -> List[Row]:
    from bench.training import budget_decisions, run_steps

    section, budget = "training", 12.0
    folder = ctx.synthetic()
    size, frames = ((640, 352), 49) if ctx.cuda else ((64, 64), 5)
    args = argparse.Namespace(size=size, frames=frames, fps=24.0, rank=16, steps=1)
    decision = budget_decisions(folder, args, budgets=(budget,))[0]
    stats = DeviceStats(ctx.device)
    start = time.perf_counter()
    stats.cap(budget * GB)
    try:
        result = run_steps(folder, "planned", args, device=str(ctx.device), budget_gb=budget)
    finally:
        stats.cap(float("inf"))
    seconds = time.perf_counter() - start
    loss = result["losses"][-1]
    how = "streamed" if result["streamed"] else "resident"
    goal = "finite loss; VRAM <= 12 GB and <= plan x 1.05"
    if "vram_peak" not in result:
        return [Row(section, "LoRA step, 12 GB budget", "PASS" if math.isfinite(loss) else "FAIL",
                    f"{how} (plan {decision['plan_vram_gb']:.2f} GB), loss {loss:.4f}; no device-memory statistics",
                    goal, seconds)]
    peak = result["vram_peak"]
    ok = math.isfinite(loss) and peak <= min(budget * GB, decision["plan_vram_gb"] * GB * PEAK_MARGIN)
    return [Row(section, "LoRA step, 12 GB budget", "PASS" if ok else "FAIL",
                f"{how}, measured {peak / GB:.2f} GB, plan {decision['plan_vram_gb']:.2f} GB, step "
                f"{min(result['step_s']):.2f} s, loss {loss:.4f} ({size[0]}x{size[1]}x{frames})", goal, seconds)]


def host_workflow(checkpoint: str, budget_gb: float, device: str, clip: dict, image: str, steps: int) -> dict:
    """The shipped I2VA API workflow with the Loader in budget mode on `device` and a small clip."""
    workflow = json.loads((Path(__file__).resolve().parents[1] / "workflows" / "api" / "mova_i2va_api.json").read_text())
    for node in workflow.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "MovaLoader":
            inputs.update(checkpoint=checkpoint, memory_mode="budget", vram_budget_gb=budget_gb, device=device)
        elif kind == "MovaTextImageConditioner":
            inputs.update(width=clip["width"], height=clip["height"], frames=clip["num_frames"],
                          fps=float(clip["video_fps"]))
        elif kind == "MovaJointSampler":
            inputs.update(steps=steps, seed=SEED)
        elif kind == "MovaMux":
            inputs.update(fps=float(clip["video_fps"]), filename_prefix="gpu_check/i2va")
        elif kind == "LoadImage":
            inputs["image"] = image
    return workflow


def host_rows(ctx: Ctx) -> List[Row]:
    from mova_model.sampling.pipeline import MovaPipeline

    section, name = "host", "streamed I2VA workflow in ComfyUI"
    venv = Path(os.environ.get("MOVA_HOST_VENV") or sys.prefix)
    goal = "success, an mp4, the log shows blocks streamed"
    if not (venv / "comfyui" / "main.py").is_file():
        return [Row(section, name, "SKIP", f"skipped: no ComfyUI host in {venv} (make venv installs one)", goal)]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import comfy_host

    folder, clip = ctx.synthetic(), clip_of(ctx)
    probe = MovaPipeline.from_pretrained(folder, device=ctx.device, dtype=torch.bfloat16 if ctx.cuda else torch.float32)
    budget = streaming_budget(probe, clip, 2)
    if budget is None:
        return [Row(section, name, "FAIL", "the planner finds no streaming budget for this checkpoint", goal)]
    budget_gb = max(1.0, math.ceil(budget / GB * 2) / 2)  # the Loader's input: >= 1 GB in 0.5 GB steps
    base = ctx.work / "comfy-host"
    server = comfy_host.ComfyServer(venv=venv, base=base, packs=[Path(__file__).resolve().parents[1]], cpu=not ctx.cuda)
    start = time.perf_counter()
    try:
        server.prepare_base()
        link = server.models_dir / "mova" / "gpu-check"
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(folder).resolve(), target_is_directory=True)
        server.start(timeout=300)
        session = comfy_host.ComfySession(server, out_dir=base / "downloads")
        image = session.upload_image(comfy_host.write_test_image(base / "fixtures" / "first.png", 64, 48))
        offset = len(server.log_text())
        result = session.run(host_workflow("gpu-check", budget_gb, "cuda" if ctx.cuda else "cpu", clip, image, 2),
                             timeout=600)
        log = server.log_text()[offset:]
    except Exception as exc:  # noqa: BLE001
        return [Row(section, name, "FAIL", error_figure(exc), goal, time.perf_counter() - start)]
    finally:
        server.stop()
    seconds = time.perf_counter() - start
    mp4 = [p for p in result.outputs if p.suffix == ".mp4"]
    streamed = [line.split("streamer on ", 1)[1] for line in log.splitlines() if "streamer on " in line]
    ok = result.status == "success" and mp4 and streamed
    figure = (f"{result.status} in {result.seconds:.1f} s at budget {budget_gb:g} GB; "
              + (f"streamer on {streamed[0][:90]}" if streamed else "no block was streamed")
              + ("" if result.status == "success" else "; " + " ".join(str(result.error).split())[:200]))
    return [Row(section, name, "PASS" if ok else "FAIL", figure, goal, seconds)]


def speed_rows(ctx: Ctx) -> List[Row]:
    from bench import gpu_streaming

    section, name = "speed", "step time streamed / resident, 12 GB cap"
    goal = f"<= {SPEED_GOAL:g} (real-size expert, 360p tokens, bf16)"
    if ctx.quick:
        return [Row(section, name, "SKIP", "skipped: --quick", goal)]
    smoke = not ctx.cuda
    if not smoke:
        free = torch.cuda.mem_get_info(ctx.device)[0]
        ram = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if free < 40 * GB or ram < 64 * GB:
            return [Row(section, name, "SKIP", f"skipped: needs ~40 GB free VRAM and ~64 GB free RAM for the "
                                               f"all-resident reference (have {free / GB:.0f} / {ram / GB:.0f} GB)", goal)]
    start = time.perf_counter()
    with torch.no_grad():
        result = gpu_streaming.measure_dtype(False, [12.0], passes=2, depth=2, smoke=smoke,
                                             dev=gpu_streaming.Device(ctx.device))
    seconds = time.perf_counter() - start
    cap = result["caps"][0]
    if not cap["fits"] or "oom" in cap:
        return [Row(section, name, "FAIL", "does not fit under 12 GB" if not cap["fits"] else f"out of memory ({cap['oom']})",
                    goal, seconds)]
    figure = (f"{cap['ratio']:.3f}x ({cap['streamed_s']:.2f} vs {result['resident_s']:.2f} s/pass, "
              f"{cap['n_resident']} of {result['blocks']} blocks resident, copy waits {cap['device_wait_s']:.3f} s/pass "
              f"on the device, identical={'yes' if cap['identical'] else 'no'})")
    if smoke:
        return [Row(section, name, "SKIP", "self-test ran (tiny blocks, not a GPU figure): " + figure, goal, seconds)]
    return [Row(section, name, "PASS" if cap["ratio"] <= SPEED_GOAL and cap["identical"] else "FAIL", figure, goal,
                seconds)]
