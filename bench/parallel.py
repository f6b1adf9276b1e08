"""CFG-parallel and Ulysses scaling of one sampler step: step time and bytes each rank sends per collective.

Run from the repository root:

    .venv/bin/python -m bench.parallel                     # gloo on CPU: 1, 2 and 3 ranks, small random model
    .venv/bin/python -m bench.parallel --device cuda --ranks 1 2 4 --video-dim 5120 --video-heads 40 ...
    .venv/bin/python -m bench.parallel --paper             # the released model's traffic per step, no run

A "step" is what the sampler does per denoising step: the guidance branches (2 for text CFG, 3 for dual CFG)
through `joint_forward`, spread by `ParallelContext.run_branches` (CFG: one all-gather of the predictions;
Ulysses: all-to-alls around every self- and bridge attention, an all-gather of the head outputs). Every
configuration runs in fresh processes (torch.multiprocessing spawn, 127.0.0.1; NCCL with one GPU per rank
when --device cuda). Weights are random (`bench.denoiser.build`), so only times and bytes mean anything.
Bytes are counted by `parallel.comm.CommStats` as what one rank sends (rank 0 shown); `max |diff|` compares
each configuration's predictions with the one-rank run (0 expected for CFG; bf16 on GPUs, fp32 on CPU).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from typing import Dict, List, Sequence

import torch

logger = logging.getLogger("bench.parallel")

CONFIGS = {  # name -> (split, branches)
    "1 rank": (None, 2), "cfg": ("cfg", 2), "ulysses": ("ulysses", 2), "cfg+ulysses": ("cfg+ulysses", 2),
    "1 rank dual": (None, 3), "cfg dual": ("cfg", 3),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from bench.denoiser import parse_args as denoiser_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per rank)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank on CPU")
    p.add_argument("--paper", action="store_true", help="print the released model's traffic per step and exit")
    known, rest = p.parse_known_args(argv)
    defaults = ["--video-dim", "768", "--video-heads", "6", "--video-layers", "4", "--video-ffn", "2048",
                "--audio-dim", "768", "--audio-heads", "6", "--audio-layers", "4", "--audio-ffn", "2048",
                "--text-dim", "256", "--text-len", "64", "--video-grid", "5", "16", "18", "--repeat", "2"]
    model = denoiser_args(defaults + rest)
    for key, value in vars(known).items():
        setattr(model, key, value)
    return model


def _rank_main(rank: int, world: int, split, branches: int, port: int, args, out) -> None:
    from bench.denoiser import audio_steps_for, build
    from mova_model.network.denoiser import BridgeScales, joint_forward
    from mova_model.parallel import CommStats, init_parallel, layout_for
    from mova_model.sampling.guidance import BOTH_OFF, FULL, TEXT_OFF

    torch.set_num_threads(args.threads)
    device = torch.device(f"cuda:{rank}") if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    stats = CommStats()
    context = None
    if split is not None:
        cfg_degree = 3 if branches == 3 and split == "cfg+ulysses" else 2
        context = init_parallel(layout_for(split, world, cfg_degree), rank, world, device, 300.0,
                                f"tcp://127.0.0.1:{port}", stats)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    modules = [m.to(dtype) for m in build(args, str(device))]
    t, h, w = args.video_grid
    gen = torch.Generator().manual_seed(1)
    video_in = torch.randn(1, 36, t, h, w, generator=gen).to(device)
    audio_in = torch.randn(1, 128, audio_steps_for(t, args.fps), generator=gen).to(device)
    contexts = {True: torch.randn(1, args.text_len, args.text_dim, generator=gen).to(device),
                False: torch.randn(1, args.text_len, args.text_dim, generator=gen).to(device)}
    step_t = torch.full((1,), 700.0, device=device)
    chosen = (FULL, TEXT_OFF, BOTH_OFF)[:branches]

    def forward(branch):
        v, a = joint_forward(*modules, video_in, audio_in, contexts[branch.text], step_t, step_t, args.fps,
                             scales=BridgeScales(enabled=branch.bridge),
                             sequence=None if context is None else context.sequence)
        return v.float(), a.float()

    times, preds = [], None
    for i in range(args.warmup + args.repeat):
        if i == args.warmup:
            stats.reset()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if context is None:
            preds = {b: forward(b) for b in chosen}
        else:
            preds = context.run_branches(chosen, forward, i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    if rank == 0:
        out.put({"time": statistics.median(times), "calls": {k: v / args.repeat for k, v in stats.calls.items()},
                 "bytes": {k: v / args.repeat for k, v in stats.bytes_sent.items()},
                 "preds": {b.name: (v.cpu().numpy(), a.cpu().numpy()) for b, (v, a) in preds.items()}})  # by value
    if context is not None:
        context.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world: int, split, branches: int, args) -> Dict:
    ctx = torch.multiprocessing.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, split, branches, port, args, out)) for r in range(world)]
    for p in procs:
        p.start()
    result = out.get(timeout=3600)
    for p in procs:
        p.join(timeout=120)
    return result


def paper(out=sys.stdout) -> None:
    """Bytes one rank sends per denoising step for the released MOVA (bf16 activations, text CFG = 2 passes)."""
    video_dim, video_layers, audio_dim, audio_layers = 5120, 40, 1536, 30
    shared = min(video_layers, audio_layers)
    out.write("released MOVA, bytes one rank sends per step (2 guidance passes, bf16 activations)\n")
    out.write(f"{'clip':<6} {'video tok':>9} {'audio tok':>9} {'split':<12} {'ranks':>5} {'GB/rank/step':>13}"
              f" {'NVLink s':>9} {'PCIe4 s':>8}\n")
    for name, (frames, height, width) in {"360p": (193, 352, 640), "720p": (193, 704, 1280)}.items():
        nv = ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)
        na = (int(48000 * frames / 24.0) - 1) // 960 + 1
        preds = (16 * ((frames - 1) // 4 + 1) * (height // 8) * (width // 8) + 128 * na) * 4
        for split, ranks in (("cfg", 2), ("ulysses", 2), ("ulysses", 4), ("cfg+ulysses", 4), ("cfg+ulysses", 8)):
            cfg = 2 if split != "ulysses" else 1
            u = ranks // cfg
            passes = 2 // cfg
            total = preds * (cfg - 1) if cfg > 1 else 0
            if u > 1:
                frac = 2 * (u - 1) / u  # 2 bytes per bf16 value; the (u-1)/u leaves the rank
                per_pass = 0.0
                per_pass += video_layers * 4 * (nv / u) * video_dim * frac  # video self-attn: qkv + out
                per_pass += audio_layers * 4 * (na / u) * audio_dim * frac
                per_pass += shared * ((nv / u) * video_dim * 2 + 2 * (na / u) * video_dim) * frac  # a2v: q,out | kv
                per_pass += shared * ((na / u) * audio_dim * 2 + 2 * (nv / u) * audio_dim) * frac  # v2a: q,out | kv
                per_pass += (nv / u * 64 + na / u * 128) * 2 * (u - 1)  # head outputs all-gathered
                total += per_pass * passes
            gb = total / 1e9
            out.write(f"{name:<6} {nv:>9} {na:>9} {split:<12} {ranks:>5} {gb:>13.2f} {gb / 300:>9.3f} {gb / 25:>8.2f}\n")
    out.write("(NVLink: ~300 GB/s and PCIe 4.0 x16: ~25 GB/s achieved per direction, assumed, not measured)\n")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.paper:
        paper()
        return 0
    if args.device == "cuda" and torch.cuda.device_count() < max(args.ranks):
        sys.stderr.write(f"--device cuda needs {max(args.ranks)} GPUs, found {torch.cuda.device_count()}\n")
        return 2
    rows: List = []
    base: Dict[int, float] = {}
    reference: Dict[int, Dict] = {}
    plan = [("1 rank", 1), ("1 rank dual", 1)]
    for world in args.ranks:
        if world == 1:
            continue
        plan += [("cfg", world)] if world == 2 else []
        plan += [("cfg dual", world)] if world in (2, 3) else []
        if args.video_heads % world == 0 and args.audio_heads % world == 0:
            plan += [("ulysses", world)]
        if world >= 4 and world % 2 == 0 and args.video_heads % (world // 2) == 0:
            plan += [("cfg+ulysses", world)]
    for name, world in plan:
        split, branches = CONFIGS[name]
        logger.info("measuring %s on %d rank(s)", name, world)
        result = measure(world, split, branches, args)
        if split is None:
            base[branches] = result["time"]
            reference[branches] = result["preds"]
        result["max_diff"] = max(float(abs(got - want).max()) for name, pair in result["preds"].items()
                                 for got, want in zip(pair, reference[branches][name]))
        rows.append((name, world, branches, result))
    t, h, w = args.video_grid
    sys.stdout.write(f"\none sampler step on {args.device} ({args.threads} thread(s) per rank), video {args.video_dim}/"
                     f"{args.video_heads} heads/{args.video_layers} layers, audio {args.audio_dim}/{args.audio_heads}/"
                     f"{args.audio_layers}, video tokens {t * (h // 2) * (w // 2)}\n\n")
    sys.stdout.write(f"{'config':<12} {'ranks':>5} {'passes':>6} {'s/step':>8} {'speed-up':>8}  "
                     f"{'max |diff|':>10}  {'collective':<34} {'calls':>6} {'KiB sent/rank':>14}\n")
    for name, world, branches, result in rows:
        speed = base[branches] / result["time"]
        items = sorted(result["bytes"].items()) or [("-", 0)]
        for i, (what, nbytes) in enumerate(items):
            head = (f"{name:<12} {world:>5} {branches:>6} {result['time']:>8.3f} {speed:>8.2f} "
                    f"{result['max_diff']:>10.2e}" if i == 0 else " " * 53)
            calls = result["calls"].get(what, 0)
            sys.stdout.write(f"{head}  {what:<34} {calls:>6.0f} {nbytes / 1024:>14.1f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
