"""The memory planner: every residency / streaming / tiling decision of a generation, from explicit inputs.

Inputs (`PlanInputs`): the VRAM available (free VRAM reported by the host, or a user budget), a host-RAM
budget, the architecture (`Architecture`, derived from the checkpoint's configs, or the released MOVA
numbers), the weight storage on the device (bf16 / fp8) and on disk, resolution, frame count, CFG passes per
step, and the link and device speeds. Output: a `MemoryPlan` — which DiT blocks and bridge conditioners stay
resident, which stream and how deep the prefetch is, how the text encoder runs, whether the VAE decodes
tiled, and predicted peak VRAM per phase, host RAM, bytes moved per step and the step-time overhead.

Everything is arithmetic over the configs, so a plan can be built and tested on a machine without a GPU.
The accounting mirrors the implementation: a streamed module costs a slot of
`(prefetch_depth + 1) × largest streamed module` bytes (`streaming.BlockStreamer`), fp8 matrices are 1 byte
per weight plus a float32 scale, and the step time comes from simulating the same prefetch schedule the
streamer runs (serial copy engine, one slot per module in flight). Activation and VAE working sets are
estimates (constants in `sizes`, stated with their derivation); `bench/gpu_streaming.py` measures the real ones.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .. import bounds
from ..cli_args import CliParser, refuse
from .sizes import (DEFAULT_TFLOPS, GB, GGUF_VECTOR_BYTES, HOST_COPY_GBPS, RUNTIME_HOST_BYTES, Architecture,
                    ModulePlan, PlanInputs, activation_bytes, audio_decode_bytes, execution_modules, host_vae_bytes,
                    latent_bytes, margin_bytes, text_encoder_activation_bytes, vae_bytes)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------
# the plan


@dataclass
class MemoryPlan:
    """The planner's decisions and predictions. Byte counts in bytes, times in seconds."""

    inputs: PlanInputs
    fits: bool
    mode: str  # "all-resident", "streamed", "cannot-fit"
    prefetch_depth: int
    pin: str  # "all" (streamed modules pinned once), "ring" (pinned staging), "none"
    modules: List[ModulePlan]
    text_encoder: str  # "resident", "streamed", "cpu"
    vae_tiled: bool
    vram_phases: Dict[str, float]
    vram_denoise: Dict[str, float]
    host_ram_bytes: float
    page_cache_bytes: float
    bytes_per_step: float
    compute_s_per_step: float
    step_s: float
    problems: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    ram_phases: Dict[str, float] = field(default_factory=dict)
    """Peak host RAM by phase (bytes), for a CPU run (mode "cpu"), reserve included."""

    @property
    def vram_peak_bytes(self) -> float:
        return max(self.vram_phases.values(), default=0.0)

    @property
    def pinned_bytes(self) -> float:
        """Page-locked host memory of the denoise phase (bytes): every streamed module once (pin "all"), or two
        staging buffers of the largest (pin "ring"), as `copy_engines.CudaCopyEngine` allocates them
        (`pinned.PinnedArena`: exact sizes, returned when the run ends)."""
        streamed = [m.nbytes for m in self.modules if not m.resident]
        if not streamed or self.pin not in ("all", "ring"):
            return 0.0
        return float(sum(streamed)) if self.pin == "all" else 2.0 * max(streamed)

    @property
    def overhead(self) -> float:
        """Predicted step-time overhead of streaming (and fp8 dequantization) over all-resident compute."""
        return self.step_s / self.compute_s_per_step - 1.0 if self.compute_s_per_step else 0.0

    def phase_fits(self, phase: str) -> bool:
        """Whether one phase ("VAE encode", "VAE decode", ...) fits its budget (host RAM on the CPU, else VRAM)."""
        if self.mode == "cpu":
            return self.ram_phases.get(phase, 0.0) <= self.inputs.ram_bytes
        return self.vram_phases.get(phase, 0.0) <= self.inputs.vram_bytes

    def resident_names(self) -> set:
        return {m.name for m in self.modules if m.resident}

    def resident_modules(self, video_dit, audio_dit, bridge) -> set:
        """The planned resident modules of these component instances (the active expert as `video_dit`)."""
        roots = {"video_dit": video_dit, "audio_dit": audio_dit, "dual_tower_bridge": bridge}
        out = set()
        for name in self.resident_names():
            root, _, path = name.partition(".")
            if roots.get(root) is not None:
                out.add(roots[root].get_submodule(path))
        return out

    def counts(self) -> Dict[str, Tuple[int, int]]:
        """kind -> (resident, streamed)."""
        out: Dict[str, List[int]] = {}
        for m in self.modules:
            out.setdefault(m.kind, [0, 0])[0 if m.resident else 1] += 1
        return {k: (v[0], v[1]) for k, v in out.items()}

    def format(self) -> str:
        """Human-readable table (log, Loader node, `python -m mova_model plan`)."""
        i = self.inputs
        g = lambda b: f"{b / GB:6.2f} GB"  # noqa: E731
        if self.mode == "cpu":
            lines = [f"MOVA memory plan (CPU): {i.width}x{i.height}, {i.frames} frames, {8 * i.compute_bytes}-bit compute",
                     f"  budget            host RAM {g(i.ram_bytes)}",
                     f"  fits: {'yes' if self.fits else 'NO'}", "  peak host RAM by phase (reserve included):"]
            lines += [f"    {k:<16}{g(v)}" for k, v in self.ram_phases.items()]
            return "\n".join(lines + [f"  problem: {p}" for p in self.problems] + [f"  note: {n}" for n in self.notes])
        kinds = {"video": "video expert blocks", "audio": "audio DiT blocks", "a2v": "bridge audio->video",
                 "v2a": "bridge video->audio"}
        lines = [f"MOVA memory plan{' (' + i.variant + ')' if i.variant else ''}: {i.width}x{i.height}, {i.frames} frames, "
                 f"{i.cfg_passes} pass(es)/step, weights {i.weights} (stored {i.stored})",
                 f"  budget            VRAM {g(i.vram_bytes)}  host RAM {g(i.ram_bytes)}  ({i.mode})",
                 f"  decision          {self.mode}   fits: {'yes' if self.fits else 'NO'}",
                 f"  prefetch depth    {self.prefetch_depth}   pinned host memory: {self.pin}"]
        for kind, (res, streamed) in self.counts().items():
            lines.append(f"  {kinds.get(kind, kind):<18}{res:3d} resident {streamed:3d} streamed")
        lines += [f"  text encoder      {self.text_encoder}", f"  VAE               {'tiled' if self.vae_tiled else 'untiled'}",
                  "  peak VRAM by phase:"]
        lines += [f"    {k:<16}{g(v)}" for k, v in self.vram_phases.items()]
        lines.append("  denoise VRAM:")
        lines += [f"    {k:<16}{g(v)}" for k, v in self.vram_denoise.items()]
        lines += [f"  host RAM (anon)   {g(self.host_ram_bytes)}   page cache (reclaimable) {g(self.page_cache_bytes)}",
                  f"  moved per step    {g(self.bytes_per_step)}   at {i.pcie_gbps:.0f} GB/s",
                  f"  step time         {self.step_s:7.2f} s  (compute {self.compute_s_per_step:.2f} s, "
                  f"overhead {100 * self.overhead:+.1f} %)"]
        lines += [f"  problem: {p}" for p in self.problems] + [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def simulate_pass(modules: Sequence[ModulePlan], depth: int, link_bps: float, flops_per_s: float,
                  passes: int = 3) -> Tuple[float, float]:
    """(seconds per pass in steady state, compute seconds per pass) under the streamer's prefetch schedule.

    One serial copy engine; streamed module k may start copying when copy k-1 is done and the slot it reuses
    (that of streamed module k-depth-1) has been released by its computation; module i computes when module
    i-1 has finished and its copy is done. The order repeats (cyclic prefetch across passes); the last pass of
    `passes` is measured.
    """
    compute = [m.flops / flops_per_s for m in modules]
    streamed_idx = [i for i, m in enumerate(modules) if not m.resident]
    seq = [(p, i) for p in range(passes) for i in range(len(modules))]
    copy_end: Dict[Tuple[int, int], float] = {}
    compute_end: Dict[Tuple[int, int], float] = {}
    streamed_seq = [(p, i) for p, i in seq if i in set(streamed_idx)]
    pos = {key: k for k, key in enumerate(streamed_seq)}
    t_compute = t_copy = 0.0
    pass_start = 0.0
    last_pass = 0.0
    issue = 0  # copies are issued in streamed order
    for p, i in seq:
        if i == 0:
            pass_start = t_compute
        key = (p, i)
        if key in pos:
            k = pos[key]
            while issue <= min(k + depth, len(streamed_seq) - 1):
                ck = streamed_seq[issue]
                reuse = streamed_seq[issue - depth - 1] if issue - depth - 1 >= 0 else None
                if reuse is not None and reuse not in compute_end:
                    break
                start = max(t_copy, compute_end[reuse] if reuse is not None else 0.0)
                t_copy = start + modules[ck[1]].nbytes / link_bps
                copy_end[ck] = t_copy
                issue += 1
            t_compute = max(t_compute, copy_end[key])
        t_compute += compute[i]
        compute_end[key] = t_compute
        if i == len(modules) - 1:
            last_pass = t_compute - pass_start
    return last_pass, sum(compute)


def _stem_bytes(arch: Architecture, inputs: Optional[PlanInputs] = None) -> float:
    """Bytes of both towers' embeddings, time MLPs and heads (resident next to streamed blocks)."""
    if inputs is not None and inputs.stem_bytes is not None:
        return float(inputs.stem_bytes)
    per_param = GGUF_VECTOR_BYTES if inputs is not None and inputs.gguf_type is not None else 2.0
    return per_param * (arch.video.stem_params() + arch.audio.stem_params())


GGUF_DEQUANT_TRAFFIC_BYTES = 16.0
"""Device memory traffic per weight of a GGUF dequantization (codes read and unpacked, float32 values written and
scaled in place, the compute-dtype weight written): an estimate for the step time, to be measured on a GPU."""


def dequant_scratch_bytes(arch: Architecture, inputs: PlanInputs) -> float:
    """Device memory of expanding the largest matrix (the video FFN) before its matmul: fp8 -> bf16 (the cast
    and the scaled copy, 4 bytes per weight); GGUF -> the compute-dtype weight plus one piece's float32 working
    set (`gguf_dequant.CHUNK_WEIGHTS` x `SCRATCH_BYTES_PER_WEIGHT`); 0 when weights are used as stored."""
    largest = float(arch.video.dim * arch.video.ffn_dim)
    if inputs.weights == "fp8":
        return 4.0 * largest
    if inputs.gguf_type is not None:
        from ..network.gguf_dequant import CHUNK_WEIGHTS, SCRATCH_BYTES_PER_WEIGHT

        return inputs.compute_bytes * largest + min(largest, CHUNK_WEIGHTS) * SCRATCH_BYTES_PER_WEIGHT
    return 0.0


def _text_encoder_phase(arch: Architecture, vram: float) -> Tuple[str, float]:
    layer, other = arch.text_encoder_params()
    layer_b = 2.0 * layer  # the text encoder keeps its stored dtype (not quantized by default)
    act = text_encoder_activation_bytes(arch)
    margin = margin_bytes(vram)
    full = other * 2.0 + layer_b * arch.te_layers + act + margin
    if full <= vram:
        return "resident", full
    streamed = other * 2.0 + 3 * layer_b + act + margin
    if streamed <= vram:
        return "streamed", streamed
    return "cpu", 0.0


@dataclass
class _HostSide:
    pin: str
    anon: float
    page_cache: float
    link_bps: float
    quantized_on_load: bool
    from_disk: bool


def _host_side(modules: Sequence[ModulePlan], inputs: PlanInputs) -> _HostSide:
    """Host RAM (anonymous, budgeted), page cache working set and the effective host->device bandwidth.

    Streamed modules are pinned once ("all") when the budget allows, else copied through two pinned staging
    buffers ("ring") from the memory-mapped files, which then must stay in the page cache (or are re-read
    from disk every step). fp8 weights quantized from bf16 files live in anonymous host memory.
    """
    quantized_on_load = inputs.weights == "fp8" and inputs.stored != "fp8"
    streamed = [m.nbytes for m in modules if not m.resident]
    anon = RUNTIME_HOST_BYTES + (sum(m.nbytes for m in modules) if quantized_on_load else 0.0)
    link = inputs.pcie_gbps * GB
    if not streamed:
        return _HostSide("none", anon, 0.0, link, quantized_on_load, False)
    if anon + sum(streamed) <= inputs.ram_bytes:
        return _HostSide("all", anon + sum(streamed), 0.0, link, quantized_on_load, False)
    anon += 2 * max(streamed)
    page_cache = 0.0 if quantized_on_load else float(sum(streamed))
    link = min(link, HOST_COPY_GBPS * GB)
    from_disk = anon + page_cache > inputs.ram_bytes
    if from_disk:
        link = min(link, inputs.disk_gbps * GB)
    return _HostSide("ring", anon, page_cache, link, quantized_on_load, from_disk)


def _fill_resident(base: Sequence[ModulePlan], depth: int, room: float) -> Tuple[List[ModulePlan], float, float]:
    """Greedy residency for one prefetch depth: (modules, slot bytes, VRAM left). The modules most expensive
    to move per second of compute (audio blocks, then bridge conditioners, then video blocks) become resident
    while they fit next to `depth + 1` slots; at least one video block keeps streaming (it sizes the slots)."""
    modules = [replace(m) for m in base]
    room -= (depth + 1) * max(m.nbytes for m in modules)
    for m in sorted(modules, key=lambda m: m.nbytes / max(m.flops, 1.0), reverse=True):
        if m.nbytes <= room and any(not c.resident and c is not m for c in modules if c.kind == "video"):
            m.resident = True
            room -= m.nbytes
    slots = (depth + 1) * max((m.nbytes for m in modules if not m.resident), default=0)
    return modules, float(slots), float(room)


def _plan_host(inputs: PlanInputs, arch: Architecture) -> MemoryPlan:
    """A CPU run: every phase in host RAM (`inputs.ram_bytes`, what the OS reports available or the user's
    budget), a reserve included. The text encoder is cast to the compute dtype (anonymous memory) and released
    after encoding; the video VAE (float32) stays built from the encode on; the DiTs compute from their
    memory-mapped files (page cache: reclaimable, so a note rather than a refusal when they do not fit)."""
    cb = inputs.compute_bytes
    margin = margin_bytes(inputs.ram_bytes)
    layer, other = arch.text_encoder_params()
    vae_weights = 4.0 * arch.vae_params
    stored = inputs if inputs.gguf_type is not None else replace(inputs, weights="bf16")
    modules = [replace(m, resident=True) for m in execution_modules(arch, stored)]
    dit_weights = float(sum(m.nbytes for m in modules) + _stem_bytes(arch, stored))
    latents = (4 + 2 * 16) * inputs.video_tokens * 4 * 4.0  # noise, condition, latents, velocity (float32)
    decoded = 3.0 * inputs.frames * inputs.width * inputs.height * 4
    phases = {
        "text encode": (layer * arch.te_layers + other) * cb + 0.5 * GB,
        "VAE encode": host_vae_bytes(arch, inputs, "VAE encode"),
        "denoise": vae_weights + activation_bytes(arch, inputs) * cb / 2.0 + latents,
        "VAE decode": host_vae_bytes(arch, inputs, "VAE decode"),
        "audio decode": vae_weights + 4.0 * arch.audio_vae_params + decoded + 1.0 * GB,
    }
    phases = {k: v + margin for k, v in phases.items()}
    problems, notes = [], []
    peak_phase = max(phases, key=phases.get)
    if phases[peak_phase] > inputs.ram_bytes:
        problems.append(f"host RAM: this clip needs {phases[peak_phase] / GB:.1f} GB at its peak ({peak_phase}), "
                        f"{inputs.ram_bytes / GB:.1f} GB available")
    if phases["denoise"] + dit_weights > inputs.ram_bytes:
        notes.append(f"the DiT weights ({dit_weights / GB:.1f} GB as stored) do not stay in the page cache beside "
                     "the denoise working set: every step re-reads part of them from disk")
    return MemoryPlan(
        inputs=inputs, fits=not problems, mode="cpu", prefetch_depth=0, pin="none", modules=modules,
        text_encoder="cpu", vae_tiled=False, vram_phases={}, vram_denoise={}, host_ram_bytes=phases[peak_phase],
        page_cache_bytes=dit_weights, bytes_per_step=0.0, compute_s_per_step=0.0, step_s=0.0, problems=problems,
        notes=notes, ram_phases=phases)


def plan_memory(inputs: PlanInputs, arch: Optional[Architecture] = None, log: bool = True) -> MemoryPlan:
    """Decide residency, streaming, prefetch depth, text-encoder placement and VAE tiling; predict costs.
    For `inputs.device == "cpu"`: every phase's host RAM against the RAM budget."""
    inputs.validate()
    arch = arch or Architecture.released()
    if inputs.device == "cpu":
        plan = _plan_host(inputs, arch)
        if log:
            logger.info("memory plan:\n%s", plan.format())
        return plan
    vram, fp8 = inputs.vram_bytes, inputs.weights == "fp8"
    margin = margin_bytes(vram)
    base = [replace(m) for m in execution_modules(arch, inputs)]
    act = activation_bytes(arch, inputs)
    dequant = dequant_scratch_bytes(arch, inputs)
    latents = latent_bytes(arch, inputs)
    fixed = _stem_bytes(arch, inputs) + act + dequant + latents + margin
    flops_per_s = inputs.tflops * 1e12 / max(1, inputs.guidance_batch)  # a batched pass computes B rows
    problems: List[str] = []
    notes: List[str] = []

    total = sum(m.nbytes for m in base)
    if fixed + total <= vram or inputs.mode == "resident":
        for m in base:
            m.resident = True
        modules, depth, slots = base, 0, 0.0
        mode = "all-resident"
        if fixed + total > vram:
            problems.append(f"all-resident needs {(fixed + total) / GB:.1f} GB of VRAM, {vram / GB:.1f} GB available")
    else:
        best = None
        for depth in [inputs.prefetch_depth] if inputs.prefetch_depth is not None else [1, 2, 3, 4]:
            candidate, slots, room = _fill_resident(base, depth, vram - fixed)
            step, _ = simulate_pass(candidate, depth, _host_side(candidate, inputs).link_bps, flops_per_s)
            step = step if room >= 0 else math.inf
            if best is None or step < best[0] - 1e-9:
                best = (step, depth, candidate, slots)
        _, depth, modules, slots = best
        mode = "streamed"
        if fixed + slots + sum(m.nbytes for m in modules if m.resident) > vram:
            mode = "cannot-fit"
            problems.append(f"even streaming every block needs {(fixed + slots) / GB:.1f} GB of VRAM at this "
                            f"resolution ({act / GB:.1f} GB activations); {vram / GB:.1f} GB available"
                            + ("" if fp8 else " — fp8 weights halve the streaming slots"))

    resident_b = sum(m.nbytes for m in modules if m.resident)
    streamed_b = sum(m.nbytes for m in modules if not m.resident)
    vram_denoise = {"embeddings+heads": _stem_bytes(arch, inputs), "resident blocks": float(resident_b),
                    "stream slots": float(slots), "activations": act,
                    ("GGUF dequant" if inputs.gguf_type is not None else "fp8 dequant"): dequant,
                    "latents + prompts": latents, "reserve": margin}

    # text encoder phase and VAE phase (the DiTs are released / not yet loaded in those phases)
    te_mode, te_peak = _text_encoder_phase(arch, vram)
    if te_mode == "cpu":
        notes.append("the text encoder does not fit the GPU even streamed; prompts are encoded on the CPU")
    vae_tiled = vae_bytes(arch, inputs, False) + margin > vram
    vae_peak = vae_bytes(arch, inputs, vae_tiled) + margin
    if vae_peak > vram:
        problems.append(f"the VAE needs {vae_peak / GB:.1f} GB even tiled")
    phases = {"text encode": te_peak, "VAE encode": vae_peak, "denoise": sum(vram_denoise.values()),
              "VAE decode": vae_peak, "audio decode": audio_decode_bytes(arch, inputs) + margin}
    # A plan that fits fits every phase (issue 17 item 10: "fits: yes" beside an audio decode larger than the
    # budget). The denoise and VAE phases are reported above; any other phase over the budget is reported here.
    for phase in ("text encode", "audio decode"):
        if phases[phase] > vram:
            problems.append(f"VRAM: the {phase} needs {phases[phase] / GB:.2f} GB, {vram / GB:.2f} GB available")

    host = _host_side(modules, inputs)
    pin, anon, page_cache, link_bps = host.pin, host.anon, host.page_cache, host.link_bps
    if host.quantized_on_load:
        notes.append("fp8 from bf16 files: the active expert is quantized into host RAM on load; a pre-quantized "
                     "folder (`python -m mova_model quantize`) avoids that copy")
    if anon > inputs.ram_bytes:
        problems.append(f"host RAM: {anon / GB:.1f} GB needed, budget {inputs.ram_bytes / GB:.1f} GB")
    frames_host = RUNTIME_HOST_BYTES + 2.0 * 3 * inputs.frames * inputs.width * inputs.height * 4
    if frames_host > inputs.ram_bytes:  # the decoded clip comes back to the host as float32 frames
        problems.append(f"host RAM: the decoded frames need {frames_host / GB:.1f} GB, budget {inputs.ram_bytes / GB:.1f} GB")
    if host.from_disk:
        notes.append("the streamed weights do not fit the page cache next to the budget: every step re-reads "
                     f"them from disk (~{inputs.disk_gbps:.0f} GB/s)" + ("" if fp8 else "; fp8 weights halve them"))

    pass_s, compute_s = simulate_pass(modules, depth, link_bps, flops_per_s)
    if fp8:
        dequant_s = sum(m.nbytes for m in modules) * 7.0 / (inputs.hbm_gbps * GB)
        pass_s += dequant_s
    elif inputs.gguf_type is not None:
        pass_s += sum(m.params for m in modules) * GGUF_DEQUANT_TRAFFIC_BYTES / (inputs.hbm_gbps * GB)
    passes = math.ceil(inputs.cfg_passes / max(1, inputs.guidance_batch))
    plan = MemoryPlan(
        inputs=inputs, fits=not problems, mode="cannot-fit" if problems and mode == "streamed" else mode,
        prefetch_depth=depth, pin=pin, modules=modules, text_encoder=te_mode, vae_tiled=vae_tiled,
        vram_phases=phases, vram_denoise=vram_denoise, host_ram_bytes=anon, page_cache_bytes=page_cache,
        bytes_per_step=passes * streamed_b, compute_s_per_step=passes * compute_s, step_s=passes * pass_s,
        problems=problems, notes=notes)
    if log:
        logger.info("memory plan:\n%s", plan.format())
    return plan


def what_would_fit(inputs: PlanInputs, arch: Optional[Architecture] = None, phase: Optional[str] = None) -> str:
    """For a clip that does not fit: the most frames that fit at its size, and the largest size (same aspect
    ratio, multiples of 16) that fits with its frame count; `phase` limits the test to one phase."""
    arch = arch or Architecture.released()

    def fits(candidate: PlanInputs) -> bool:
        plan = plan_memory(candidate, arch, log=False)
        return plan.phase_fits(phase) if phase else plan.fits

    def largest(lo: int, hi: int, ok) -> Optional[int]:
        """Largest n in [lo, hi] with ok(n), assuming ok is monotone; None if none."""
        best = None
        while lo <= hi:
            mid = (lo + hi) // 2
            if ok(mid):
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        return best

    w, h, f = inputs.width, inputs.height, inputs.frames
    options = []
    k = largest(0, (f - 1) // 4 - 1, lambda k: fits(replace(inputs, frames=4 * k + 1)))
    if k is not None:
        options.append(f"{w}x{h} with at most {4 * k + 1} frames")

    def scaled(j: int) -> Tuple[int, int]:  # the longer side 16·j, the other in proportion, both multiples of 16
        if w >= h:
            return 16 * j, max(16, int(round(h * j / w)) * 16)
        return max(16, int(round(w * j / h)) * 16), 16 * j
    j = largest(1, max(w, h) // 16 - 1, lambda j: fits(replace(inputs, width=scaled(j)[0], height=scaled(j)[1])))
    if j is not None:
        sw, sh = scaled(j)
        options.append(f"{sw}x{sh} with {f} frames")
    if not options:
        return ("no smaller size or frame count would fit (what does not fit here does not depend on the clip): "
                "free memory, or choose a smaller compute dtype")
    return "what would fit: " + " or ".join(options)


def free_vram_bytes(device) -> float:
    """Free memory of a CUDA device in bytes (what "auto" plans against); 0 for a non-CUDA device."""
    import torch

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return 0.0
    free, _total = torch.cuda.mem_get_info(device)
    return float(free)


def available_ram_bytes() -> float:
    """MemAvailable from /proc/meminfo in bytes (Linux), else psutil's `available` when installed (ComfyUI
    ships it); 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return 0.0
    return float(psutil.virtual_memory().available)


# --------------------------------------------------------------------------------------------------------------
# CLI: python -m mova_model plan


VARIANT_SIZES = {"360p": (640, 352), "720p": (1280, 720)}


def checked_plan_arguments(args, default_size: Tuple[int, int]) -> Tuple[int, int]:
    """The numbers `plan` and `plan --train` are given, each within its bound (`mova_model.bounds`); -> (width,
    height) from `args.size` ("WxH") or `default_size`. Raises `ValueError` with one sentence."""
    width, height = default_size
    if args.size:
        try:
            width, height = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise ValueError(f"--size must look like 640x352, got {args.size!r}") from None
    bounds.WIDTH.check("width", width)
    bounds.HEIGHT.check("height", height)
    bounds.FRAMES.check("--frames", args.frames)
    bounds.FPS.check("--fps", args.fps)
    bounds.VRAM_BUDGET_GB.check("--vram (GB)", args.vram)
    bounds.HOST_RAM_GB.check("--ram (GB)", args.ram)
    bounds.BANDWIDTH_GBPS.check("--pcie (GB/s)", args.pcie)
    bounds.TFLOPS.check("--tflops", args.tflops)
    if args.prefetch is not None:
        bounds.PREFETCH_DEPTH.check("--prefetch", args.prefetch)
    return width, height


def checkpoint_architecture(folder: Path) -> Architecture:
    """The architecture from the configs of checkpoint `folder` (`--checkpoint`); `ValueError` naming the folder
    when it is not a MOVA checkpoint."""
    from ..checkpoint.configs import MovaConfigs

    if not Path(folder).is_dir():
        raise ValueError(f"--checkpoint {folder}: not a folder (a MOVA checkpoint is a folder with model_index.json)")
    return Architecture.from_configs(MovaConfigs.from_folder(folder))


def plan_cli(argv: Optional[Sequence[str]] = None) -> int:
    """`plan --vram GB --ram GB --variant 360p|720p --size WxH --frames N [--fp8 | --weights gguf:Q4_K]`: the plan.

    Exit status 0 when the plan fits, 1 when it does not, 2 on bad arguments.
    """
    parser = CliParser(prog="python -m mova_model plan", description=plan_cli.__doc__)
    parser.add_argument("--vram", type=float, required=True, help="VRAM available, GB")
    parser.add_argument("--ram", type=float, required=True, help="host RAM budget, GB")
    parser.add_argument("--variant", choices=sorted(VARIANT_SIZES), default="360p")
    parser.add_argument("--size", help="WxH (default: the variant's native size)")
    parser.add_argument("--frames", type=int, default=193)
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--fp8", action="store_true", help="fp8 weights on the device")
    parser.add_argument("--weights", default=None,
                        help="weight storage: bf16, fp8 or gguf:TYPE (gguf:Q4_K, gguf:Q5_K, gguf:Q8_0, ...); with "
                             "--checkpoint holding GGUF files, their measured sizes are used")
    parser.add_argument("--prequantized", action="store_true", help="the checkpoint folder is already fp8")
    parser.add_argument("--cfg-passes", type=int, choices=(1, 2, 3), default=2,
                        help="denoiser passes per step: 1 without guidance, 2 for CFG, 3 for dual CFG")
    parser.add_argument("--prefetch", type=int, default=None, help="prefetch depth (default: planner's choice)")
    parser.add_argument("--pcie", type=float, default=25.0, help="host->device bandwidth, GB/s")
    parser.add_argument("--tflops", type=float, default=DEFAULT_TFLOPS, help="sustained bf16 TFLOP/s")
    parser.add_argument("--resident", action="store_true", help="require every block resident")
    parser.add_argument("--checkpoint", type=Path, help="read the architecture from this checkpoint's configs")
    args = parser.parse_or_status(list(argv or []))
    if isinstance(args, int):  # --help, or the parser's one `error:` line
        return args
    try:
        width, height = checked_plan_arguments(args, VARIANT_SIZES[args.variant])
        arch = None
        weights = "fp8" if args.fp8 or args.prequantized else "bf16"
        stored = "fp8" if args.prequantized else "bf16"
        measured: dict = {}
        if args.weights:
            weights = args.weights if args.weights.startswith("gguf:") else args.weights.lower()
            weights = "gguf:" + weights[5:].upper() if weights.startswith("gguf:") else weights
            stored = "gguf" if weights.startswith("gguf:") else ("fp8" if weights == "fp8" and args.prequantized
                                                                 else "bf16")
        if args.checkpoint is not None:
            from .stored_sizes import stored_weights
            arch = checkpoint_architecture(args.checkpoint)
            found = stored_weights(args.checkpoint)
            if found.stored == "gguf":
                weights, stored = found.weights, found.stored
                measured = {"bytes_per_param": found.bytes_per_param, "stem_bytes": found.stem_bytes}
        inputs = PlanInputs(vram_bytes=args.vram * GB, ram_bytes=args.ram * GB, width=width, height=height,
                            frames=args.frames, fps=args.fps, cfg_passes=args.cfg_passes,
                            weights=weights, stored=stored,
                            mode="resident" if args.resident else "budget", prefetch_depth=args.prefetch,
                            pcie_gbps=args.pcie, tflops=args.tflops, variant=args.variant, **measured)
        plan = plan_memory(inputs, arch)
    except (ValueError, OSError) as exc:
        return refuse(str(exc))
    sys.stdout.write(plan.format() + "\n")
    return 0 if plan.fits else 1
