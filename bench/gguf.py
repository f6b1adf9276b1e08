"""GGUF types side by side, in one run: quality against bf16, size at real scale, dequantization throughput.

    .venv/bin/python -m bench.gguf                    # CPU: mid-size random model, real-size byte counts
    .venv/bin/python -m bench.gguf --device cuda      # a GPU: throughput and the dequant scratch on the device

1. Quality: a mid-size random-weight MOVA (video 512 x 4 layers, audio 256 x 4, the bridge on every layer) is
   written in the official layout with its DiT weights in bf16 (the reference, as the released weights are
   stored), then once per type with the four DiT components as GGUF files made from those bf16 weights with the
   rules of `quantize --format gguf` (keep-high-precision list, F16 for rows the block does not divide).
   Per type: relative L2 error of one joint denoiser pass (video and audio predictions, timestep 700, random
   inputs) and of a whole 10-step text-CFG clip (final video and audio latents, same seed), fp32 compute.
   Q8_0 ... Q4_0 are quantized by the `gguf` package; the K-quants by `bench/gguf_kquants.py` (round to
   nearest, min/max scales, no search): llama.cpp's quantizer gives lower errors at the same type.
2. Size: GB per video expert (14.29B parameters) at real size, from the key manifests in
   `../shared/spec/manifests`, with the same per-tensor type rules; bits per weight over the expert.
3. Throughput: dequantizing a [5120, 13824] matrix (the video FFN) into bf16, per type: M weights/s and GB/s of
   stored GGUF bytes read; on CUDA also the peak device memory of one call against the planner's scratch.
Random weights are not real ones: real activations and outliers change the errors; only real weights can say
how a clip looks (run `python -m mova_model quantize ... --format gguf` on the released checkpoint).
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from bench.gguf_kquants import ENCODERS as K_ENCODERS
from bench.gguf_kquants import check_roundtrip
from bench.gguf_kquants import quantize as k_quantize
from mova_model.checkpoint.gguf_write import GGUFTensor, write_gguf_file
from mova_model.checkpoint.tiny import TinySpec, write_tiny_checkpoint
from mova_model.checkpoint.weights import SafetensorsStore
from mova_model.memory.gguf_quantize import GGUF_ARCHITECTURES, encode, gguf_tensor_type
from mova_model.network.gguf_dequant import FLOAT_TYPES, GGUF_QUANT_SIZES, bytes_per_weight, dequantize

logger = logging.getLogger("bench.gguf")

TYPES = ("Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "Q3_K", "Q2_K")
DITS = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")
MID = TinySpec(z_dim=4, text_dim=64, video_dim=512, video_heads=4, video_layers=4, audio_dim=256, audio_heads=4,
               audio_layers=4, bridge_head_dim=64)
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--types", nargs="+", default=list(TYPES))
    p.add_argument("--size", default="128x128", help="clip WxH of the quality part")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--manifests", type=Path, default=SHARED / "spec" / "manifests" / "MOVA-360p")
    p.add_argument("--repeat", type=int, default=3, help="timed dequantizations per type")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    return p.parse_args(argv)


# -- writing the checkpoints ---------------------------------------------------------------------------------------
def _encode(values: torch.Tensor, qtype: str) -> np.ndarray:
    if qtype in K_ENCODERS:
        return k_quantize(values.to(torch.float32).numpy(), qtype)
    return encode(values if values.dim() > 1 else values, qtype)


def write_bf16_reference(source: Path, dest: Path) -> Path:
    """`source` with the DiT weights stored in bf16 (the other components as they are)."""
    from safetensors.torch import save_file

    shutil.copytree(source, dest)
    for component in DITS:
        store = SafetensorsStore(source / component, component).check()
        for path in (dest / component).glob("*.safetensors*"):
            path.unlink()
        save_file({k: store.get_tensor(k).to(torch.bfloat16).contiguous() for k in store.tensors},
                  str(dest / component / "diffusion_pytorch_model.safetensors"))
    return dest


def write_gguf_checkpoint(reference: Path, dest: Path, target: str) -> Dict[str, int]:
    """`reference` with every DiT component as one GGUF file of `target` (the quantize rules); -> types used."""
    shutil.copytree(reference, dest, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    used: Dict[str, int] = {}
    for component in DITS:
        store = SafetensorsStore(reference / component, component).check()
        entries = []
        for key in sorted(store.tensors):
            info = store.info(key)
            qtype = gguf_tensor_type(key, info.shape, info.torch_dtype, target)
            used[qtype] = used.get(qtype, 0) + 1
            entries.append(GGUFTensor(key, qtype, tuple(info.shape),
                                      lambda key=key, qtype=qtype: _encode(store.get_tensor(key), qtype)))
        write_gguf_file(dest / component / f"{component}.gguf", entries, GGUF_ARCHITECTURES[component])
    # the ignore pattern left the other components' weights out too: copy them back
    for component in ("text_encoder", "video_vae", "audio_vae"):
        for path in (reference / component).glob("*.safetensors*"):
            shutil.copy2(path, dest / component / path.name)
    return used


# -- quality --------------------------------------------------------------------------------------------------------
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def quality(args: argparse.Namespace, work: Path) -> List[Tuple[str, float, float, float, float, Dict[str, int]]]:
    from mova_model.checkpoint.folder import MovaCheckpoint
    from mova_model.network.denoiser import joint_forward
    from mova_model.sampling.pipeline import MovaPipeline

    source = write_tiny_checkpoint(work / "source", seed=0, spec=MID)
    reference = write_bf16_reference(source, work / "bf16")
    width, height = (int(v) for v in args.size.split("x"))
    ref_pipe = MovaPipeline.from_pretrained(reference, dtype=torch.float32)
    cond = ref_pipe.prepare_conditioning("a man says hello in a quiet kitchen", "static, blurry", None,
                                         width=width, height=height, num_frames=args.frames, video_fps=24.0)
    video_shape, audio_shape = ref_pipe.latent_shapes(width, height, args.frames, 24.0)
    gen = torch.Generator().manual_seed(1)
    z = video_shape[1]
    pass_inputs = dict(
        video_input=torch.randn(1, 2 * z + 4, *video_shape[2:], generator=gen),
        audio_latents=torch.randn(*audio_shape, generator=gen), context=cond.prompt_embeds,
        video_timestep=torch.tensor([700.0]), audio_timestep=torch.tensor([700.0]), video_fps=24.0)

    def one_pass(folder: Path) -> Tuple[torch.Tensor, torch.Tensor]:
        checkpoint = MovaCheckpoint.open(folder)
        modules = [checkpoint.build(c) for c in ("video_dit", "audio_dit", "dual_tower_bridge")]
        return joint_forward(*modules, **pass_inputs)

    ref_pass = one_pass(reference)
    ref_clip = ref_pipe.sample(cond, seed=5, steps=args.steps)
    rows = []
    for qtype in args.types:
        started = time.perf_counter()
        folder = work / qtype
        used = write_gguf_checkpoint(reference, folder, qtype)
        video, audio = one_pass(folder)
        clip = MovaPipeline.from_pretrained(folder, dtype=torch.float32).sample(cond, seed=5, steps=args.steps)
        rows.append((qtype, _rel(video, ref_pass[0]), _rel(audio, ref_pass[1]), _rel(clip.video, ref_clip.video),
                     _rel(clip.audio, ref_clip.audio), used))
        logger.info("%s: done in %.0f s", qtype, time.perf_counter() - started)
        shutil.rmtree(folder)
    return rows


# -- size at real scale ---------------------------------------------------------------------------------------------
def read_manifest(path: Path) -> List[Tuple[str, Tuple[int, ...]]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip() or line.startswith("key\t"):
            continue
        key, shape, _ = line.split("\t")[:3]
        rows.append((key, tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())))
    return rows


def expert_bytes(manifest: List[Tuple[str, Tuple[int, ...]]], target: str) -> float:
    total = 0.0
    for key, shape in manifest:
        numel = math.prod(shape)
        if target in ("bf16", "fp8"):
            quantized = target == "fp8" and len(shape) == 2 and not any(
                key.startswith(p) for p in ("time_embedding.", "time_projection.", "head."))
            total += numel * (1 if quantized else 2) + (4 if quantized else 0)
            continue
        total += numel * bytes_per_weight(gguf_tensor_type(key, shape, torch.bfloat16, target))
    return total


# -- throughput -----------------------------------------------------------------------------------------------------
def throughput(qtype: str, device: str, repeat: int) -> Tuple[float, float, float]:
    """(M weights/s, GB/s of stored bytes, peak device bytes of one call or nan) dequantizing the video FFN."""
    shape = (5120, 13824) if device != "cpu" else (1280, 13824)
    block, size = GGUF_QUANT_SIZES[qtype]
    raw = torch.randint(0, 256, (shape[0] * shape[1] // block * size,), dtype=torch.uint8)
    halves = {"Q2_K": (80, 82), "Q3_K": (108,), "Q6_K": (208,)}.get(qtype, (0, 2) if qtype in ("Q4_1", "Q5_1", "Q4_K", "Q5_K") else (0,))
    blocks = raw.view(-1, size)
    for offset in halves:  # finite scales
        blocks[:, offset:offset + 2] = torch.full((blocks.shape[0], 1), 0.01, dtype=torch.float16).view(torch.uint8)
    raw = raw.to(device)
    dequantize(raw, qtype, shape, torch.bfloat16)
    peak = float("nan")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = dequantize(raw, qtype, shape, torch.bfloat16)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
    start = time.perf_counter()
    for _ in range(repeat):
        dequantize(raw, qtype, shape, torch.bfloat16)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeat
    numel = shape[0] * shape[1]
    return numel / seconds / 1e6, raw.numel() / seconds / 1e9, peak


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = sys.stdout
    for qtype in K_ENCODERS:
        check_roundtrip(qtype)
    rows = []
    if not args.skip_quality and args.device == "cpu":
        with tempfile.TemporaryDirectory(prefix="bench-gguf-") as work:
            rows = quality(args, Path(work))
    manifest = read_manifest(args.manifests / "video_dit.tsv")
    params = sum(math.prod(s) for _, s in manifest)
    sizes = {t: expert_bytes(manifest, t) for t in ["bf16", "fp8"] + list(args.types)}
    speed = {t: throughput(t, args.device, args.repeat) for t in args.types}
    out.write(f"\nGGUF types ({torch.get_num_threads()} CPU threads, device {args.device}); quality on a mid-size random "
              f"model (video {MID.video_dim}x{MID.video_layers}, audio {MID.audio_dim}x{MID.audio_layers}), "
              f"{args.size}x{args.frames}, {args.steps}-step text-CFG clip, fp32 compute, vs bf16 weights\n\n")
    out.write("| type | pass video rel L2 | pass audio rel L2 | clip video rel L2 | clip audio rel L2 | GB per expert "
              "(real size) | bits/weight | dequant M weights/s | GB/s read |\n|---|---|---|---|---|---|---|---|---|\n")
    out.write(f"| bf16 | 0 | 0 | 0 | 0 | {sizes['bf16'] / 1e9:.2f} | {8 * sizes['bf16'] / params:.2f} | – | – |\n")
    out.write(f"| fp8 (ours) | – | – | – | – | {sizes['fp8'] / 1e9:.2f} | {8 * sizes['fp8'] / params:.2f} | – | – |\n")
    by_type = {r[0]: r for r in rows}
    for qtype in args.types:
        r = by_type.get(qtype)
        errors = " | ".join(f"{v:.2e}" for v in r[1:5]) if r else "– | – | – | –"
        mws, gbs, peak = speed[qtype]
        out.write(f"| {qtype} | {errors} | {sizes[qtype] / 1e9:.2f} | {8 * sizes[qtype] / params:.2f} | {mws:.0f} | "
                  f"{gbs:.2f} |\n")
    if args.device.startswith("cuda"):
        from mova_model.network.gguf_dequant import CHUNK_WEIGHTS, SCRATCH_BYTES_PER_WEIGHT

        planned = 2 * 5120 * 13824 + min(5120 * 13824, CHUNK_WEIGHTS) * SCRATCH_BYTES_PER_WEIGHT
        out.write("\n| type | peak device bytes of one FFN dequant | planner's scratch |\n|---|---|---|\n")
        for qtype in args.types:
            out.write(f"| {qtype} | {speed[qtype][2] / 1e6:.0f} MB | {planned / 1e6:.0f} MB |\n")
    if rows:
        out.write("\nTensors per type over the four DiT files: "
                  + "; ".join(f"{r[0]}: " + ", ".join(f"{k} {v}" for k, v in sorted(r[5].items())) for r in rows[:2]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
