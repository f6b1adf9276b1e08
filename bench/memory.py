"""Host memory of sampling: eager loading (the official way) vs memory-mapped weights streamed under a budget.

1. Writes a synthetic random-weight checkpoint in the official folder layout (same file names, configs and
   key layout; video experts sharded in three files with an index) whose component sizes keep MOVA's ratios:
   every width is the real one divided by `--scale` (5: ~3 GB in bf16; `--quick`: 8, ~1.2 GB), layer counts
   are the real ones (40 video blocks, 30 audio blocks, 30 bridge layers, 24 UMT5 layers). The VAEs and the
   tokenizer are the small ones of `mova_model.checkpoint.tiny` (they are ~1 % of the real checkpoint).
2. Runs two fresh processes that sample the same few steps (text CFG, 2 passes per step, expert switch at the
   boundary) with the lead's sampler (`mova_model.sampling.sampler.sample`), from the same injected noise and random
   text states (the text encoder is loaded but not run):
   - eager: every tensor of every component copied into RAM, as the official `from_pretrained` does;
   - streamed: components memory-mapped (`MovaCheckpoint.build`), the low-noise expert built only at the
     switch, the high-noise one released then; blocks streamed through `BlockStreamer` into a device budget
     decided by the planner. The "device" is the CPU itself (`ThrottledCopyEngine`, unpaced): resident
     blocks and streaming slots are separate anonymous buffers, exactly what a GPU would hold.
   Each process samples /proc/self/status RssAnon every 5 ms; mapped file pages (RssFile) are not counted.
3. Prints both peaks and `peak_rss_ratio=<streamed peak anonymous RSS / eager> identical=<yes|no>` (target
   <= 0.35; identical = the final latents of both runs are bit-identical).

Usage (from the repository root): `python -m bench.memory [--quick] [--dir DIR]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Optional

import torch

GB = 1e9


# ---------------------------------------------------------------------------------------------------- checkpoint


def synthetic_configs(scale: int, vocab: int) -> Dict[str, dict]:
    """Official-layout configs with every width divided by `scale` (head dims kept at 128 / 64)."""
    from mova_model.checkpoint.tiny import TinySpec, tiny_configs

    def width(real: int, multiple: int) -> int:
        return max(multiple, round(real / scale / multiple) * multiple)

    video_dim, audio_dim, text_dim = width(5120, 128), width(1536, 64), width(4096, 64)
    spec = TinySpec(z_dim=16, text_dim=text_dim, video_dim=video_dim, video_heads=video_dim // 128, video_layers=40,
                    audio_dim=audio_dim, audio_heads=audio_dim // 64, audio_layers=30, bridge_head_dim=64,
                    audio_latent_dim=128, vae_base_dim=16)
    configs = tiny_configs(spec, vocab)
    configs["video_dit"]["ffn_dim"] = width(13824, 64)
    configs["video_dit_2"] = dict(configs["video_dit"])
    configs["audio_dit"]["ffn_dim"] = width(8960, 64)
    configs["text_encoder"].update(d_ff=width(10240, 64), d_kv=64, num_heads=text_dim // 64, num_layers=24,
                                   num_decoder_layers=24)
    return configs


def write_checkpoint(dest: Path, scale: int, seed: int = 0) -> None:
    """Write the synthetic checkpoint (random weights, bf16 for the DiTs and the text encoder)."""
    from mova_model.checkpoint.folder import build_meta_module
    from mova_model.memory.quantize import write_safetensors_streaming
    from mova_model.checkpoint.tiny import CONFIG_CLASSES, write_tiny_checkpoint

    write_tiny_checkpoint(dest, seed=seed)  # tokenizer, scheduler, model_index, small VAEs
    vocab = json.loads((dest / "text_encoder" / "config.json").read_text())["vocab_size"]
    configs = synthetic_configs(scale, vocab)
    gen = torch.Generator().manual_seed(seed)
    for component in ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge", "text_encoder",
                      "audio_vae", "video_vae"):
        folder = dest / component
        for old in folder.glob("*.safetensors*"):
            old.unlink()
        (folder / "config.json").write_text(json.dumps(configs[component], indent=2, sort_keys=True))
        module = build_meta_module(component, CONFIG_CLASSES[component].from_dict(configs[component]))
        state = {k: v for k, v in module.state_dict().items() if k != "encoder.embed_tokens.weight"}
        dtype = torch.float32 if component in ("audio_vae", "video_vae") else torch.bfloat16

        def make(key, shape):
            def produce():
                values = torch.randn(shape, generator=gen) * 0.02
                if key.endswith("weight") and len(shape) == 1:
                    values += 1.0  # norm scales
                return values.to(dtype)
            return produce

        entries = [(k, dtype, tuple(v.shape), make(k, tuple(v.shape))) for k, v in state.items()]
        prefix = "model" if component == "text_encoder" else "diffusion_pytorch_model"
        shards = 3 if component.startswith("video_dit") else 1
        per = -(-len(entries) // shards)
        weight_map = {}
        for i in range(shards):
            part = entries[i * per:(i + 1) * per]
            name = f"{prefix}.safetensors" if shards == 1 else f"{prefix}-{i + 1:05d}-of-{shards:05d}.safetensors"
            write_safetensors_streaming(folder / name, part, {"format": "pt"})
            weight_map.update({e[0]: name for e in part})
        if shards > 1:
            total = sum((folder / n).stat().st_size for n in set(weight_map.values()))
            (folder / f"{prefix}.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


# ---------------------------------------------------------------------------------------------------- children


class AnonPeak:
    """Samples RssAnon of this process every `period` seconds in a thread; `.peak` in bytes."""

    def __init__(self, period: float = 0.005) -> None:
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no RssAnon in /proc/self/status")

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            self.peak = max(self.peak, self.now())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())
        return self.peak


class EagerModels:
    """Every component built and copied into process memory up front (official `from_pretrained`)."""

    def __init__(self, ckpt) -> None:
        self.modules = {}
        for name in ("text_encoder", "video_vae", "audio_vae", "video_dit", "video_dit_2", "audio_dit",
                     "dual_tower_bridge"):
            module = ckpt.build(name)
            for sub in module.modules():
                for table in (sub._parameters, sub._buffers):
                    for key, tensor in list(table.items()):
                        if tensor is not None:
                            copy = tensor.detach().clone()
                            table[key] = torch.nn.Parameter(copy, requires_grad=False) if table is sub._parameters else copy
            self.modules[name] = module

    def module(self, name):
        return self.modules[name]

    def release(self, name):
        pass  # the official pipeline keeps the first expert (remove_video_dit defaults to False)

    def executor(self, name):
        return None


def child(mode: str, folder: Path, out: Path, steps: int, budget_gb: float) -> None:
    from safetensors.torch import save_file

    from mova_model.checkpoint.folder import MovaCheckpoint
    from mova_model.sampling.guidance import GuidanceConfig
    from mova_model.memory.planner import Architecture, PlanInputs, plan_memory
    from mova_model.memory.streaming import MaterializationCounter, StreamingModels
    from mova_model.sampling.sampler import SamplingInputs, sample
    from mova_model.sampling.scheduler import FlowMatchPairScheduler

    monitor = AnonPeak()
    baseline = AnonPeak.now()
    ckpt = MovaCheckpoint.open(folder)
    cfg = ckpt.configs
    width, height, frames, fps = 128, 128, 9, 24.0
    gen = torch.Generator().manual_seed(1)
    z, text_dim = cfg.video_vae.z_dim, cfg.video_dit.text_dim
    audio_len = (int(cfg.audio_vae.sample_rate * frames / fps) - 1) // cfg.audio_vae.hop_length + 1
    latent = (1, z, (frames - 1) // 4 + 1, height // 8, width // 8)
    inputs = SamplingInputs(prompt_embeds=torch.randn(1, 512, text_dim, generator=gen),
                            negative_prompt_embeds=torch.randn(1, 512, text_dim, generator=gen),
                            condition=torch.randn(1, z + 4, *latent[2:], generator=gen),
                            video_noise=torch.randn(latent, generator=gen),
                            audio_noise=torch.randn(1, cfg.audio_dit.in_dim, audio_len, generator=gen), video_fps=fps)
    stats: Dict[str, object] = {"mode": mode}
    counter = MaterializationCounter()
    if mode == "eager":
        models = EagerModels(ckpt)
    else:
        plan = plan_memory(PlanInputs(vram_bytes=budget_gb * GB, ram_bytes=64 * GB, width=width, height=height,
                                      frames=frames, fps=fps, cfg_passes=2), Architecture.from_configs(cfg))
        stats["plan"] = plan.format()
        models = StreamingModels(ckpt.build, plan, "cpu", counter)
    experts, low_before_switch = [], []

    def on_step(info):
        experts.append(info.expert)
        if info.expert == "video_dit":
            low_before_switch.append(counter.count("video_dit_2"))

    start = time.perf_counter()
    with torch.no_grad():
        video, audio = sample(models, FlowMatchPairScheduler(cfg.scheduler), inputs, steps,
                              GuidanceConfig(text_scale=5.0), cfg.boundary_timestep, callback=on_step)
    stats.update(sample_s=time.perf_counter() - start, baseline=baseline, peak=monitor.stop(), experts=experts,
                 low_noise_copies_before_switch=sum(low_before_switch),
                 onloads={k: counter.count(k) for k in ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")})
    save_file({"video": video.contiguous(), "audio": audio.contiguous()}, str(out))
    sys.stdout.write(json.dumps(stats) + "\n")


# ---------------------------------------------------------------------------------------------------- parent


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller checkpoint (~1.2 GB instead of ~3 GB)")
    parser.add_argument("--dir", type=Path, help="where the synthetic checkpoint goes (reused if present)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--budget", type=float, default=None, help="device budget for the streamed run, GB")
    parser.add_argument("--child", choices=("eager", "streamed"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    scale = 8 if args.quick else 5
    folder = args.dir or Path(f"/tmp/mova_bench_memory_s{scale}")
    budget = args.budget or (1.3 if args.quick else 1.6)
    if args.child:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        child(args.child, folder, args.out, args.steps, budget)
        return 0
    if not (folder / "model_index.json").is_file():
        start = time.perf_counter()
        write_checkpoint(folder, scale)
        sys.stdout.write(f"wrote {folder} in {time.perf_counter() - start:.1f} s\n")
    sizes = {p.parent.name: 0 for p in folder.glob("*/*.safetensors")}
    for p in folder.glob("*/*.safetensors"):
        sizes[p.parent.name] += p.stat().st_size
    sys.stdout.write("checkpoint " + ", ".join(f"{k} {v / GB:.2f} GB" for k, v in sorted(sizes.items()))
                     + f"; total {sum(sizes.values()) / GB:.2f} GB\n")
    results = {}
    for mode in ("eager", "streamed"):
        out = folder.parent / f"{folder.name}.{mode}.safetensors"
        proc = subprocess.run([sys.executable, "-m", "bench.memory", "--child", mode, "--dir", str(folder),
                               "--out", str(out), "--steps", str(args.steps), "--budget", str(budget)],
                              capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            return 1
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        results[mode]["out"] = out
    from safetensors.torch import load_file
    a, b = (load_file(str(results[m]["out"])) for m in ("eager", "streamed"))
    identical = all(torch.equal(a[k], b[k]) for k in a)
    sys.stdout.write(results["streamed"]["plan"] + "\n")
    for mode in ("eager", "streamed"):
        r = results[mode]
        sys.stdout.write(f"{mode:<9} peak anonymous RSS {r['peak'] / GB:6.2f} GB (after imports {r['baseline'] / GB:.2f} GB, "
                         f"sampling {r['sample_s']:.1f} s, experts {r['experts']}, onloads {r['onloads']}, "
                         f"low-noise copies before the switch {r['low_noise_copies_before_switch']})\n")
    ratio = results["streamed"]["peak"] / results["eager"]["peak"]
    net = (results["streamed"]["peak"] - results["streamed"]["baseline"]) / (results["eager"]["peak"] - results["eager"]["baseline"])
    sys.stdout.write(f"net of the post-import baseline: {net:.3f}\n")
    sys.stdout.write(f"peak_rss_ratio={ratio:.3f} identical={'yes' if identical else 'no'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
