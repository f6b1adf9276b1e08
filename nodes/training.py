"""LoRA training in ComfyUI: MOVA Training Dataset (a folder of clips) and MOVA Train LoRA.

Thin adapters over `mova_model.training`: the dataset node checks every clip and shows what it found and
skipped; the train node runs `LoraTrainer` with ComfyUI's progress bar and the current loss as progress
text, stops within one clip (while encoding) or one step on `POST /interrupt` (keeping the last completed
step on disk), writes the LoRA under `models/loras/` (so the MOVA LoRA Loader lists it) and returns the
model with the new LoRA applied, the file name and a loss-curve IMAGE. An existing LoRA is never replaced
unless `overwrite` is on: an unfinished run with the same settings is continued (`resume`), else the next
free name is used and the summary says so.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple

import torch
from comfy_api.latest import io

from ..mova_model import bounds
from ..mova_model.checks import CheckError, check_writable_folder
from ..mova_model.network.lora import LoraPatch, load_lora
from ..mova_model.training.cache import dataset_cache_dir
from ..mova_model.training.files import choose_output
from ..mova_model.training.dataset import ClipGeometry, DatasetError, load_clip, scan_dataset
from ..mova_model.training.loss_curve import render_loss_curve
from ..mova_model.training.trainer import LoraTrainer, TrainingError, TrainProgress, TrainSettings
from .combos import check_combos
from .types import MovaModel, handle_of

logger = logging.getLogger(__name__)

MovaDataset = io.Custom("MOVA_DATASET")
LORA_SUBFOLDER = "mova"


@dataclass
class DatasetRef:
    """What flows on a MOVA_DATASET wire: the folder, the clip geometry and what was found."""

    path: str
    width: int
    height: int
    frames: int
    fps: float
    usable: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)


def resolve_dataset_folder(folder: str) -> str:
    """An absolute path, or a folder under ComfyUI's input directory."""
    import folder_paths

    folder = (folder or "").strip()
    if not folder:
        raise ValueError("folder: give a folder under ComfyUI's input directory or an absolute path")
    return folder if os.path.isabs(folder) else os.path.join(folder_paths.get_input_directory(), folder)


class MovaTrainingDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaTrainingDataset",
            display_name="MOVA Training Dataset",
            category="MOVA/training",
            description="A folder of video clips with sound, each with a same-name .txt caption (or the official "
                        "metadata.json). Every clip is checked; what is skipped is listed with the reason.",
            inputs=[
                io.String.Input("folder", default="mova_lora_dataset",
                                tooltip="Folder under ComfyUI's input directory, or an absolute path."),
                io.Int.Input("width", default=640, step=16, **bounds.WIDTH.widget()),
                io.Int.Input("height", default=352, step=16, **bounds.HEIGHT.widget()),
                io.Int.Input("frames", default=49, min=5, max=bounds.FRAMES.widget()["max"], step=4,
                             tooltip="4k+1 frames per clip."),
                io.Float.Input("fps", default=24.0, min=1.0, max=bounds.FPS.widget()["max"], step=1.0),
            ],
            outputs=[MovaDataset.Output(display_name="dataset"), io.String.Output(display_name="summary")],
        )

    @classmethod
    def execute(cls, folder: str, width: int, height: int, frames: int, fps: float) -> io.NodeOutput:
        path = resolve_dataset_folder(folder)
        try:
            geometry = ClipGeometry(int(width), int(height), int(frames), float(fps), 48000)
            geometry.validate()
            scan = scan_dataset(path)
        except DatasetError as exc:
            raise ValueError(f"MOVA Training Dataset: {exc}") from exc
        ref = DatasetRef(path, int(width), int(height), int(frames), float(fps), skipped=list(scan.skipped))
        import comfy.model_management as mm

        for source in scan.sources:
            mm.throw_exception_if_processing_interrupted()  # cancel within one clip
            try:
                load_clip(source, geometry)
                ref.usable.append(source.path.name)
            except DatasetError as exc:
                ref.skipped.append((source.path.name, str(exc).split(": ", 1)[-1]))
        if not ref.usable:
            detail = "; ".join(f"{n}: {r}" for n, r in ref.skipped) or "no video files found"
            raise ValueError(f"MOVA Training Dataset: no usable clip in {path} (looked for .mp4/.mov/.mkv/.webm files "
                             f"with a same-name .txt caption, or metadata.json): {detail}")
        lines = [f"{path}: {len(ref.usable)} clip(s) usable at {width}x{height}, {frames} frames, {fps:g} fps"]
        lines += [f"  {name}" for name in ref.usable]
        lines += [f"  skipped {name}: {reason}" for name, reason in ref.skipped]
        return io.NodeOutput(ref, "\n".join(lines))


