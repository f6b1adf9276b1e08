"""GPU block streaming at real size: one MOVA video expert, real 360p token count, VRAM caps. GPU only.

Builds one video expert with the released dimensions (40 blocks, dim 5120, ffn 13824; 14.3B parameters)
and random weights, and runs its 40 blocks on the real 360p sequence (49 x 22 x 40 = 43,120 tokens, 512 text
tokens) in bf16, with weights stored in bf16 and in fp8 (e4m3fn + per-tensor scale, `fp8.quantize_module_`).

For each storage dtype: the all-resident pass time, then the pass time streamed through `BlockStreamer`
(`CudaCopyEngine`, pinned host copies, side stream + events) under VRAM caps of 24, 16 and 12 GB enforced
with `torch.cuda.set_per_process_memory_fraction` (an allocation over the cap raises). The number of
resident blocks for a cap is what fits after the measured activation peak and the streaming slots.
Prints per configuration: pass time, ratio to all-resident in the same dtype, peak VRAM, copy waits, whether
the output is bit-identical to the resident run; targets: <= 1.05x at 24 GB, <= 1.15x at 12 GB. Copy waits are
measured on the device (`bench/copy_waits.py`: CUDA events around each wait on the compute stream, the time
the GPU stood still for a copy) beside the host-side time, which is ~0 on a GPU whatever the stall.

Needs a CUDA GPU with ~40 GB free for the all-resident bf16 reference and ~64 GB of host RAM.
Usage (from the repository root): `python -m bench.gpu_streaming [--caps 24 16 12] [--passes 3] [--depth 2]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Optional

import torch
from torch import nn

from mova_model.checkpoint.configs import VideoDiTConfig
from mova_model.memory.fp8 import quantize_module_
from mova_model.memory.layout import BlockLayout
from mova_model.memory.planner import GB, Architecture, PlanInputs, activation_bytes
from mova_model.memory.streaming import BlockStreamer, CudaCopyEngine, ThrottledCopyEngine
from mova_model.network.ops import Operations
from mova_model.network.video_dit import VideoDiT

from bench.copy_waits import TimedCopyEngine

RELEASED_VIDEO = {"dim": 5120, "in_dim": 36, "ffn_dim": 13824, "out_dim": 16, "text_dim": 4096, "freq_dim": 256,
                  "eps": 1e-6, "patch_size": [1, 2, 2], "num_heads": 40, "num_layers": 40, "has_image_input": False}
GRID = (49, 22, 40)  # 360p: 193 frames -> 49 latent frames, 352/16 x 640/16 patches
SMOKE_VIDEO = dict(RELEASED_VIDEO, dim=256, ffn_dim=512, num_heads=2, num_layers=6, text_dim=256)
SMOKE_GRID = (3, 4, 4)


class Device:
    """The few device calls the bench needs; on the CPU (`--smoke`) memory figures are 0 and no cap applies."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.cuda else 0

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device) if self.cuda else 0

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def cap(self, nbytes: float) -> None:
        if self.cuda:
            total = torch.cuda.get_device_properties(self.device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, nbytes / total), self.device)

    def engine(self, pin: str):
        return CudaCopyEngine(self.device, pin=pin) if self.cuda else ThrottledCopyEngine()


@torch.no_grad()
def build_blocks(device: torch.device, fp8: bool, config: dict, seed: int = 0) -> tuple:
    """The expert (on meta except its blocks) with random block weights in host RAM (bf16, or fp8 + scales)."""
    dit = VideoDiT(VideoDiTConfig.from_dict(config), Operations())
    gen = torch.Generator(device=device).manual_seed(seed)
    for block in dit.blocks:
        block.to_empty(device=device)
        for sub in block.modules():
            for name, param in list(sub._parameters.items()):
                if param is None:
                    continue
                values = torch.randn(param.shape, generator=gen, device=device, dtype=torch.float32) * 0.02
                if isinstance(sub, (nn.LayerNorm, nn.RMSNorm)):
                    values += 1.0
                sub._parameters[name] = nn.Parameter(values.to(torch.bfloat16), requires_grad=False)
        if fp8:
            quantize_module_(block)
        block.to("cpu")
    return dit, list(dit.blocks)


