"""`python -m mova_model train CHECKPOINT DATASET --out FILE.safetensors [...]`: train a MOVA LoRA.

Prints a progress bar with the loss on stderr and, as the last line on stdout,
`trained: steps=N val_loss_before=X val_loss_after=Y lora=PATH` (after one `exported: PATH` line per
ComfyUI-native expert file with `--export-format comfy`). Bad input: one `error:` line naming the
problem on stderr, exit status 2, nothing written; every setting, the device, the output (never replaced
without `--overwrite`) and the cache folder are checked before anything is loaded. Ctrl-C or SIGTERM: the
last completed step is saved (LoRA + `<stem>.train-state` for `--resume`) and one line says so (exit status
130 / 143).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

from ..cli_args import CliParser, interrupted_exit_code, refuse, sigterm_as_interrupt
from .cache import dataset_cache_dir
from .files import state_path_for
from .trainer import EXPERT_CHOICES, LoraTrainer, TrainingError, TrainProgress, TrainSettings

logger = logging.getLogger(__name__)


def _size(text: str):
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 640x352 (got {text!r})") from exc


def build_parser() -> CliParser:
    p = CliParser(prog="python -m mova_model train", description="Train a MOVA LoRA (video + audio).")
    p.add_argument("checkpoint", help="MOVA checkpoint folder (official layout)")
    p.add_argument("dataset", help="folder of video clips with same-name .txt captions, or with metadata.json")
    p.add_argument("--out", required=True, help="LoRA file to write (.safetensors); the resumable state goes beside it")
    p.add_argument("--overwrite", action="store_true", help="replace --out (and its state) if it exists")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 1%% of --steps (official ratio)")
    p.add_argument("--targets", default="official", help="official | attention | comma-separated module names")
    p.add_argument("--experts", default="both", choices=EXPERT_CHOICES)
    p.add_argument("--no-audio-dit", action="store_true", help="do not train the audio DiT")
    p.add_argument("--no-bridge", action="store_true", help="do not train the bridge")
    p.add_argument("--size", type=_size, default=(640, 352), help="WxH, multiples of 16")
    p.add_argument("--frames", type=int, default=49, help="4k+1")
    p.add_argument("--fps", type=float, default=24.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--accumulation", type=int, default=1)
    p.add_argument("--loss-weights", type=float, nargs=2, default=(1.0, 1.0), metavar=("VIDEO", "AUDIO"))
    p.add_argument("--timestep-sampling", default="uniform", choices=("uniform", "logit_normal"))
    p.add_argument("--caption-dropout", type=float, default=0.0)
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--val-every", type=int, default=0)
    p.add_argument("--val-items", type=int, default=4)
    p.add_argument("--cache-dir", default=None, help="encoded-clip cache (default: <dataset>/.mova_cache, or "
                   "~/.cache/mova/training when the dataset folder is read-only)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--resume", default=None, help="the <stem>.train-state written beside an earlier run's LoRA")
    p.add_argument("--init-lora", default=None, help="continue from this LoRA (same rank and targets)")
    p.add_argument("--weights", default="as stored", choices=("as stored", "fp32", "bf16", "fp8"))
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--vram-budget", type=float, default=None, help="GB; streams blocks on a GPU")
    p.add_argument("--device", default="cpu")
    p.add_argument("--strict", action="store_true", help="a bad clip is an error instead of being skipped")
    p.add_argument("--official-pair", action="store_true", help="also write lora_weights.pt + lora_config.pt")
    p.add_argument("--export-format", default="mova", choices=("mova", "comfy"),
                   help="comfy: also write each trained video expert in ComfyUI's native Wan naming beside --out "
                        "(<stem>_high_noise.safetensors / <stem>_low_noise.safetensors)")
    return p


def default_cache_dir(dataset: str) -> Path:
    """`<dataset>/.mova_cache`, or the user's cache folder when the dataset folder cannot be written."""
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mova" / "training"
    folder, why_not = dataset_cache_dir(dataset, user_cache)
    if why_not is not None:
        logger.info("%s; the encoded clips are cached in %s instead", why_not, folder)
    return folder


def train_cli(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_or_status(argv)
    if isinstance(args, int):  # --help, or the parser's one `error:` line
        return args
    width, height = args.size
    settings = TrainSettings(
        steps=args.steps, rank=args.rank, alpha=args.alpha, targets=args.targets, experts=args.experts,
        train_audio=not args.no_audio_dit, train_bridge=not args.no_bridge, width=width, height=height,
        frames=args.frames, fps=args.fps, seed=args.seed, accumulation=args.accumulation, lr=args.lr,
        warmup_steps=args.warmup_steps, loss_weights=tuple(args.loss_weights),
        timestep_sampling=args.timestep_sampling, caption_dropout=args.caption_dropout,
        save_every=args.save_every, val_every=args.val_every, val_items=args.val_items, weights=args.weights,
        gradient_checkpointing=not args.no_gradient_checkpointing, vram_budget_gb=args.vram_budget,
        device=args.device, strict_dataset=args.strict, official_pair=args.official_pair,
        export_format=args.export_format)
    bar = _ProgressBar(args.steps)
    with sigterm_as_interrupt():
        return _run_training(args, settings, bar)


def _run_training(args, settings: TrainSettings, bar: "_ProgressBar") -> int:
    trainer = None
    try:
        if args.no_cache:
            cache_dir = None
        elif args.cache_dir:
            cache_dir = Path(args.cache_dir)
        else:
            cache_dir = default_cache_dir(args.dataset)
        trainer = LoraTrainer(args.checkpoint, args.dataset, args.out, settings, cache_dir=cache_dir,
                              resume=args.resume, init_lora=args.init_lora, progress=bar.update,
                              overwrite=args.overwrite)
        result = trainer.run()
    except TrainingError as exc:
        bar.close()
        return refuse(str(exc))
    except KeyboardInterrupt as exc:
        bar.close()
        what, code = interrupted_exit_code(exc)
        saved = trainer.saved_step if trainer is not None else None
        if saved:
            sys.stderr.write(f"{what}: saved step {saved} of {args.steps} to {args.out}; continue with --resume "
                             f"{state_path_for(args.out)}\n")
        else:
            sys.stderr.write(f"{what} before the first training step was completed; nothing was saved\n")
        return code
    bar.close()
    for name, reason in result.skipped:
        sys.stderr.write(f"skipped {name}: {reason}\n")
    for path in result.exported:
        sys.stdout.write(f"exported: {path}\n")
    sys.stdout.write(f"trained: steps={result.steps} val_loss_before={result.val_loss_before:.6g} "
                     f"val_loss_after={result.val_loss_after:.6g} lora={result.lora_path}\n")
    return 0


class _ProgressBar:
    """tqdm on stderr, shown from the first progress report (a refused command prints only its error line)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._bar = None

    @property
    def bar(self):
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, file=sys.stderr, unit="step", dynamic_ncols=True)
        return self._bar

    def update(self, p: TrainProgress) -> None:
        if p.phase != "train":
            self.bar.set_description(p.message or p.phase)
            return
        self.bar.set_description("train")
        self.bar.n = p.step
        postfix = {}
        if p.loss is not None:
            postfix["loss"] = f"{p.loss:.4f}"
        if p.val_loss is not None:
            postfix["val"] = f"{p.val_loss:.4f}"
        if p.lr is not None:
            postfix["lr"] = f"{p.lr:.2e}"
        self.bar.set_postfix(postfix)
        self.bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
