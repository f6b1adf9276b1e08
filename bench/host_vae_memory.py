"""Host RAM of the video VAE on the CPU: the memory plan's estimate against the measured peak.

The CPU memory plan (`mova_model.memory.planner`, mode "cpu") refuses a clip whose VAE encode or decode cannot
fit the host RAM, with `mova_model.memory.sizes.host_vae_bytes` as the estimate. This bench measures what the
estimate stands for: for each clip size, a fresh process builds the checkpoint's video VAE (float32, as on the
CPU), runs one warm-up call, resets the kernel's peak-RSS counter (`/proc/self/clear_refs` 5) and runs
- encode: `conditioning.first_frame_condition` (the Conditioner's whole-clip encode), or
- decode: `MovaPipeline.decode_video` (the Decoder's decode + IMAGE conversion),
then reads VmHWM. The estimate minus the VAE weights (already resident before the reset) is compared with the
peak growth: `ratio = estimate / measured` must stay >= 1 (the plan errs on the safe side).

Usage (repository root): `python -m bench.host_vae_memory [--checkpoint DIR] [--sizes 256x256x33,512x512x9]`
(default: a fresh tiny checkpoint). Prints a table, then `min_ratio=<...>`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import gc, json, sys, torch
from mova_model.sampling.conditioning import first_frame_condition
from mova_model.sampling.pipeline import JointLatents, MovaPipeline

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

folder, phase, w, h, f = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
pipe = MovaPipeline.from_pretrained(folder)
vae = pipe.video_vae()
z = pipe.configs.video_vae.z_dim
if phase == "encode":
    first_frame_condition(vae, torch.zeros(1, 3, 16, 16), 5)
    run = lambda: first_frame_condition(vae, torch.zeros(1, 3, h, w), f)
else:
    pipe.decode_video(torch.zeros(1, z, 1, 2, 2))
    latents = JointLatents(torch.zeros(1, z, (f - 1) // 4 + 1, h // 8, w // 8), torch.zeros(1, 8, 4), w, h, f, 24.0, 0)
    run = lambda: pipe.decode_video(latents)
gc.collect()
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS:")
run()
print("RESULT " + json.dumps({"growth": status("VmHWM:") - base}))
"""


def measure(folder: Path, phase: str, w: int, h: int, f: int) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), phase, str(w), str(h), str(f)],
                         capture_output=True, text=True, check=True)
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return int(json.loads(line[len("RESULT "):])["growth"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.host_vae_memory", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, help="a MOVA checkpoint folder (default: a fresh tiny one)")
    parser.add_argument("--sizes", default="256x256x33,512x512x9", help="WxHxF clips, comma-separated")
    args = parser.parse_args(argv)

    from mova_model.checkpoint.configs import MovaConfigs
    from mova_model.memory.sizes import Architecture, PlanInputs, host_vae_bytes

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.checkpoint
        if folder is None:
            from mova_model.checkpoint.tiny import write_tiny_checkpoint
            folder = write_tiny_checkpoint(Path(tmp) / "MOVA-tiny")
        arch = Architecture.from_configs(MovaConfigs.from_folder(folder))
        ratios = []
        print(f"{'clip':>14} {'phase':>7} {'measured':>10} {'estimate':>10} {'ratio':>6}")
        for size in args.sizes.split(","):
            w, h, f = (int(v) for v in size.lower().split("x"))
            inputs = PlanInputs(vram_bytes=1, ram_bytes=1, width=w, height=h, frames=f, device="cpu", compute_bytes=4)
            for phase in ("encode", "decode"):
                estimate = host_vae_bytes(arch, inputs, f"VAE {phase}") - 4.0 * arch.vae_params
                measured = measure(Path(folder), phase, w, h, f)
                ratios.append(estimate / measured)
                print(f"{size:>14} {phase:>7} {measured / 1e6:8.0f}MB {estimate / 1e6:8.0f}MB {ratios[-1]:6.2f}")
        print(f"min_ratio={min(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
