"""Run this first on any machine with a GPU: `python -m bench.gpu_check` (or `make gpu-check`).

One table, one row per check, each PASS / FAIL / SKIP with its figure and its goal, in under 8 minutes on one
GPU (an H200-class card; `--quick` skips the real-size speed row). Nothing of it has run on a GPU before: the
rows are what the CPU suite cannot see.

Checkpoints, written once into `--work` (default /tmp/mova_gpu_check): the tiny random-weight one (every
equality row) and a synthetic one with MOVA's real layer counts (40 video blocks, 30 audio blocks, 30 bridge
layers, 24 UMT5 layers) and every width divided by `--scale` (the memory, training and host rows);
`--checkpoint DIR` runs those rows on a real MOVA folder instead.

Sections (`--only a,b`):
* equality: CUDA latents against the CPU float32 reference, same seed and conditioning, per path: resident,
  streamed with pin=all and with pin=ring, fp8 storage, fp8 `_scaled_mm` against the fp8 cast path, compiled
  blocks, each installed attention backend, batched guidance, Ulysses on a single rank; also conditioning
  (text encoder + VAE encode) and decoding. Every sampling run is made as ComfyUI makes it (a worker thread,
  `torch.inference_mode()`).
* memory: the synthetic checkpoint under a VRAM budget the planner streams at; the measured VRAM peak of each
  phase against the plan's figure for it; pinned host bytes while streaming against the plan, and after the
  run; the expert switch under an all-resident plan (one expert's weights at a time).
* training: one LoRA training step under a 12 GB budget (the process capped at 12 GB).
* host: the I2VA workflow through a real ComfyUI on the GPU (this venv's `comfyui/`), Loader in budget mode
  with a budget that streams.
* speed: one real-size video expert (40 blocks at 5120 wide, 360p tokens) streamed under a 12 GB cap against
  all-resident: step-time ratio, goal <= 1.15 (`bench/gpu_streaming.py` has the full table).
* multigpu: CFG-parallel and Ulysses 2 with NCCL through the MOVA Multi-GPU workers against one GPU; with one
  GPU these rows say "skipped: one GPU".

Without CUDA it exits with status 2 and says so. `--device cpu` is the self-test of the rows themselves: every
row's code runs with the CPU standing in for the GPU (the copy engines simulated by threads); its figures are
not GPU figures, and rows that need device-memory statistics, fp8 tensor cores or two GPUs are skipped.
Exit status: 0 when no row failed, 1 otherwise. `--json PATH` also writes the rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from bench.comfyui_thread import run_as_comfyui

GB = 1e9
SECTIONS = ("equality", "memory", "training", "host", "speed", "multigpu")
TINY_CLIP = dict(width=32, height=32, num_frames=5, video_fps=8.0)
PROMPT, NEGATIVE = "a man says hello in a sunny kitchen, a kettle whistles", "static, blurry"
SEED = 7
FP32_TOL = 1e-4
"""Relative L2 of float32 latents, CUDA vs CPU: different kernels and summation orders (TF32 off), nothing else."""


@dataclass
class Row:
    section: str
    name: str
    status: str  # PASS, FAIL, SKIP
    figure: str
    goal: str = ""
    seconds: float = 0.0


@dataclass
class Ctx:
    """What every section gets: the device under test, where checkpoints go, and cached references."""

    device: torch.device
    work: Path
    scale: int = 8
    steps: int = 4
    checkpoint: Optional[Path] = None
    comfy_conditions: bool = True
    quick: bool = False
    skip: Tuple[str, ...] = ()
    cache: Dict[str, object] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def once(self, key: str, make: Callable[[], object]):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def tiny(self, six_heads: bool = False) -> Path:
        from mova_model.checkpoint.tiny import TinySpec, write_tiny_checkpoint

        name = "tiny-six-heads" if six_heads else "tiny"
        folder = self.work / name
        if not (folder / "model_index.json").is_file():
            spec = TinySpec(video_heads=6, audio_dim=48, audio_heads=6, bridge_head_dim=8) if six_heads else TinySpec()
            write_tiny_checkpoint(folder, spec=spec)
        return folder

    def synthetic(self) -> Path:
        if self.checkpoint is not None:
            return self.checkpoint
        from bench.memory import write_checkpoint

        folder = self.work / f"synthetic-s{self.scale}"
        if not (folder / "model_index.json").is_file():
            write_checkpoint(folder, self.scale)
        return folder


# ---------------------------------------------------------------------------------------------------- helpers


def comfy_like(fn: Callable[[], object], enabled: bool = True):
    """Call `fn()` as ComfyUI calls a node: on a worker thread, inside `torch.inference_mode()`."""
    if not enabled:
        with torch.no_grad():
            return fn()
    return run_as_comfyui(fn)


def rel_l2(got, want) -> Tuple[float, float]:
    """(relative L2, max |diff|) over the video and audio latents (or any pair of tensor lists)."""
    pairs = list(zip(got, want))
    diff = torch.cat([(g.float().cpu() - w.float().cpu()).flatten() for g, w in pairs])
    ref = torch.cat([w.float().cpu().flatten() for _, w in pairs])
    return (diff.norm() / ref.norm().clamp_min(1e-30)).item(), diff.abs().max().item()


def latents(result) -> list:
    return [result.video, result.audio]


def error_figure(exc: BaseException) -> str:
    """"error: Type: message (cause)" on one line, for a row whose run raised."""
    def line(e: BaseException) -> str:
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"{type(e).__name__}: {text}"[:160]
    cause = exc.__cause__ or exc.__context__
    return "error: " + line(exc) + (f" (caused by {line(cause)})" if cause is not None else "")


def judge(value: float, limit: float) -> str:
    return "PASS" if value <= limit else "FAIL"


def equality(section: str, name: str, got, want, tol: float) -> Row:
    rel, mx = rel_l2(got, want)
    return Row(section, name, judge(rel, tol), f"rel L2 {rel:.1e}, max |diff| {mx:.1e}", f"rel L2 <= {tol:g}")


def gradient_image(width: int = 48, height: int = 40) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), np.full_like(x, 96)], -1).astype(np.uint8)


def free_device(ctx: Ctx) -> None:
    gc.collect()
    if ctx.cuda:
        torch.cuda.synchronize(ctx.device)
        torch.cuda.empty_cache()


def streamed_plan(plan, pin: str, every: int = 2):
    """`plan` turned into a streamed one: every `every`-th module resident, prefetch 1, pinned as `pin`."""
    modules = [dataclasses.replace(m, resident=(i % every == 0)) for i, m in enumerate(plan.modules)]
    return dataclasses.replace(plan, mode="streamed", fits=True, modules=modules, prefetch_depth=1, pin=pin)


# ---------------------------------------------------------------------------------------------------- equality


def _tiny_reference(ctx: Ctx, key: str, **options):
    """CPU float32 latents of the tiny checkpoint for `key` (memory/guidance options), computed once."""
    from mova_model.sampling.guidance import GuidanceConfig
    from mova_model.sampling.pipeline import MovaPipeline

    cpu, cond = _tiny_cpu(ctx)

    def make():
        pipe = MovaPipeline(cpu.checkpoint, device="cpu", dtype=torch.float32, memory=options.get("memory"))
        return pipe.sample(cond, seed=SEED, steps=ctx.steps, guidance=options.get("guidance", GuidanceConfig(text_scale=5.0)))
    return ctx.once("ref:" + key, make)


def _tiny_cpu(ctx: Ctx):
    from mova_model.sampling.pipeline import MovaPipeline

    def make():
        pipe = MovaPipeline.from_pretrained(ctx.tiny(), device="cpu", dtype=torch.float32)
        return pipe, pipe.prepare_conditioning(PROMPT, NEGATIVE, gradient_image(), **TINY_CLIP)
    return ctx.once("tiny-cpu", make)


def equality_rows(ctx: Ctx) -> List[Row]:
    from mova_model.memory.model_store import MemoryOptions
    from mova_model.network.attention import OPTIONAL_BACKENDS, installed
    from mova_model.network.fp8_matmul import fp8_matmul_supported
    from mova_model.parallel.comm import RankGroup
    from mova_model.parallel.context import ParallelContext
    from mova_model.parallel.layout import ParallelLayout
    from mova_model.parallel.ulysses import UlyssesSequence
    from mova_model.sampling.guidance import GuidanceConfig
    from mova_model.sampling.pipeline import MovaPipeline
    from mova_model.sampling.speed import SpeedOptions

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    section = "equality"
    cpu, cond = _tiny_cpu(ctx)
    text, dual = GuidanceConfig(text_scale=5.0), GuidanceConfig(text_scale=5.0, bridge_scale=3.5)
    rows: List[Row] = []

    def pipe(dtype=torch.float32, **kwargs):
        return MovaPipeline(cpu.checkpoint, device=ctx.device, dtype=dtype, **kwargs)

    def sample(p, guidance=text, **kwargs):
        try:
            return comfy_like(lambda: p.sample(cond, seed=SEED, steps=ctx.steps, guidance=guidance, **kwargs),
                              ctx.comfy_conditions)
        finally:
            p.release_all()
            free_device(ctx)

    def run(name, goal, body):
        if any(name.startswith(prefix) for prefix in ctx.skip):
            rows.append(Row(section, name, "SKIP", "skipped: --skip", goal))
            return
        start = time.perf_counter()
        try:
            row = body()
        except Exception as exc:  # noqa: BLE001 - one broken path must not hide the others
            row = Row(section, name, "FAIL", error_figure(exc), goal)
            traceback.print_exc(file=sys.stderr)
        row.name, row.seconds = name, time.perf_counter() - start
        rows.append(row)

    reference = _tiny_reference(ctx, "fp32")

    def conditioning():
        p = pipe()
        got = comfy_like(lambda: p.prepare_conditioning(PROMPT, NEGATIVE, gradient_image(), **TINY_CLIP),
                         ctx.comfy_conditions)
        p.release_all()
        return equality(section, "", [got.prompt_embeds, got.negative_prompt_embeds, got.condition],
                        [cond.prompt_embeds, cond.negative_prompt_embeds, cond.condition], FP32_TOL)
    run("conditioning (UMT5 + VAE encode)", f"rel L2 <= {FP32_TOL:g}", conditioning)
    run("resident", "", lambda: equality(section, "", latents(sample(pipe(memory=MemoryOptions(mode="resident")))),
                                         latents(reference), FP32_TOL))
    for pin in ("all", "ring"):
        def streamed(pin=pin):
            p = pipe()
            plan = streamed_plan(p.memory_plan(**TINY_CLIP, steps=ctx.steps, vram_bytes=64e9), pin)
            return equality(section, "", latents(sample(p, plan=plan)), latents(reference), FP32_TOL)
        run(f"streamed, pin={pin}", "", streamed)
    run("fp8 storage", "", lambda: equality(
        section, "", latents(sample(pipe(memory=MemoryOptions(weights="fp8")))),
        latents(_tiny_reference(ctx, "fp8", memory=MemoryOptions(weights="fp8"))), FP32_TOL))

    def fp8_matmul():
        if not fp8_matmul_supported(ctx.device):
            cc = "" if not ctx.cuda else " (this GPU: %d.%d)" % torch.cuda.get_device_capability(ctx.device)
            return Row(section, "", "SKIP", f"skipped: needs fp8 tensor cores, compute capability >= 8.9{cc}")
        options = dict(dtype=torch.bfloat16, memory=MemoryOptions(weights="fp8"))
        cast = sample(pipe(**options))
        scaled = sample(pipe(speed=SpeedOptions(fp8_matmul=True), **options))
        return equality(section, "", latents(scaled), latents(cast), 0.1)
    run("fp8 _scaled_mm vs cast path", "rel L2 <= 0.1 (e4m3 activations)", fp8_matmul)
    run("compiled blocks", "", lambda: equality(
        section, "", latents(sample(pipe(speed=SpeedOptions(compile_blocks=True)))), latents(reference), FP32_TOL))
    for backend in ("sdpa", *[b for b in OPTIONAL_BACKENDS if installed(b)]):
        tol = 0.1 if backend == "sage" else 0.05
        run(f"attention {backend} (bf16)", "", lambda backend=backend, tol=tol: equality(
            section, "", latents(sample(pipe(torch.bfloat16, speed=SpeedOptions(attention=backend)))),
            latents(reference), tol))
    run("batched guidance (dual CFG, 3 rows)", "", lambda: equality(
        section, "", latents(sample(pipe(speed=SpeedOptions(batch_guidance="on")), guidance=dual)),
        latents(_tiny_reference(ctx, "dual", guidance=dual)), FP32_TOL))

    def ulysses_single_rank():
        groups = [RankGroup(name, None, [0], 0, 120.0, device=ctx.device)
                  for name in ("all-ranks", "CFG-parallel", "sequence-parallel")]
        parallel = ParallelContext(ParallelLayout(cfg=1, ulysses=1), 0, ctx.device, 120.0, *groups)
        parallel.sequence = UlyssesSequence(parallel.sequence_group)  # the exchange path, on one rank
        return equality(section, "", latents(sample(pipe(), parallel=parallel)), latents(reference), FP32_TOL)
    run("Ulysses, single rank", "", ulysses_single_rank)

    def decoding():
        p = pipe()
        video = comfy_like(lambda: p.decode_video(reference), ctx.comfy_conditions)
        audio, _ = comfy_like(lambda: p.decode_audio(reference), ctx.comfy_conditions)
        p.release_all()
        want_video, want_audio = cpu.decode_video(reference), cpu.decode_audio(reference)[0]
        return equality(section, "", [video, audio], [want_video, want_audio], FP32_TOL)
    run("decoding (Wan VAE + DAC)", "", decoding)
    for row in rows:
        row.goal = row.goal or f"rel L2 <= {FP32_TOL:g}"
    return rows


# ---------------------------------------------------------------------------------------------------- two GPUs


def multigpu_rows(ctx: Ctx) -> List[Row]:
    section = "multigpu"
    names = ("NCCL CFG-parallel, 2 GPUs", "NCCL Ulysses 2, 2 GPUs")
    count = torch.cuda.device_count() if ctx.cuda else 0
    if count < 2:
        why = "skipped: one GPU" if count == 1 else "skipped: no GPU (cpu self-test)"
        return [Row(section, name, "SKIP", why) for name in names]
    from mova_model.parallel.workers import WorkerPool, WorkerSpec
    from mova_model.sampling.guidance import GuidanceConfig
    from mova_model.sampling.pipeline import MovaPipeline

    rows = []
    for name, split, six, tol in ((names[0], "cfg", False, 1e-6), (names[1], "ulysses", True, FP32_TOL)):
        start = time.perf_counter()
        pool = None
        try:
            folder = ctx.tiny(six_heads=six)
            one = MovaPipeline.from_pretrained(folder, device="cuda:0", dtype=torch.float32)
            cond = one.prepare_conditioning(PROMPT, NEGATIVE, gradient_image(), **TINY_CLIP)
            want = one.sample(cond, seed=SEED, steps=ctx.steps, guidance=GuidanceConfig(text_scale=5.0))
            one.release_all()
            pool = WorkerPool(WorkerSpec(devices=("cuda:0", "cuda:1"), split=split, timeout_s=120.0))
            remote = MovaPipeline.from_pretrained(folder, device="cuda:0", dtype=torch.float32)
            remote.remote = pool
            got = remote.sample(cond, seed=SEED, steps=ctx.steps, guidance=GuidanceConfig(text_scale=5.0))
            row = equality(section, name, latents(got), latents(want), tol)
        except Exception as exc:  # noqa: BLE001
            row = Row(section, name, "FAIL", error_figure(exc), f"rel L2 <= {tol:g}")
        finally:
            if pool is not None:
                pool.stop()
        row.seconds = time.perf_counter() - start
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------- main


def device_line(ctx: Ctx) -> str:
    if not ctx.cuda:
        return (f"CPU self-test (no GPU figures: the CPU stands in for the GPU), torch {torch.__version__}, "
                f"{torch.get_num_threads()} threads")
    props = torch.cuda.get_device_properties(ctx.device)
    return (f"{props.name} (compute capability {props.major}.{props.minor}, {props.total_memory / 2 ** 30:.1f} GiB), "
            f"{torch.cuda.device_count()} GPU(s), torch {torch.__version__} (CUDA {torch.version.cuda})")


def format_table(rows: List[Row], header: str) -> str:
    widths = [max([len(r.section) for r in rows] + [7]), max([len(r.name) for r in rows] + [5])]
    lines = [header, f"{'section':<{widths[0]}}  {'check':<{widths[1]}}  status  {'time':>6}  figure  [goal]"]
    for r in rows:
        goal = f"  [{r.goal}]" if r.goal else ""
        lines.append(f"{r.section:<{widths[0]}}  {r.name:<{widths[1]}}  {r.status:<6}  {r.seconds:5.1f}s  {r.figure}{goal}")
    counts = {s: sum(r.status == s for r in rows) for s in ("PASS", "FAIL", "SKIP")}
    lines.append(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    return "\n".join(lines)


def section_runners() -> Dict[str, Callable[[Ctx], List[Row]]]:
    from bench import gpu_check_rows

    return {"equality": equality_rows, "memory": gpu_check_rows.memory_rows, "training": gpu_check_rows.training_rows,
            "host": gpu_check_rows.host_rows, "speed": gpu_check_rows.speed_rows, "multigpu": multigpu_rows}


def run_section(ctx: Ctx, name: str) -> List[Row]:
    """One section in this process; an exception is one failed row (the other sections still run)."""
    start = time.perf_counter()
    try:
        got = section_runners()[name](ctx)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        got = [Row(name, "(section)", "FAIL", error_figure(exc))]
    if len(got) == 1 and not got[0].seconds:
        got[0].seconds = time.perf_counter() - start
    free_device(ctx)
    return got


def run_isolated(name: str, argv: List[str], work: Path) -> List[Row]:
    """One section in a fresh process (clean device-memory and pinned-memory statistics, and a crash or an
    out-of-memory abort costs one section, not the table)."""
    out = work / f"rows-{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.gpu_check", *argv, "--only", name, "--in-process", "--json", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode not in (0, 1) or not out.is_file():
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])[-300:]
        return [Row(name, "(section)", "FAIL", f"the section's process ended with status {proc.returncode}: {tail}",
                    seconds=time.perf_counter() - start)]
    return [Row(**r) for r in json.loads(out.read_text())["rows"]]


def run_sections(ctx: Ctx, sections, isolate_argv: Optional[List[str]] = None) -> List[Row]:
    rows: List[Row] = []
    for name in sections:
        sys.stderr.write(f"gpu_check: {name} ...\n")
        rows += run_isolated(name, isolate_argv, ctx.work) if isolate_argv is not None else run_section(ctx, name)
    return rows


def _without_selection(argv: List[str]) -> List[str]:
    """The command line minus --only/--json (each section's process gets its own)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--only", "--json"):
            skip = True
            continue
        if arg.startswith(("--only=", "--json=")):
            continue
        out.append(arg)
    return out


def no_gpu_message() -> str:
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (f"bench.gpu_check: no CUDA GPU here (torch {torch.__version__}, {build}): nothing to check. Run it on the "
            "machine with the GPU (`python -m bench.gpu_check` or `make gpu-check`); `--device cpu` runs the "
            "self-test of the rows on the CPU (no GPU figures).\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for the self-test")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections ({', '.join(SECTIONS)})")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "mova_gpu_check",
                        help="where the checkpoints are written (reused by later runs)")
    parser.add_argument("--scale", type=int, default=8, help="synthetic checkpoint: real widths / scale (8..40)")
    parser.add_argument("--checkpoint", type=Path, help="a real MOVA folder for the memory, training and host rows")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps of every run (the expert switch is in)")
    parser.add_argument("--quick", action="store_true", help="skip the real-size speed row (needs ~40 GB + 64 GB RAM)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--skip", default="", help="comma-separated equality rows to skip, by name prefix "
                                                   "(e.g. 'compiled' on a slow CPU self-test)")
    parser.add_argument("--in-process", action="store_true",
                        help="run the sections in this process (default: each in a fresh one)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.stderr.write(no_gpu_message())
        return 2
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device must be cuda, cuda:N or cpu, got {args.device}")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    args.work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(device=device, work=args.work, scale=args.scale, steps=args.steps, checkpoint=args.checkpoint,
              quick=args.quick, skip=tuple(x.strip() for x in args.skip.split(",") if x.strip()))
    start = time.perf_counter()
    passed_on = [a for a in (argv if argv is not None else sys.argv[1:])]
    isolate = None if args.in_process else _without_selection(passed_on) + ["--work", str(args.work.resolve())]
    rows = run_sections(ctx, sections, isolate)
    header = f"MOVA GPU check: {device_line(ctx)}; {time.perf_counter() - start:.0f} s"
    sys.stdout.write(format_table(rows, header) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
