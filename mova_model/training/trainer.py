"""The LoRA training loop: dataset -> cached encodings -> DiTs with a trainable LoRA -> steps -> files.

Per optimizer step, `accumulation` micro-steps each pick the video expert as the official trainer does
(`experts="both"` alternates with the micro-step counter: even = high-noise `video_dit`, odd = low-noise
`video_dit_2`), draw (timestep, noises) from the run's generator in the official order, and backpropagate
`loss / accumulation`; then clip, AdamW and the schedule (`optimizer.py`). The validation loss is the mean
loss over a fixed set of (clip, expert, timestep, noise) drawn once from its own seed, evaluated before
training, every `val_every` steps and at the end. Checkpoints (`files.py`) are written every `save_every`
steps, on interruption (for the last completed step) and at the end; all writes are atomic.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .. import bounds
from ..checks import CheckError, check_destination, check_device, check_writable_folder
from ..checkpoint.folder import MovaCheckpoint, build_meta_module
from ..checkpoint.weights import CheckpointError
from ..memory.model_store import MemoryOptions
from ..network.lora import LoraError, load_lora
from ..sampling.scheduler import FlowMatchPairScheduler
from .cache import encode_dataset
from .dataset import ClipGeometry, DatasetError, check_captions, scan_dataset
from .encoding import ClipEncoders
from .files import (EXPORT_FORMATS, TrainStateError, comfy_export_paths, legacy_state_path_for, load_state,
                    restore_state, run_files, save_lora, save_state, state_path_for)
from .models import TrainingModels
from .optimizer import OptimizerSettings, build_optimizer, clip_and_step
from .step import EncodedClip, StepDraw, StepOptions, draw_step
from .targets import LoraTargets, TargetError
from .timesteps import HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT, TrainingTimesteps, expert_for_step
from .trainable_lora import TrainableLora

logger = logging.getLogger(__name__)

EXPERT_CHOICES = ("high", "low", "both")
WEIGHT_CHOICES = ("as stored", "fp32", "bf16", "fp8")
VALIDATION_SEED_OFFSET = 1_000_003
INIT_SEED_OFFSET = 7_919


class TrainingError(ValueError):
    """Bad training input (nothing written), or a run that cannot go on (a non-finite loss: the last finite
    step was saved); the message says what was wrong and what to change."""


@dataclass(frozen=True)
class TrainSettings:
    """Everything a run needs besides the paths. Sizes in pixels; steps count optimizer steps."""

    steps: int = 100
    rank: int = 16
    alpha: float = 16.0
    targets: str = "official"
    experts: str = "both"
    train_audio: bool = True
    train_bridge: bool = True
    width: int = 640
    height: int = 352
    frames: int = 49
    fps: float = 24.0
    seed: int = 42
    accumulation: int = 1
    lr: float = 1e-4
    warmup_steps: Optional[int] = None
    min_lr: float = 1e-6
    clip_norm: float = 1.0
    weight_decay: float = 0.01
    loss_weights: Tuple[float, float] = (1.0, 1.0)
    timestep_sampling: str = "uniform"
    caption_dropout: float = 0.0
    save_every: int = 0
    val_every: int = 0
    val_items: int = 4
    weights: str = "as stored"
    gradient_checkpointing: bool = True
    vram_budget_gb: Optional[float] = None
    device: str = "cpu"
    memory_mode: str = "auto"
    """How the step is placed on the device (the Loader's memory modes): "budget" plans against `vram_budget_gb`;
    "auto" against it when given, else against the free VRAM on a GPU (no device plan on the CPU); "resident"
    keeps every block on the device or refuses."""
    strict_dataset: bool = False
    official_pair: bool = False
    export_format: str = "mova"

    def optimizer_settings(self) -> OptimizerSettings:
        warmup = self.warmup_steps if self.warmup_steps is not None else int(self.steps * 0.01)
        return OptimizerSettings(lr=self.lr, weight_decay=self.weight_decay, clip_norm=self.clip_norm,
                                 warmup_steps=warmup, max_steps=self.steps, min_lr=self.min_lr)

    def step_options(self) -> StepOptions:
        return StepOptions(loss_weights=tuple(self.loss_weights), timestep_sampling=self.timestep_sampling,
                           caption_dropout=self.caption_dropout)

    def validate(self) -> None:
        problems = []
        for name, bound, value in (
                ("steps", bounds.TRAIN_STEPS, self.steps), ("rank", bounds.RANK, self.rank),
                ("alpha", bounds.ALPHA, self.alpha), ("learning rate", bounds.LEARNING_RATE, self.lr),
                ("seed", bounds.TRAIN_SEED, self.seed), ("save_every", bounds.SAVE_EVERY, self.save_every),
                ("val_every", bounds.VAL_EVERY, self.val_every), ("val_items", bounds.VAL_ITEMS, self.val_items),
                ("gradient accumulation", bounds.ACCUMULATION, self.accumulation), ("fps", bounds.FPS, self.fps),
                ("width", bounds.WIDTH, self.width), ("height", bounds.HEIGHT, self.height),
                ("frames", bounds.FRAMES, self.frames), ("warm-up steps", bounds.WARMUP_STEPS, self.warmup_steps),
                ("the VRAM budget (GB)", bounds.VRAM_BUDGET_GB, self.vram_budget_gb)):
            try:
                if value is not None:  # only the warm-up steps and the VRAM budget may be unset
                    bound.check(name, value)
            except bounds.BoundsError as exc:
                problems.append(str(exc))
        if not all(bounds.LOSS_WEIGHT.contains(w) for w in self.loss_weights):
            problems.append(f"loss weights must be finite, {bounds.LOSS_WEIGHT.describe()} (got {self.loss_weights})")
        try:
            check_device(self.device, "device")
        except CheckError as exc:
            problems.append(str(exc))
        if self.export_format not in EXPORT_FORMATS:
            problems.append(f"export format must be one of {', '.join(EXPORT_FORMATS)} (got {self.export_format!r})")
        if self.experts not in EXPERT_CHOICES:
            problems.append(f"experts must be one of {', '.join(EXPERT_CHOICES)} (got {self.experts!r})")
        if self.weights not in WEIGHT_CHOICES:
            problems.append(f"weights must be one of {', '.join(WEIGHT_CHOICES)} (got {self.weights!r})")
        if not 0 <= self.caption_dropout < 1:
            problems.append(f"caption dropout must be in [0, 1) (got {self.caption_dropout})")
        if self.timestep_sampling not in ("uniform", "logit_normal"):
            problems.append(f"timestep sampling must be 'uniform' or 'logit_normal' (got {self.timestep_sampling!r})")
        if len(self.loss_weights) != 2 or min(self.loss_weights) < 0 or sum(self.loss_weights) <= 0:
            problems.append(f"loss weights must be two non-negative numbers, not both 0 (got {self.loss_weights})")
        try:
            MemoryOptions(mode=self.memory_mode, vram_budget_gb=self.vram_budget_gb).validate()
        except ValueError as exc:
            problems.append(str(exc))
        try:
            self.optimizer_settings().validate()
            ClipGeometry(self.width, self.height, self.frames, self.fps, 1).validate()
            LoraTargets.parse(self.targets)
        except (ValueError, DatasetError, TargetError) as exc:
            problems.append(str(exc))
        if problems:
            raise TrainingError("invalid training settings: " + "; ".join(problems))

    def experts_trained(self) -> Tuple[str, ...]:
        return {"high": (HIGH_NOISE_EXPERT,), "low": (LOW_NOISE_EXPERT,),
                "both": (HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT)}[self.experts]

    def identity(self) -> dict:
        """The settings a resumed run must share with the saved one."""
        keys = ("rank", "alpha", "targets", "experts", "train_audio", "train_bridge", "width", "height", "frames",
                "fps", "seed", "accumulation", "lr", "warmup_steps", "min_lr", "steps", "timestep_sampling")
        data = asdict(self)
        return {k: data[k] for k in keys}


@dataclass
class TrainProgress:
    """Reported after every optimizer step (and once per phase change). loss: mean over the micro-steps."""

    phase: str
    step: int
    steps: int
    loss: Optional[float] = None
    lr: Optional[float] = None
    val_loss: Optional[float] = None
    message: str = ""


@dataclass
class TrainResult:
    steps: int
    val_loss_before: float
    val_loss_after: float
    lora_path: Path
    state_path: Path
    losses: List[Tuple[int, float]] = field(default_factory=list)
    val_losses: List[Tuple[int, float]] = field(default_factory=list)
    clips: int = 0
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    exported: List[Path] = field(default_factory=list)
    """ComfyUI-native expert files written beside the LoRA (`export_format="comfy"`)."""


def _check_paths(out_path: Path, dataset: Path, checkpoint_dir: Path, official_pair: bool = False,
                 overwrite: bool = False, resume: Optional[Path] = None, cache_dir: Optional[Path] = None,
                 exported: Sequence[Path] = ()) -> None:
    """Everything about the files of a run that can be checked before the long work (issue 17, items 2 and 6).
    exported: the ComfyUI-native expert files the run also writes (`export_format="comfy"`)."""
    if out_path.suffix != ".safetensors":
        raise TrainingError(f"output {out_path}: the LoRA file name must end in .safetensors")
    if not out_path.parent.is_dir():
        raise TrainingError(f"output {out_path}: folder {out_path.parent} does not exist")
    files = run_files(out_path, official_pair) + list(exported)
    try:
        check_destination(out_path, "output", companions=[files[1].name, files[0].stem + "_official"])
        if cache_dir is not None:
            check_writable_folder(cache_dir, "cache folder")
    except CheckError as exc:
        raise TrainingError(str(exc)) from None
    own_states = {state_path_for(out_path).resolve(), legacy_state_path_for(out_path).resolve()}
    continuing = resume is not None and Path(resume).resolve() in own_states
    existing = [p for p in files if p.exists()]
    if existing and not overwrite and not continuing:
        raise TrainingError(f"output {existing[0]} already exists and is not replaced unless asked: choose another "
                            f"name, ask to overwrite it (--overwrite / overwrite on), or continue its training "
                            f"(--resume {state_path_for(out_path)})")
    if not dataset.is_dir():
        raise TrainingError(f"dataset {dataset}: folder not found (give a folder of clips with .txt captions, or with metadata.json)")
    if not checkpoint_dir.is_dir():
        raise TrainingError(f"checkpoint {checkpoint_dir}: folder not found (give a MOVA checkpoint folder)")


def validation_set(clips: List[EncodedClip], experts: Tuple[str, ...], timesteps: TrainingTimesteps, seed: int,
                   count: int) -> List[Tuple[int, StepDraw]]:
    """Fixed (clip index, draw) pairs: the first `count` clips × each trained expert, from their own seed."""
    generator = torch.Generator().manual_seed(seed + VALIDATION_SEED_OFFSET)
    items = []
    for index in range(min(count, len(clips))):
        for expert in experts:
            items.append((index, draw_step(timesteps, clips[index], expert, generator)))
    return items


def clip_order(step: int, micro: int, accumulation: int, count: int, seed: int) -> int:
    """Clip index of a micro-step: a fresh seeded permutation per epoch (stateless, so resume is exact)."""
    position = step * accumulation + micro
    epoch, offset = divmod(position, count)
    perm = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 7_907 + epoch))
    return int(perm[offset])


class LoraTrainer:
    """One training run. `run()` returns a `TrainResult`; `progress(TrainProgress)` may raise to cancel."""

    def __init__(self, checkpoint: Path | str, dataset: Path | str, out_path: Path | str, settings: TrainSettings,
                 cache_dir: Optional[Path | str] = None, resume: Optional[Path | str] = None,
                 init_lora: Optional[Path | str] = None,
                 progress: Optional[Callable[[TrainProgress], None]] = None, overwrite: bool = False,
                 free_vram_probe: Optional[Callable[[float], float]] = None) -> None:
        self.checkpoint_dir, self.dataset = Path(checkpoint), Path(dataset)
        self.out_path = Path(out_path)
        self.settings = settings
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.resume = Path(resume) if resume is not None else None
        self.init_lora = Path(init_lora) if init_lora is not None else None
        self.progress = progress or (lambda p: None)
        self.overwrite = overwrite
        """Replace existing files at `out_path` (else they are refused, unless `resume` is their own state)."""
        self.saved_step: Optional[int] = None
        """The step of the last LoRA + state written by this run (None: nothing written yet)."""
        self.free_vram_probe = free_vram_probe
        """probe(bytes needed) -> free VRAM in bytes (ComfyUI's model management makes room first); None: CUDA's
        own report. Used in the "auto" and "resident" memory modes on a GPU."""
        self.plan = None

    # -- preparation: everything that can fail on bad input happens before the first write ----------
    def _prepare(self):
        s = self.settings
        s.validate()
        exported = comfy_export_paths(self.out_path, s.experts_trained()) if s.export_format == "comfy" else []
        _check_paths(self.out_path, self.dataset, self.checkpoint_dir, s.official_pair, self.overwrite, self.resume,
                     self.cache_dir, exported)
        state = None
        if self.resume is not None:
            try:
                state = load_state(self.resume)
            except TrainStateError as exc:
                raise TrainingError(str(exc)) from exc
        init = None
        if self.init_lora is not None:
            try:
                init = load_lora(self.init_lora)
            except LoraError as exc:
                raise TrainingError(f"continue-from LoRA: {exc}") from exc
        try:  # the captions are read now: a dataset without one usable caption is refused before any loading
            scan = scan_dataset(self.dataset)
            check_captions(scan, strict=s.strict_dataset)
        except DatasetError as exc:
            raise TrainingError(f"dataset: {exc}") from exc
        try:
            checkpoint = MovaCheckpoint.open(self.checkpoint_dir)
            checkpoint.validate()
        except (CheckpointError, ValueError, OSError) as exc:
            raise TrainingError(f"checkpoint {self.checkpoint_dir}: {exc}") from exc
        geometry = ClipGeometry(s.width, s.height, s.frames, s.fps, int(checkpoint.configs.audio_vae.sample_rate))
        self.plan = self._memory_plan(checkpoint)  # before the long work: a step that cannot fit is refused now
        self.progress(TrainProgress("encode", 0, s.steps, message="encoding clips"))
        try:
            clips, skipped = encode_dataset(
                scan, geometry, checkpoint, self.cache_dir,
                lambda: ClipEncoders(checkpoint, s.device, torch.bfloat16 if s.device != "cpu" else torch.float32),
                strict=s.strict_dataset, empty_caption=s.caption_dropout > 0, on_clip=self._on_clip)
        except DatasetError as exc:
            raise TrainingError(f"dataset: {exc}") from exc
        return checkpoint, state, init, clips, skipped

    def _on_clip(self, index: int, count: int, name: str) -> None:
        """Before each clip is read or encoded: the progress callback may raise here to cancel (within one clip)."""
        self.progress(TrainProgress("encode", index, count, message=f"encoding clip {index + 1}/{count}: {name}"))

    def _memory_plan(self, checkpoint: MovaCheckpoint):
        """The training step's memory plan (like `plan --train` for this checkpoint and clip), or None when there
        is no device budget to plan against (the CPU without a budget). Raises `TrainingError` with the plan's
        numbers when the step does not fit even with every block streamed."""
        from ..memory.planner import free_vram_bytes
        from .models import training_plan

        s = self.settings
        device = torch.device(s.device)
        if s.vram_budget_gb and s.memory_mode in ("auto", "budget"):
            vram = float(s.vram_budget_gb) * 1e9
        elif device.type == "cuda":
            vram = None
        else:
            return None
        clip = (s.width, s.height, s.frames, s.fps)

        def plan_for(vram_bytes: float, mode: str = s.memory_mode):
            return training_plan(checkpoint, vram_bytes, clip, s.weights, s.experts, s.gradient_checkpointing,
                                 rank=s.rank, targets=s.targets, mode=mode)

        if vram is None:  # free VRAM, after asking the host to make room for what an all-resident step needs
            need = plan_for(1e15, "resident").vram_peak
            vram = float(self.free_vram_probe(need)) if self.free_vram_probe else free_vram_bytes(device)
        plan = plan_for(vram)
        if not plan.fits:
            rows = ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in plan.vram.items() if v)
            raise TrainingError(f"this training step does not fit in the memory available: {'; '.join(plan.problems)} "
                                f"(VRAM per step: {rows})")
        logger.info("training plan: %s, %.2f GB of VRAM of %.2f GB", plan.mode, plan.vram_peak / 1e9, vram / 1e9)
        return plan

    def _build_lora(self, checkpoint: MovaCheckpoint, models: TrainingModels) -> TrainableLora:
        s = self.settings
        components = list(s.experts_trained())
        if s.train_audio:
            components.append("audio_dit")
        if s.train_bridge:
            components.append("dual_tower_bridge")
        metas = {name: build_meta_module(name, checkpoint.config(name)) for name in components}
        try:
            lora = TrainableLora.for_modules(metas, s.rank, s.alpha, LoraTargets.parse(s.targets), device=models.device)
        except LoraError as exc:
            raise TrainingError(str(exc)) from exc
        lora.reset_official(torch.Generator().manual_seed(s.seed + INIT_SEED_OFFSET))
        return lora

    # -- the run ------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train; hosts that call nodes under `torch.inference_mode()` (ComfyUI) are fine: autograd is re-enabled."""
        with torch.inference_mode(False), torch.enable_grad():
            try:
                return self._run()
            except FloatingPointError as exc:
                kept = (f"the LoRA of step {self.saved_step} is saved in {self.out_path}" if self.saved_step
                        else "nothing was saved")
                raise TrainingError(f"{exc}; {kept}") from None

    def _run(self) -> TrainResult:
        s = self.settings
        checkpoint, state, init, clips, skipped = self._prepare()
        timesteps = TrainingTimesteps.from_scheduler(FlowMatchPairScheduler(checkpoint.configs.scheduler),
                                                     checkpoint.configs.index.boundary_ratio)
        for expert in s.experts_trained():
            lo, hi = timesteps.index_range(expert)
            if int(hi * timesteps.count) <= int(lo * timesteps.count):
                raise TrainingError(f"the {expert} expert has no training timesteps with boundary_ratio "
                                    f"{timesteps.boundary_ratio}; train the other expert")
        models = TrainingModels(checkpoint, s.device, s.weights, s.gradient_checkpointing,
                                clip_size=(s.width, s.height, s.frames, s.fps), experts=s.experts, plan=self.plan)
        lora = self._build_lora(checkpoint, models)
        if init is not None:
            try:
                lora.load_weights(init)
            except LoraError as exc:
                raise TrainingError(f"continue-from LoRA: {exc}") from exc
        params = lora.lora_parameters()
        optimizer, schedule = build_optimizer(params, s.optimizer_settings())
        generator = torch.Generator().manual_seed(s.seed)
        start, losses = 0, []
        if state is not None:
            try:
                restore_state(state, lora, optimizer, schedule, generator, s.identity())
            except (TrainStateError, LoraError) as exc:
                raise TrainingError(str(exc)) from exc
            start, losses = state.step, [tuple(x) for x in state.losses]
            if start >= s.steps:
                raise TrainingError(f"resume: the saved run already did {start} of {s.steps} steps; ask for more steps")
        models.attach(lora)
        options = s.step_options()
        val_items = validation_set(clips, s.experts_trained(), timesteps, s.seed, s.val_items)
        state_path = state_path_for(self.out_path)
        identity = s.identity()
        meta = {"experts": s.experts, "dataset_size": str(len(clips)), "base_checkpoint": checkpoint.root.name,
                "settings": asdict(s)}
        try:
            val_before = self._validate(models, clips, val_items, timesteps, options)
            val_losses = [(start, val_before)]
            self.progress(TrainProgress("train", start, s.steps, val_loss=val_before, message="validation before training"))
            completed_rng = generator.get_state()
            try:
                for step in range(start, s.steps):
                    loss, lr = self._one_step(step, models, clips, timesteps, options, generator, optimizer, schedule, params)
                    completed_rng = generator.get_state()
                    losses.append((step + 1, loss))
                    val = None
                    if s.val_every and (step + 1) % s.val_every == 0 and step + 1 < s.steps:
                        val = self._validate(models, clips, val_items, timesteps, options)
                        val_losses.append((step + 1, val))
                    if s.save_every and (step + 1) % s.save_every == 0 and step + 1 < s.steps:
                        self._save(lora, optimizer, schedule, generator, losses, identity, step + 1, meta, state_path)
                    self.progress(TrainProgress("train", step + 1, s.steps, loss=loss, lr=lr, val_loss=val))
            except BaseException:
                done = len(losses)
                if done > start:
                    # keep the last completed step: parameters, moments and schedule change only at its end
                    generator.set_state(completed_rng)
                    optimizer.zero_grad(set_to_none=True)
                    self._save(lora, optimizer, schedule, generator, losses, identity, done, meta, state_path)
                raise
            val_after = self._validate(models, clips, val_items, timesteps, options)
            val_losses.append((s.steps, val_after))
            self._save(lora, optimizer, schedule, generator, losses, identity, s.steps, meta, state_path)
        finally:
            models.release()
        exported = comfy_export_paths(self.out_path, s.experts_trained()) if s.export_format == "comfy" else []
        return TrainResult(s.steps, val_before, val_after, self.out_path, state_path, losses, val_losses,
                           len(clips), skipped, exported=exported)

    def _one_step(self, step, models, clips, timesteps, options, generator, optimizer, schedule, params):
        s = self.settings
        lr = optimizer.param_groups[0]["lr"]
        total = 0.0
        for micro in range(s.accumulation):
            global_step = step * s.accumulation + micro
            expert = expert_for_step(global_step, s.experts)
            clip = clips[clip_order(step, micro, s.accumulation, len(clips), s.seed)]
            draw = draw_step(timesteps, clip, expert, generator, options)
            result = models.step(expert, clip, draw, timesteps, options)
            (result.loss / s.accumulation).backward()
            total += float(result.loss.detach())
            if not math.isfinite(total):
                raise FloatingPointError(f"step {step + 1}: the loss is not finite ({total}) at learning rate {lr:g}; "
                                         "lower the learning rate (or raise the warm-up steps) and train again")
        clip_and_step(optimizer, schedule, params, s.clip_norm)
        return total / s.accumulation, lr

    @torch.no_grad()
    def _validate(self, models, clips, items, timesteps, options) -> float:
        plain = replace(options, caption_dropout=0.0)
        values = [float(models.step(draw.expert, clips[i], draw, timesteps, plain, grad=False).loss) for i, draw in items]
        return sum(values) / len(values)

    def _save(self, lora, optimizer, schedule, generator, losses, identity, step, meta, state_path) -> None:
        save_state(state_path, step, lora, optimizer, schedule, generator, losses, identity)
        save_lora(lora, self.out_path, dict(meta, steps=str(step)), official_pair=self.settings.official_pair,
                  export_format=self.settings.export_format)
        self.saved_step = step
        logger.info("saved %s at step %d", self.out_path, step)


def train_lora(checkpoint: Path | str, dataset: Path | str, out_path: Path | str, settings: TrainSettings,
               **kwargs) -> TrainResult:
    """Convenience wrapper: `LoraTrainer(...).run()`."""
    return LoraTrainer(checkpoint, dataset, out_path, settings, **kwargs).run()