def lora_output_path(name: str) -> Tuple[str, str]:
    """(absolute path, name as the LoRA Loader lists it) for a LoRA called `name` under models/loras/mova/."""
    import folder_paths

    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", (name or "").strip()).strip("._")
    if not stem:
        raise ValueError("lora_name: give a file name (letters, digits, _ . -)")
    if stem.endswith(".safetensors"):
        stem = stem[: -len(".safetensors")]
    if len(stem) > bounds.LORA_NAME_MAX_CHARS:
        raise ValueError(f"lora_name: at most {bounds.LORA_NAME_MAX_CHARS} characters, got {len(stem)} "
                         f"({stem[:24]}…); choose a shorter name")
    root = folder_paths.get_folder_paths("loras")[0]
    os.makedirs(os.path.join(root, LORA_SUBFOLDER), exist_ok=True)
    relative = f"{LORA_SUBFOLDER}/{stem}.safetensors"
    return os.path.join(root, LORA_SUBFOLDER, f"{stem}.safetensors"), relative


class MovaTrainLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaTrainLora",
            display_name="MOVA Train LoRA",
            category="MOVA/training",
            description="Trains a LoRA on the video experts, the audio DiT and the bridge together, step for step as "
                        "the official trainer (AdamW, warm-up + cosine). Saved to models/loras/mova/<name>.safetensors; "
                        "the output model has it applied. Cancel stops within one step and keeps the last step saved.",
            inputs=[
                MovaModel.Input("model"),
                MovaDataset.Input("dataset"),
                io.String.Input("lora_name", default="my_mova_lora"),
                io.Int.Input("steps", default=200, **bounds.TRAIN_STEPS.widget()),
                io.Int.Input("rank", default=16, **bounds.RANK.widget()),
                io.Float.Input("alpha", default=16.0, step=0.5, **bounds.ALPHA.widget()),
                io.Float.Input("learning_rate", default=1e-4, step=1e-5, **bounds.LEARNING_RATE.widget()),
                io.Combo.Input("targets", options=["official", "attention"], default="official",
                               tooltip="official: every Linear of the blocks and bridge layers (the official default); "
                                       "attention: self-, cross- and bridge-attention projections only."),
                io.Combo.Input("experts", options=["both", "high", "low"], default="both",
                               tooltip="Video experts to train; 'both' alternates step by step as the official trainer."),
                io.Boolean.Input("train_audio", default=True),
                io.Boolean.Input("train_bridge", default=True),
                io.Int.Input("seed", default=42, **bounds.TRAIN_SEED.widget()),
                io.Int.Input("save_every", default=50, tooltip="0: only at the end.", **bounds.SAVE_EVERY.widget()),
                io.Int.Input("val_every", default=50, tooltip="0: only before and after.", **bounds.VAL_EVERY.widget()),
                io.Combo.Input("weights", options=["as stored", "bf16", "fp8", "fp32"], default="as stored",
                               tooltip="Storage of the frozen base weights; the LoRA and the optimizer stay fp32."),
                io.Boolean.Input("gradient_checkpointing", default=True),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="Strength of the new LoRA on the output model."),
                io.String.Input("custom_targets", default="", optional=True,
                                tooltip="Comma-separated module names (official pattern rules); overrides targets."),
                io.Boolean.Input("overwrite", default=False, optional=True,
                                 tooltip="Replace models/loras/mova/<name>.safetensors if it exists. Off: an existing "
                                         "LoRA is kept and this one gets the next free name (<name>_2, ...)."),
                io.Boolean.Input("resume", default=True, optional=True,
                                 tooltip="Continue an unfinished (cancelled) training of this name with the same "
                                         "settings from its last saved step, instead of starting again."),
                io.String.Input("cache_folder", default="", optional=True,
                                tooltip="Where encoded clips are cached (absolute, or under ComfyUI's output folder). "
                                        "Empty: <dataset>/.mova_cache, or ComfyUI's temp folder when the dataset "
                                        "folder cannot be written."),
            ],
            outputs=[MovaModel.Output(display_name="model"), io.String.Output(display_name="lora_name"),
                     io.Image.Output(display_name="loss_curve"), io.String.Output(display_name="summary")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, dataset, lora_name: str, steps: int, rank: int, alpha: float, learning_rate: float,
                targets: str, experts: str, train_audio: bool, train_bridge: bool, seed: int, save_every: int,
                val_every: int, weights: str, gradient_checkpointing: bool, strength: float,
                custom_targets: str = "", overwrite: bool = False, resume: bool = True,
                cache_folder: str = "") -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.utils

        check_combos(cls, targets=targets, experts=experts, weights=weights)
        handle = handle_of(model)
        if not isinstance(dataset, DatasetRef):
            raise ValueError("dataset: connect the output of a MOVA Training Dataset node")
        out_path, listed_name = lora_output_path(lora_name)
        pipe = handle.pipeline
        settings = TrainSettings(
            steps=int(steps), rank=int(rank), alpha=float(alpha), lr=float(learning_rate),
            targets=(custom_targets or "").strip() or targets, experts=experts, train_audio=bool(train_audio),
            train_bridge=bool(train_bridge), width=dataset.width, height=dataset.height, frames=dataset.frames,
            fps=dataset.fps, seed=int(seed), save_every=int(save_every), val_every=int(val_every), weights=weights,
            gradient_checkpointing=bool(gradient_checkpointing), device=str(pipe.device),
            # planned like `plan --train` with the Loader's memory mode: streamed when the plan says so, refused
            # with the plan's numbers when nothing fits
            memory_mode=pipe.memory.mode,
            vram_budget_gb=pipe.memory.vram_budget_gb if pipe.memory.mode == "budget" else None)
        try:
            settings.validate()  # the settings' message before any decision on files
        except TrainingError as exc:
            raise ValueError(f"MOVA Train LoRA: {exc}") from exc
        choice = choose_output(out_path, settings.identity(), settings.steps, overwrite=bool(overwrite),
                               resume=bool(resume))
        out_path, listed_name = str(choice.lora), f"{LORA_SUBFOLDER}/{choice.lora.name}"
        cache_dir, cache_note = training_cache_dir(dataset.path, cache_folder)
        notes = [note for note in (choice.note, cache_note) if note]
        for note in notes:
            logger.warning("MOVA Train LoRA: %s", note)
        node_id = cls.hidden.unique_id
        bar = comfy.utils.ProgressBar(int(steps), node_id=node_id)

        def on_progress(p: TrainProgress) -> None:
            mm.throw_exception_if_processing_interrupted()
            text = p.message or ""
            if p.phase == "train":
                bar.update_absolute(p.step, p.steps)
                parts = [f"step {p.step}/{p.steps}"]
                if p.loss is not None:
                    parts.append(f"loss {p.loss:.4f}")
                if p.val_loss is not None:
                    parts.append(f"val {p.val_loss:.4f}")
                text = "  ".join(parts)
            _progress_text(text, node_id)

        pipe.release_all()  # the sampling modules; training builds what it needs
        trainer = LoraTrainer(pipe.checkpoint.root, dataset.path, out_path, settings, cache_dir=cache_dir,
                              progress=on_progress, resume=choice.resume, overwrite=bool(overwrite),
                              free_vram_probe=pipe.free_vram_probe)
        try:
            result = trainer.run()
        except TrainingError as exc:
            raise ValueError(f"MOVA Train LoRA: {exc}") from exc
        patched = pipe.with_lora(LoraPatch(load_lora(out_path), float(strength)))
        import dataclasses

        out_model = dataclasses.replace(handle, pipeline=patched,
                                        plan_text=f"{handle.plan_text}\nLoRA {listed_name} x{strength:g} (trained)")
        curve = torch.from_numpy(render_loss_curve(result.losses, result.val_losses).copy()).float().div(255).unsqueeze(0)
        summary = (f"trained: steps={result.steps} val_loss_before={result.val_loss_before:.6g} "
                   f"val_loss_after={result.val_loss_after:.6g} lora={listed_name} clips={result.clips}")
        summary = "\n".join([summary, *notes])
        return io.NodeOutput(out_model, listed_name, curve, summary)