def time_passes(fn, passes: int, dev: "Device") -> float:
    fn()
    dev.sync()
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        fn()
        dev.sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_dtype(fp8: bool, caps, passes: int, depth: int, smoke: bool, dev: Optional["Device"] = None) -> dict:
    """All-resident pass time and activation peak, then per VRAM cap (GB) the streamed pass: a dict with
    "label", "blocks", "block_bytes", "tokens", "resident_s", "weights", "activations", "estimate" and "caps"
    (one dict per cap: "cap", "fits", and when it fits "n_resident", "streamed_s", "ratio", "vram", "moved",
    "device_wait_s" and "host_wait_s" per pass, "identical", or "oom")."""
    dev = dev or DEV
    label = "fp8" if fp8 else "bf16"
    device = dev.device
    config, grid = (SMOKE_VIDEO, SMOKE_GRID) if smoke else (RELEASED_VIDEO, GRID)
    dim = config["dim"]
    dit, blocks = build_blocks(device, fp8, config)
    block_bytes = BlockLayout(blocks[0], "b").nbytes
    gen = torch.Generator(device=device).manual_seed(1)
    tokens = grid[0] * grid[1] * grid[2]
    x = torch.randn(1, tokens, dim, generator=gen, device=device, dtype=torch.bfloat16)
    context = torch.randn(1, 512, dim, generator=gen, device=device, dtype=torch.bfloat16)
    t_mod = torch.randn(1, 6, dim, generator=gen, device=device, dtype=torch.bfloat16) * 0.1
    freqs = dit.rope(grid, device)

    def forward(executor):
        def run():
            h = x
            for block in blocks:
                h = executor(block, h, context, t_mod, freqs)
            return h
        return run

    dev.reset_peak()
    base = dev.allocated()
    with BlockStreamer(blocks, device, prefetch_depth=0, resident=blocks, copy_engine=dev.engine("ring")) as resident:
        weights = dev.allocated() - base
        resident_s = time_passes(forward(resident), passes, dev)
        reference = forward(resident)()
        peak = dev.peak() - base
    activations = peak - weights
    estimate = activation_bytes(Architecture.released(), PlanInputs(vram_bytes=80 * GB, ram_bytes=128 * GB))
    result = {"label": label, "blocks": len(blocks), "block_bytes": block_bytes, "tokens": tokens,
              "resident_s": resident_s, "weights": weights, "activations": activations, "estimate": estimate,
              "caps": []}
    for cap in caps:
        cap_bytes = cap * GB
        slots = (depth + 1) * block_bytes
        room = cap_bytes - activations * 1.05 - slots - 0.5 * GB
        row = {"cap": cap, "fits": room >= 0, "slots": slots}
        result["caps"].append(row)
        if room < 0:
            continue
        n_resident = 0 if smoke else max(0, min(len(blocks), int(room // block_bytes)))
        dev.reset_peak()
        dev.cap(cap_bytes + base)
        engine = TimedCopyEngine(dev.engine("all"))
        streamer = BlockStreamer(blocks, device, prefetch_depth=depth, resident=blocks[:n_resident],
                                 copy_engine=engine)
        try:
            with streamer:
                streamed_s = time_passes(forward(streamer), passes, dev)
                identical = torch.equal(forward(streamer)(), reference)
                calls = passes + 2  # warm-up, timed passes, the equality check
                row.update(n_resident=n_resident, streamed_s=streamed_s, ratio=streamed_s / resident_s,
                           vram=dev.peak() - base, moved=(len(blocks) - n_resident) * block_bytes,
                           device_wait_s=engine.device_wait_s() / calls, host_wait_s=streamer.stats.wait_s / calls,
                           identical=identical)
        except torch.cuda.OutOfMemoryError as exc:
            row["oom"] = exc.__class__.__name__
        finally:
            dev.cap(float("inf"))
    blocks.clear()
    del dit
    dev.reset_peak()
    return result


def run_dtype(fp8: bool, caps, passes: int, depth: int, smoke: bool) -> None:
    r = measure_dtype(fp8, caps, passes, depth, smoke)
    label, out = r["label"], sys.stdout.write
    out(f"[{label}] {r['blocks']} blocks x {r['block_bytes'] / 1e9:.3f} GB, {r['tokens']} tokens; all-resident "
        f"{r['resident_s']:.3f} s/pass, weights {r['weights'] / GB:.2f} GB, activation peak {r['activations'] / GB:.2f} GB "
        f"(planner estimate at 360p {r['estimate'] / GB:.2f} GB incl. audio and slack)\n")
    for c in r["caps"]:
        cap = c["cap"]
        if not c["fits"]:
            out(f"[{label}] cap {cap:>4} GB: does not fit (activations {r['activations'] / GB:.2f} GB + slots "
                f"{c['slots'] / GB:.2f} GB)\n")
        elif "oom" in c:
            out(f"[{label}] cap {cap:>4} GB: out of memory ({c['oom']})\n")
        else:
            out(f"[{label}] cap {cap:>4} GB: {c['n_resident']:2d} resident / {r['blocks'] - c['n_resident']:2d} streamed, "
                f"{c['streamed_s']:.3f} s/pass = {c['ratio']:.3f}x resident, peak VRAM {c['vram'] / GB:.2f} GB, moved "
                f"{c['moved'] / GB:.2f} GB/pass ({c['moved'] / GB / c['streamed_s']:.1f} GB/s), copy waits "
                f"{c['device_wait_s']:.3f} s/pass on the device ({c['host_wait_s']:.3f} s/pass on the host), "
                f"identical={'yes' if c['identical'] else 'no'}\n")


def main(argv=None) -> int:
    global DEV
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caps", type=float, nargs="+", default=[24, 16, 12], help="VRAM caps, GB")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny dimensions on the CPU (checks the script runs; the numbers mean nothing)")
    args = parser.parse_args(argv)
    if args.smoke:
        DEV = Device(torch.device("cpu"))
    elif not torch.cuda.is_available():
        sys.stderr.write("bench/gpu_streaming.py needs a CUDA GPU; none is available here (--smoke runs a tiny CPU check)\n")
        return 2
    else:
        DEV = Device(torch.device("cuda"))
        sys.stdout.write(f"device: {torch.cuda.get_device_name(DEV.device)}, torch {torch.__version__}\n")
    with torch.no_grad():
        for dtype in args.dtypes:
            run_dtype(dtype == "fp8", args.caps, args.passes, args.depth, args.smoke)
    return 0


DEV = Device(torch.device("cpu"))

if __name__ == "__main__":
    sys.exit(main())
