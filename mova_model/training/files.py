"""Files a training run writes, each atomically (temporary file beside the target, then rename):

- the LoRA: one safetensors file with the official keys (`video_dit.blocks.0.self_attn.q.lora_A.weight`, ...)
  and metadata (rank, alpha, targets, experts, steps, dataset size, base checkpoint, settings) that
  `mova_model.network.lora.load_lora` reads unchanged; optionally also the official pair
  `lora_weights.pt` + `lora_config.pt` (`torch.save` of plain dicts) for users of the official code;
- with `export_format="comfy"`, also each trained video expert in ComfyUI's native Wan naming
  (`<stem>_high_noise.safetensors`, `<stem>_low_noise.safetensors`, same metadata) for other Wan tools;
- the training state for `--resume`: LoRA weights, AdamW moments, schedule, step and random-number state in
  one safetensors file, `<lora stem>.train-state` (not `.safetensors`, so LoRA lists never offer it; files
  named `<stem>.state.safetensors` by earlier versions are still read); nothing is pickled.

`choose_output` decides where a run writes without replacing what a user has: resume a matching unfinished
run, replace only when asked, else the next free name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..atomic_write import atomic_write
from ..checks import next_free_path
from .cache import atomic_save_file
from .trainable_lora import TrainableLora

LORA_FORMAT = "mova-lora"
EXPORT_FORMATS = ("mova", "comfy")
"""`mova`: the MOVA file only; `comfy`: also the video experts in ComfyUI-native naming beside it."""
STATE_FORMAT = "mova-lora-train-state"
STATE_SUFFIX = ".train-state"
LEGACY_STATE_SUFFIX = ".state.safetensors"
"""What earlier versions named the state (listed as a LoRA by ComfyUI; still read for resuming)."""


class TrainStateError(ValueError):
    """A resume file that does not fit this run; the message says which setting differs."""


def save_lora(lora: TrainableLora, path: Path | str, metadata: Dict[str, object], official_pair: bool = False,
              export_format: str = "mova") -> Path:
    """Write the LoRA safetensors (and optionally the official pair in `<stem>_official/`, and with
    `export_format="comfy"` the ComfyUI-native expert files, see `comfy_export_paths`)."""
    path = Path(path)
    meta = {"format": LORA_FORMAT, "rank": str(lora.rank), "alpha": repr(lora.alpha),
            "targets": lora.targets.describe(), "modules": str(len(lora.keys()))}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    atomic_save_file(lora.state_tensors(), path, meta)
    if export_format == "comfy":
        from ..network.lora_export import save_comfy_experts

        weights = lora.to_weights(source=str(path))
        save_comfy_experts(weights, path, metadata=meta, video_only=True, always_suffix=True)
    if official_pair:
        folder = path.with_name(path.stem + "_official")
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_torch_save(lora.state_tensors(), folder / "lora_weights.pt")
        _atomic_torch_save({"rank": lora.rank, "alpha": lora.alpha, "target_modules": list(lora.targets.names) or ["attention"]},
                           folder / "lora_config.pt")
    return path


def comfy_export_paths(path: Path | str, experts) -> list:
    """Where `export_format="comfy"` writes each trained expert (`video_dit`, `video_dit_2`) beside `path`."""
    from ..network.lora_export import expert_paths

    return list(expert_paths(Path(path), list(experts), always_suffix=True).values())


def _atomic_torch_save(obj: object, path: Path) -> None:
    atomic_write(path, lambda temp: torch.save(obj, temp))


def state_path_for(lora_path: Path | str) -> Path:
    """Where the training state of the LoRA `lora_path` is written: `<stem>.train-state` beside it."""
    lora_path = Path(lora_path)
    return lora_path.with_name(lora_path.stem + STATE_SUFFIX)


def legacy_state_path_for(lora_path: Path | str) -> Path:
    lora_path = Path(lora_path)
    return lora_path.with_name(lora_path.stem + LEGACY_STATE_SUFFIX)


def official_pair_paths(lora_path: Path | str) -> List[Path]:
    folder = Path(lora_path).with_name(Path(lora_path).stem + "_official")
    return [folder / "lora_weights.pt", folder / "lora_config.pt"]


def run_files(lora_path: Path | str, official_pair: bool = False) -> List[Path]:
    """Every file a run writes for the LoRA `lora_path` (the LoRA first)."""
    files = [Path(lora_path), state_path_for(lora_path)]
    return files + (official_pair_paths(lora_path) if official_pair else [])


def is_state_file(name: str) -> bool:
    """True for a training-state file name (current or legacy), which is never a LoRA."""
    lower = name.lower()
    return lower.endswith(STATE_SUFFIX) or lower.endswith(LEGACY_STATE_SUFFIX)


def read_state_header(path: Path | str) -> Optional[dict]:
    """The metadata of a training-state file (step, identity, ...) without its tensors; None if unreadable."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
    except Exception:  # noqa: BLE001 - any unreadable file is "not a state" here
        return None
    return meta if meta.get("format") == STATE_FORMAT else None


def resumable_state(lora_path: Path | str, identity: dict, steps: int) -> Tuple[Optional[Path], str]:
    """(state file, "") when the run of `lora_path` stopped before `steps` with the same settings, else
    (None, why not). Reads only the file headers."""
    for state in (state_path_for(lora_path), legacy_state_path_for(lora_path)):
        if not state.is_file():
            continue
        meta = read_state_header(state)
        if meta is None:
            return None, f"{state.name} is not a readable training state"
        saved = json.loads(meta.get("identity", "{}"))
        differs = [k for k, v in identity.items() if k in saved and saved[k] != v]
        if differs:
            key = differs[0]
            return None, f"its run had {key}={saved[key]!r}, this one has {identity[key]!r}"
        if int(meta.get("step", 0)) >= steps:
            return None, f"its run finished all {steps} steps"
        return state, ""
    return None, "no training state beside it"