def training_cache_dir(dataset_path: str, cache_folder: str = "") -> Tuple[str, str]:
    """(encoded-clip cache folder, note for the user or ""): `cache_folder` (absolute or under ComfyUI's output
    folder; refused when it cannot be written), else `<dataset>/.mova_cache`, else, for a dataset folder that
    cannot be written (read-only), ComfyUI's temp folder."""
    import folder_paths

    text = (cache_folder or "").strip()
    if text:
        folder = text if os.path.isabs(text) else os.path.join(folder_paths.get_output_directory(), text)
        try:
            return str(check_writable_folder(folder, "cache_folder")), ""
        except CheckError as exc:
            raise ValueError(f"MOVA Train LoRA: {exc}") from None
    folder, why_not = dataset_cache_dir(dataset_path, Path(folder_paths.get_temp_directory()) / "mova_training_cache",
                                        "cache")
    if why_not is None:
        return str(folder), ""
    return str(folder), (f"the encoded clips are cached in {folder}, not beside the dataset ({why_not}); that folder "
                         "is emptied when ComfyUI restarts: set cache_folder to keep them")


def _progress_text(text: str, node_id) -> None:
    try:
        from server import PromptServer

        if text and node_id is not None and PromptServer.instance is not None:
            PromptServer.instance.send_progress_text(text, node_id)
    except (ImportError, AttributeError):
        logger.debug("progress text not available on this host")


NODES = [MovaTrainingDataset, MovaTrainLora]
