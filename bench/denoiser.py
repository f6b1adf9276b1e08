"""Step time of one `joint_forward` (video tower + audio tower + bridge) on random weights.

Run from the repository root:

    .venv/bin/python -m bench.denoiser                      # mid-size default, fp32 and bf16, CPU
    .venv/bin/python -m bench.denoiser --dtypes bf16 --device cuda --video-grid 13 30 40

The default configuration is a few hundred million parameters (video 1024 wide / 8 heads of 128 / 8 layers,
audio 512 / 4 heads / 8 layers, full bridge) on 8 x 32 x 32 video latents (2048 video tokens) and the matching
audio length. Weights are random (`ops.init_random_`), so only the timing means anything.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from typing import List, Sequence

import torch

from mova_model.network.audio_dit import AudioDiT
from mova_model.network.bridge import DualTowerBridge
from mova_model.checkpoint.configs import AudioDiTConfig, BridgeConfig, VideoDiTConfig
from mova_model.network.denoiser import BridgeScales, joint_forward
from mova_model.network.ops import Operations, init_random_
from mova_model.network.video_dit import VideoDiT

logger = logging.getLogger("bench.denoiser")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def bench_dtype(name: str | None, device: str) -> torch.dtype:
    """`--dtype` (fp32/bf16/fp16) as a torch dtype; without one, bf16 on CUDA and float32 elsewhere."""
    if name:
        return DTYPES[name]
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video-dim", type=int, default=1024)
    p.add_argument("--video-heads", type=int, default=8)
    p.add_argument("--video-layers", type=int, default=8)
    p.add_argument("--video-ffn", type=int, default=4096)
    p.add_argument("--audio-dim", type=int, default=512)
    p.add_argument("--audio-heads", type=int, default=4)
    p.add_argument("--audio-layers", type=int, default=8)
    p.add_argument("--audio-ffn", type=int, default=2048)
    p.add_argument("--text-dim", type=int, default=4096)
    p.add_argument("--text-len", type=int, default=512)
    p.add_argument("--video-grid", type=int, nargs=3, default=[8, 32, 32], metavar=("T", "H", "W"),
                   help="video latent frames, height, width (tokens = T*H*W/4)")
    p.add_argument("--fps", type=float, default=24.0)
    p.add_argument("--batch", type=int, default=1, help="batch size (2 = cond and uncond in one pass)")
    p.add_argument("--no-bridge", action="store_true", help="run with the bridge switched off")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave the default)")
    return p.parse_args(argv)


def build(args: argparse.Namespace, device: str):
    ops = Operations()
    video = VideoDiT(VideoDiTConfig.from_dict(dict(
        dim=args.video_dim, in_dim=36, ffn_dim=args.video_ffn, out_dim=16, text_dim=args.text_dim, freq_dim=256,
        eps=1e-6, patch_size=[1, 2, 2], num_heads=args.video_heads, num_layers=args.video_layers,
        has_image_input=False)), ops)
    audio = AudioDiT(AudioDiTConfig.from_dict(dict(
        dim=args.audio_dim, in_dim=128, ffn_dim=args.audio_ffn, out_dim=128, text_dim=args.text_dim, freq_dim=256,
        eps=1e-6, patch_size=[1], num_heads=args.audio_heads, num_layers=args.audio_layers, has_image_input=False,
        vae_type="dac")), ops)
    head_dim = args.video_dim // args.video_heads
    bridge = DualTowerBridge(BridgeConfig.from_dict(dict(
        visual_layers=args.video_layers, audio_layers=args.audio_layers, visual_hidden_dim=args.video_dim,
        audio_hidden_dim=args.audio_dim, audio_fps=50.0, head_dim=head_dim, interaction_strategy="full",
        apply_cross_rope=True)), ops)
    gen = torch.Generator().manual_seed(0)
    return [init_random_(m, gen).eval().to(device) for m in (video, audio, bridge)]


def audio_steps_for(latent_frames: int, fps: float) -> int:
    """Audio latent length of the clip (48 kHz, hop 960), as the official pipeline sizes it."""
    frames = (latent_frames - 1) * 4 + 1
    samples = int(48000 * frames / fps)
    return (samples - 1) // 960 + 1


def time_steps(modules, inputs, scales, warmup: int, repeat: int, device: str) -> List[float]:
    video, audio, bridge = modules
    times = []
    for i in range(warmup + repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        joint_forward(video, audio, bridge, **inputs, scales=scales)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t, h, w = args.video_grid
    audio_len = audio_steps_for(t, args.fps)
    gen = torch.Generator().manual_seed(1)
    inputs = dict(
        video_input=torch.randn(args.batch, 36, t, h, w, generator=gen).to(args.device),
        audio_latents=torch.randn(args.batch, 128, audio_len, generator=gen).to(args.device),
        context=torch.randn(args.batch, args.text_len, args.text_dim, generator=gen).to(args.device),
        video_timestep=torch.full((args.batch,), 700.0, device=args.device),
        audio_timestep=torch.full((args.batch,), 700.0, device=args.device),
        video_fps=args.fps,
    )
    scales = BridgeScales(enabled=not args.no_bridge)
    modules = build(args, args.device)
    counts = [sum(p.numel() for p in m.parameters()) / 1e6 for m in modules]
    video_tokens = t * (h // 2) * (w // 2)
    rows = []
    for name in args.dtypes:
        modules = [m.to(DTYPES[name]) for m in modules]
        logger.info("timing %s: %d warm-up + %d timed steps", name, args.warmup, args.repeat)
        times = time_steps(modules, inputs, scales, args.warmup, args.repeat, args.device)
        rows.append((name, statistics.mean(times), min(times), max(times)))
    out = sys.stdout
    out.write(f"\njoint_forward on {args.device} ({torch.get_num_threads()} threads), batch {args.batch}, "
              f"bridge {'off' if args.no_bridge else 'on'}\n")
    out.write(f"params: video {counts[0]:.1f} M, audio {counts[1]:.1f} M, bridge {counts[2]:.1f} M, "
              f"total {sum(counts):.1f} M\n")
    out.write(f"tokens: video {video_tokens} (grid {t}x{h // 2}x{w // 2}), audio {audio_len}, text {args.text_len}\n\n")
    out.write(f"{'dtype':<6} {'mean s/step':>12} {'min s':>8} {'max s':>8}\n")
    for name, mean, low, high in rows:
        out.write(f"{name:<6} {mean:>12.3f} {low:>8.3f} {high:>8.3f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
