"""`python -m mova_model <command>`: describe / plan / quantize / tiny-checkpoint / generate / train.

- `describe FOLDER [--check]`: every tensor the configs imply (and, with --check, every problem in the files).
- `plan --vram GB --ram GB --variant 360p|720p --size WxH --frames N [--fp8 | --weights gguf:Q4_K]`: the memory
  plan for a machine
  (`plan --train ...`: the plan of a LoRA training step).
- `quantize SRC DST`: write an fp8 (e4m3fn, per-tensor scale) copy of a checkpoint folder
  (`--format gguf --type Q8_0`: each DiT component as one GGUF file).
- `tiny-checkpoint DST [--seed N]`: write a tiny random-weight checkpoint in the official layout.
- `generate CHECKPOINT --prompt TEXT [--prompt TEXT ...] [--image F] [--last-image F] --size WxH --frames N
  --fps F --steps S --seed N [--overlap K] --out FILE.mp4 [--save-latents FILE.safetensors]`: one segment per
  prompt, joined with K overlapping frames; the last stdout line is the mp4 path. Sampler choice:
  `--solver euler|unipc|dpm++ [--shift S] [--sigmas a,b,...,0]`; restyle a clip: `--init-video clip.mp4
  --denoise 0.6 [--audio-denoise D]`.
  Several GPUs: `torchrun --nproc-per-node N -m mova_model generate ... --parallel cfg|ulysses|cfg+ulysses`.
  LoRAs: `--lora PATH[,strength=S][,expert=high|low|both][,allow_partial=1]`, repeatable (stacked in order).
- `train CHECKPOINT DATASET --out FILE.safetensors [...]`: train a LoRA (see `mova_model.training.cli`).
- `lora-convert IN OUT --to comfy|official [--expert high|low|both] [--checkpoint DIR] [--video-only]`: rewrite a
  LoRA in ComfyUI's native Wan naming (one file per video expert) or the official MOVA format.
"""

from __future__ import annotations

import logging
import sys
from typing import List, Optional

COMMANDS = ("describe", "plan", "quantize", "tiny-checkpoint", "generate", "train", "lora-convert")


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        sys.stdout.write(__doc__ or "")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "describe":
        from .checkpoint.describe import main_describe
        return main_describe(rest)
    if command == "plan" and "--train" in rest:
        from .memory.training_plan import plan_train_cli
        return plan_train_cli([a for a in rest if a != "--train"])
    if command == "plan":
        from .memory.planner import plan_cli
        return plan_cli(rest)
    if command == "quantize":
        from .memory.quantize import quantize_cli
        return quantize_cli(rest)
    if command == "generate":
        from .sampling.generate import generate_cli
        return generate_cli(rest)
    if command == "train":
        from .training.cli import train_cli
        return train_cli(rest)
    if command == "lora-convert":
        from .network.lora_export import lora_convert_cli
        return lora_convert_cli(rest)
    from .checkpoint.tiny import tiny_checkpoint_cli
    return tiny_checkpoint_cli(rest)


if __name__ == "__main__":
    sys.exit(main())