@dataclass
class OutputChoice:
    """Where a run writes: `lora`; `resume`: the state to continue from (None: a fresh run); `note`: what was
    decided, in a sentence for the user ("" when the asked-for name was simply free)."""

    lora: Path
    resume: Optional[Path] = None
    note: str = ""


def choose_output(path: Path | str, identity: dict, steps: int, overwrite: bool = False, resume: bool = True,
                  official_pair: bool = False) -> OutputChoice:
    """Never replace a user's files unless asked (issue 17, item 2).

    With `resume`, an unfinished run with the same settings at `path` (or at a name this function gave
    earlier, `<stem>_2`, `<stem>_3`, ...) is continued from its state. Otherwise an existing `path` is
    replaced only with `overwrite`; else the run writes the next free name and the note says so.
    """
    path = Path(path)
    files_of = lambda p: run_files(p, official_pair)[1:] + [legacy_state_path_for(p)]  # noqa: E731
    exists = lambda p: any(f.exists() for f in [p, *files_of(p)])  # noqa: E731
    candidate, number, why_not = path, 1, ""
    while resume and exists(candidate):
        state, reason = resumable_state(candidate, identity, steps)
        if state is not None:
            step = int(read_state_header(state)["step"])
            return OutputChoice(candidate, state, f"continued the unfinished training of {candidate.name} from its "
                                                  f"step {step} (resume is on)")
        why_not = why_not or reason
        number += 1
        candidate = path.with_name(f"{path.stem}_{number}{path.suffix}")
    if not exists(path):
        return OutputChoice(path)
    if overwrite:
        return OutputChoice(path, None, f"replaced the existing {path.name} (overwrite is on)")
    free = next_free_path(path, files_of)
    because = f" (not resumed: {why_not})" if resume and why_not else ""
    return OutputChoice(free, None, f"{path.name} already exists and was kept{because}; this LoRA was written as "
                                    f"{free.name} (turn overwrite on to replace {path.name})")


@dataclass
class TrainState:
    """What `--resume` restores. step: optimizer steps done; identity: settings that must match."""

    step: int
    lora: Dict[str, torch.Tensor]
    optimizer: Dict[str, torch.Tensor]
    optimizer_steps: Dict[str, float]
    schedule: dict
    rng: torch.Tensor
    losses: list
    identity: dict


def save_state(path: Path | str, step: int, lora: TrainableLora, optimizer: torch.optim.Optimizer, schedule,
               rng: torch.Generator, losses: list, identity: dict) -> Path:
    """Write the full training state atomically."""
    tensors = {f"lora.{k}": v for k, v in lora.state_tensors().items()}
    steps = {}
    for name, param in lora.named_lora_parameters():
        state = optimizer.state.get(param) or {}
        if "exp_avg" in state:
            tensors[f"opt.{name}.exp_avg"] = state["exp_avg"].detach().cpu().contiguous()
            tensors[f"opt.{name}.exp_avg_sq"] = state["exp_avg_sq"].detach().cpu().contiguous()
            steps[name] = float(state["step"])
    tensors["rng"] = rng.get_state()
    meta = {"format": STATE_FORMAT, "step": str(step), "optimizer_steps": json.dumps(steps),
            "schedule": json.dumps(schedule.state_dict()), "losses": json.dumps(losses),
            "identity": json.dumps(identity, sort_keys=True)}
    return atomic_save_file(tensors, Path(path), meta)


def load_state(path: Path | str) -> TrainState:
    path = Path(path)
    if not path.is_file():
        raise TrainStateError(f"resume file {path} not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:
        raise TrainStateError(f"{path}: not a readable training state ({exc})") from exc
    if meta.get("format") != STATE_FORMAT:
        raise TrainStateError(f"{path}: not a MOVA LoRA training state (format {meta.get('format')!r})")
    lora = {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")}
    opt = {k[4:]: v for k, v in tensors.items() if k.startswith("opt.")}
    return TrainState(int(meta["step"]), lora, opt, json.loads(meta["optimizer_steps"]), json.loads(meta["schedule"]),
                      tensors["rng"], json.loads(meta.get("losses", "[]")), json.loads(meta["identity"]))


def restore_state(state: TrainState, lora: TrainableLora, optimizer: torch.optim.Optimizer, schedule,
                  rng: torch.Generator, identity: dict) -> None:
    """Load `state` into a freshly built run; raises `TrainStateError` if a setting that shapes it differs."""
    for key, value in identity.items():
        if key in state.identity and state.identity[key] != value:
            raise TrainStateError(f"cannot resume: {key} was {state.identity[key]!r} in the saved run and is {value!r} now")
    lora.load_pairs(state.lora, strict=True)
    for name, param in lora.named_lora_parameters():
        if name in state.optimizer_steps:
            optimizer.state[param] = {
                "step": torch.tensor(state.optimizer_steps[name], dtype=torch.float32),
                "exp_avg": state.optimizer[f"{name}.exp_avg"].to(param.device).clone(),
                "exp_avg_sq": state.optimizer[f"{name}.exp_avg_sq"].to(param.device).clone(),
            }
    schedule.load_state_dict(state.schedule)
    for group, lr in zip(optimizer.param_groups, schedule.get_last_lr()):
        group["lr"] = lr  # the chainable schedules read the current lr from the group
    rng.set_state(state.rng)


def read_lora_metadata(path: Path | str) -> Dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})
