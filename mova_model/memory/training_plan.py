"""The memory plan of a LoRA training step (`python -m mova_model plan --train ...`).

Extends the sampling planner (`planner.py`, `sizes.py`) with what training adds: the LoRA parameters, their
gradients and AdamW moments (fp32, 16 bytes per parameter, kept on the device for every trained component),
per-block gradient checkpointing (the saved block inputs, offloaded to pinned host memory as the official
`use_gradient_checkpointing_offload` does, plus one block's forward and backward working set on the device),
and streaming in both passes (two `BlockStreamer`s of `depth + 1` slots each, every streamed byte moved twice
per step). The clip latents and caption embeddings are cached, so no encoder is on the device during a step.
Estimates, not measurements: see README "What was not verified".
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .sizes import GB, Architecture, PlanInputs, activation_bytes, execution_modules, margin_bytes
from .. import bounds
from ..cli_args import CliParser, refuse
from .planner import DEFAULT_TFLOPS, _stem_bytes, checked_plan_arguments, checkpoint_architecture

OFFICIAL_LOW_RESOURCE = "official low-resource trainer: ~18 GB VRAM + ~80 GB host RAM, ~600 s/step (RTX 4090, 360p)"
HOST_OVERHEAD = 3.0 * GB  # Python, torch, CUDA context on the host


def lora_params(arch: Architecture, rank: int, components: Sequence[str], targets: str = "official") -> int:
    """LoRA parameters `rank·(in + out)` summed over the wrapped Linear layers of `components`."""
    total = 0

    def tower(shape, count):
        d, f = shape.dim, shape.ffn_dim
        attn = 8 * rank * 2 * d  # q, k, v, o of self- and cross-attention, all dim -> dim
        ffn = 0 if targets == "attention" else 2 * rank * (d + f)
        return count * (attn + ffn)

    if "video_dit" in components:
        total += tower(arch.video, arch.video.num_layers)
    if "video_dit_2" in components:
        total += tower(arch.video, arch.video.num_layers)
    if "audio_dit" in components:
        total += tower(arch.audio, arch.audio.num_layers)
    if "dual_tower_bridge" in components:
        dv, da = arch.video.dim, arch.audio.dim
        per_layer = rank * (2 * (dv + dv) + 2 * (da + dv)) + rank * (2 * (da + da) + 2 * (dv + da))
        total += len(arch.bridge_layers) * per_layer
    return total


@dataclass
class TrainingPlan:
    inputs: PlanInputs
    experts: str
    rank: int
    prefetch_depth: int
    vram: Dict[str, float]
    host: Dict[str, float]
    page_cache_bytes: float
    step_s: float
    compute_s: float
    lora_parameters: int
    problems: List[str] = field(default_factory=list)
    mode: str = "streamed"
    """"all-resident" (every block of the trained experts, the audio DiT and the bridge on the device),
    "streamed" (blocks streamed in both passes, checkpoints offloaded) or "cannot-fit"."""

    @property
    def vram_peak(self) -> float:
        return sum(self.vram.values())

    @property
    def host_peak(self) -> float:
        return sum(self.host.values())

    @property
    def fits(self) -> bool:
        return not self.problems

    def format(self) -> str:
        i = self.inputs
        g = lambda b: f"{b / GB:6.2f} GB"  # noqa: E731
        how = (f"streamed (prefetch {self.prefetch_depth}), per-block checkpointing with offloaded checkpoints"
               if self.mode == "streamed" else "every block resident")
        lines = [f"MOVA LoRA training plan: {i.width}x{i.height}, {i.frames} frames, rank {self.rank}, experts "
                 f"{self.experts}, base weights {i.weights}, {how}, cached latents",
                 f"  budget            VRAM {g(i.vram_bytes)}  host RAM {g(i.ram_bytes)}",
                 f"  decision          {self.mode}",
                 f"  LoRA parameters   {self.lora_parameters / 1e6:.1f} M (fp32 weights + grads + AdamW moments)",
                 "  VRAM per step:"]
        lines += [f"    {k:<22}{g(v)}" for k, v in self.vram.items()]
        lines.append(f"    {'total':<22}{g(self.vram_peak)}")
        lines.append("  host RAM (anon):")
        lines += [f"    {k:<22}{g(v)}" for k, v in self.host.items()]
        lines.append(f"    {'total':<22}{g(self.host_peak)}   page cache (reclaimable) {g(self.page_cache_bytes)}")
        lines.append(f"  step time         {self.step_s:7.1f} s  (compute {self.compute_s:.1f} s at {i.tflops:.0f} TFLOP/s, "
                     f"PCIe {i.pcie_gbps:.0f} GB/s)")
        lines.append(f"  fits: {'yes' if self.fits else 'NO'}")
        lines += [f"  problem: {p}" for p in self.problems]
        lines.append(f"  compare: {OFFICIAL_LOW_RESOURCE}")
        return "\n".join(lines)


def plan_training(inputs: PlanInputs, arch: Optional[Architecture] = None, rank: int = 16, experts: str = "both",
                  targets: str = "official", prefetch_depth: int = 1,
                  gradient_checkpointing: bool = True) -> TrainingPlan:
    """Predict the device and host memory and the time of one training step (batch 1, no CFG), and decide where
    the blocks live: all resident when that fits the VRAM (`inputs.mode == "resident"`: always, or a problem),
    else streamed through both passes (always with per-block checkpointing), else "cannot-fit" with the
    numbers of both. With `experts="both"` both experts stay built while training alternates between them."""
    inputs.validate()
    arch = arch or Architecture.released()
    fp8 = inputs.weights == "fp8"
    modules = execution_modules(arch, inputs)
    experts_list = {"high": ["video_dit"], "low": ["video_dit_2"], "both": ["video_dit", "video_dit_2"]}[experts]
    components = experts_list + ["audio_dit", "dual_tower_bridge"]
    n_lora = lora_params(arch, rank, components, targets)
    slot = max(m.nbytes for m in modules)
    act = activation_bytes(arch, inputs)
    per_byte = 1.0 if fp8 else 2.0
    shared = min(arch.video.num_layers, arch.audio.num_layers)
    saved = (arch.video.num_layers * inputs.video_tokens * arch.video.dim
             + shared * inputs.audio_tokens(arch) * arch.audio.dim) * 2.0
    common = {"LoRA + grads + AdamW": 16.0 * n_lora,
              "block forward+backward": 2.0 * act,
              "residual + its gradient": 2.0 * 2.0 * inputs.video_tokens * arch.video.dim * 2,
              "fp8 dequant": 4.0 * arch.video.dim * arch.video.ffn_dim if fp8 else 0.0,
              "reserve": margin_bytes(inputs.vram_bytes)}
    streamed_vram = {"embeddings+heads": _stem_bytes(arch), "stream slots (2 passes)": 2.0 * (prefetch_depth + 1) * slot,
                     **common}
    extra_experts = len(experts_list) - 1
    expert_blocks = float(sum(m.nbytes for m in modules if m.kind == "video"))
    video_stem = 2.0 * arch.video.stem_params()
    resident_vram = {"embeddings+heads": _stem_bytes(arch) + extra_experts * video_stem,
                     "resident blocks": float(sum(m.nbytes for m in modules)) + extra_experts * expert_blocks,
                     **common}
    if gradient_checkpointing:
        resident_vram["checkpoints (block inputs)"] = saved
    else:  # every block's activations wait for the backward pass
        resident_vram["block forward+backward"] = (arch.video.num_layers + shared) * act
    resident_fits = sum(resident_vram.values()) <= inputs.vram_bytes
    streamed_fits = sum(streamed_vram.values()) <= inputs.vram_bytes
    if inputs.mode == "resident" or resident_fits or not streamed_fits and not gradient_checkpointing:
        mode, vram = "all-resident", resident_vram
    else:
        mode, vram = "streamed", streamed_vram
    expert_params = arch.video.num_layers * arch.video.block_params()[0]
    other_params = arch.audio.num_layers * arch.audio.block_params()[0] + len(arch.bridge_layers) * sum(
        v[0] for v in arch.bridge_params().values())
    weights = (len(experts_list) * expert_params + other_params) * per_byte
    if mode == "streamed":
        host = {"offloaded checkpoints": saved, "pinned staging": 2.0 * 2 * slot, "process overhead": HOST_OVERHEAD}
    else:
        host = {"process overhead": HOST_OVERHEAD}
    page_cache = 0.0
    if fp8 and inputs.stored != "fp8" and mode == "streamed":
        host["fp8 weights (quantized)"] = weights
    else:
        page_cache = weights  # memory-mapped from the checkpoint files
    forward_flops = sum(m.flops for m in modules)
    compute_s = 4.0 * forward_flops / (inputs.tflops * 1e12)  # forward, recompute, backward (2x)
    transfer_s = 2.0 * sum(m.nbytes for m in modules) / (inputs.pcie_gbps * GB) if mode == "streamed" else 0.0
    step_s = max(compute_s, transfer_s) * 1.1
    plan = TrainingPlan(inputs, experts, rank, prefetch_depth, vram, host, page_cache, step_s, compute_s, n_lora,
                        mode=mode)
    if plan.vram_peak > inputs.vram_bytes:
        plan.mode = "cannot-fit"
        other = ("" if mode == "streamed" or not gradient_checkpointing
                 else f" ({sum(streamed_vram.values()) / GB:.1f} GB with every block streamed)")
        plan.problems.append(f"needs {plan.vram_peak / GB:.1f} GB of VRAM {'streamed' if mode == 'streamed' else 'all resident'}"
                             f"{other}, {inputs.vram_bytes / GB:.1f} GB available: "
                             "fewer frames or a smaller size" + ("" if fp8 else ", or fp8 base weights"))
    if plan.host_peak > inputs.ram_bytes:
        plan.problems.append(f"needs {plan.host_peak / GB:.1f} GB of host RAM, budget {inputs.ram_bytes / GB:.1f} GB"
                             + ("" if inputs.stored == "fp8" else ": a pre-quantized fp8 folder keeps the weights in the page cache"))
    return plan


def plan_train_cli(argv: Optional[Sequence[str]] = None) -> int:
    """`plan --train --vram GB --ram GB [--size WxH --frames N --rank R --experts high|low|both --fp8]`."""
    parser = CliParser(prog="python -m mova_model plan --train", description=plan_train_cli.__doc__)
    parser.add_argument("--vram", type=float, required=True)
    parser.add_argument("--ram", type=float, required=True)
    parser.add_argument("--size", default="640x352")
    parser.add_argument("--frames", type=int, default=193)
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--experts", choices=("high", "low", "both"), default="both")
    parser.add_argument("--targets", choices=("official", "attention"), default="official")
    parser.add_argument("--fp8", action="store_true")
    parser.add_argument("--prequantized", action="store_true", help="the checkpoint folder is already fp8")
    parser.add_argument("--prefetch", type=int, default=1)
    parser.add_argument("--pcie", type=float, default=25.0)
    parser.add_argument("--tflops", type=float, default=DEFAULT_TFLOPS)
    parser.add_argument("--checkpoint", type=Path)
    args = parser.parse_or_status(list(argv or []))
    if isinstance(args, int):  # --help, or the parser's one `error:` line
        return args
    try:
        width, height = checked_plan_arguments(args, (640, 352))
        bounds.RANK.check("--rank", args.rank)
        arch = None if args.checkpoint is None else checkpoint_architecture(args.checkpoint)
        inputs = PlanInputs(vram_bytes=args.vram * GB, ram_bytes=args.ram * GB, width=width, height=height,
                            frames=args.frames, fps=args.fps, cfg_passes=1,
                            weights="fp8" if args.fp8 or args.prequantized else "bf16",
                            stored="fp8" if args.prequantized else "bf16", mode="budget", pcie_gbps=args.pcie,
                            tflops=args.tflops)
        plan = plan_training(inputs, arch, args.rank, args.experts, args.targets, args.prefetch)
    except (ValueError, OSError) as exc:
        return refuse(str(exc))
    sys.stdout.write(plan.format() + "\n")
    return 0 if plan.fits else 1
