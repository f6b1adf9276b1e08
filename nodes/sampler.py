"""MOVA Joint Sampler: MOVA_MODEL + MOVA_CONDITIONING -> LATENT holding the video and the audio latents together.

Progress goes to ComfyUI's progress bar with a latent preview of the video each step; `POST /interrupt` is
checked after every step, so a cancel stops within one step (and the model's working memory is released).
Solver, shift, a custom SIGMAS list and denoise (restyling an init latent from MOVA Encode) are optional inputs;
left at their defaults the sampler runs the official Euler loop unchanged.
"""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..mova_model import bounds
from ..mova_model.sampling.guidance import GuidanceConfig
from ..mova_model.sampling.preview import latent_preview_rgb
from ..mova_model.sampling.sampler import StepInfo
from ..mova_model.sampling.schedules import SOLVERS, ScheduleError, ScheduleOptions
from ..mova_model.sampling.step_cache import StepCacheConfig
from .combos import check_combos
from .step_cache import MovaStepCache
from .types import (MovaConditioning, MovaGuidance, MovaHeld, MovaModel, conditioning_of, handle_of, latents_from_comfy,
                    latents_to_comfy)

logger = logging.getLogger(__name__)
PREVIEW_MAX_SIZE = 512

SOLVER_TOOLTIP = ("euler: MOVA's official sampler (50 steps). unipc / dpm++: the multistep flow solvers of the official "
                  "Wan 2.2 code (its default is unipc), for fewer steps (20-40).")
SHIFT_TOOLTIP = "Schedule shift; 0 = the checkpoint's scheduler config (MOVA: 5). Ignored with a sigmas input."
SIGMAS_TOOLTIP = ("A custom schedule (core SIGMAS, e.g. from MOVA Sigmas, SplitSigmas or KarrasScheduler): N+1 values "
                  "in [0, 1], decreasing, ending at 0. It replaces steps and shift; an init_latent is noised to its "
                  "first sigma (denoise stays 1, or 0 to keep a stream).")
DENOISE_TOOLTIP = ("1: generate from pure noise. Below 1 (needs init_latent): sample only the last part of the "
                   "schedule from the init clip noised to that level. 0: keep the stream as it is.")
AUDIO_DENOISE_TOOLTIP = "The audio's own denoise; -1 = the same as denoise (0 keeps the sound, 1 regenerates it)."


def schedule_inputs():
    """The optional schedule inputs shared by the Joint Sampler and MOVA Extend (solver, shift, sigmas)."""
    return [
        io.Combo.Input("solver", options=list(SOLVERS), default="euler", optional=True, tooltip=SOLVER_TOOLTIP),
        io.Float.Input("shift", default=0.0, min=0.0, max=100.0, step=0.01, optional=True, tooltip=SHIFT_TOOLTIP),
        io.Sigmas.Input("sigmas", optional=True, tooltip=SIGMAS_TOOLTIP),
    ]


def schedule_options(where: str, solver, shift, sigmas):
    """ScheduleOptions, or None for the official run; a bad value raises `ValueError` naming the node and input."""
    solver = solver or "euler"
    shift = float(shift or 0.0)
    if shift < 0:
        raise ValueError(f"{where}: shift must be 0 (the checkpoint's) or greater, got {shift:g}")
    try:
        options = ScheduleOptions(solver=solver, shift=shift if shift > 0 else None,
                                  sigmas=None if sigmas is None else sigmas)
        options.validate()
    except ScheduleError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if options.sigmas is not None and options.shift is not None:
        logger.info("%s: a sigmas input is connected, so shift %g is not used", where, options.shift)
    return None if options.is_default else options


def _rgb_table(z_dim: int):
    """The host's latent->RGB table for the Wan 2.1 latent space, when the host has one and it fits."""
    try:
        from comfy import latent_formats

        fmt = latent_formats.Wan21()
        if fmt.latent_rgb_factors is not None and len(fmt.latent_rgb_factors) == z_dim:
            return fmt.latent_rgb_factors, getattr(fmt, "latent_rgb_factors_bias", None)
    except (ImportError, AttributeError):
        pass
    return None, None


def make_step_callback(total: int, z_dim: int, node_id=None):
    """A sampler callback: interrupt check, progress and a JPEG latent preview per step."""
    import comfy.model_management as mm
    import comfy.utils
    from PIL import Image

    bar = comfy.utils.ProgressBar(total, node_id=node_id)
    factors, bias = _rgb_table(z_dim)

    def on_step(info: StepInfo) -> None:
        mm.throw_exception_if_processing_interrupted()
        preview = Image.fromarray(latent_preview_rgb(info.video_latents, factors, bias))
        bar.update_absolute(info.index + 1, info.total, ("JPEG", preview, PREVIEW_MAX_SIZE))
        logger.debug("step %d/%d (%s, %d passes)", info.index + 1, info.total, info.expert, info.passes)

    return on_step


class MovaJointSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaJointSampler",
            display_name="MOVA Joint Sampler",
            category="MOVA/sampling",
            description="Denoises video and audio together (official flow-matching loop, expert switch at the "
                        "boundary timestep). Same seed = same noise as the official script.",
            inputs=[
                MovaModel.Input("model"),
                MovaConditioning.Input("conditioning"),
                io.Int.Input("seed", default=42, control_after_generate=True, **bounds.SEED.widget(),
                             tooltip="torch.manual_seed(seed) then video noise, then audio noise, as the official script."),
                io.Int.Input("steps", default=50, **bounds.STEPS.widget(), tooltip="Denoising steps (official: 50)."),
                io.Float.Input("cfg", default=5.0, step=0.1, **bounds.CFG.widget(),
                               tooltip="Text CFG scale (official: 5.0). Ignored when a guidance input is connected."),
                MovaGuidance.Input("guidance", optional=True,
                                   tooltip="From MOVA Guidance: dual CFG (text + bridge) and per-modality scales."),
                MovaHeld.Input("held", optional=True,
                               tooltip="From MOVA Audio Driver (A2V) or MOVA Video Driver (V2A): a stream kept fixed."),
                MovaStepCache.Input("step_cache", optional=True,
                                    tooltip="From MOVA Step Cache: skip passes whose output barely changes."),
                *schedule_inputs(),
                io.Latent.Input("init_latent", optional=True,
                                tooltip="A clip to restyle (from MOVA Encode, or a MOVA LATENT); used when denoise < 1."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, optional=True, tooltip=DENOISE_TOOLTIP),
                io.Float.Input("audio_denoise", default=-1.0, min=-1.0, max=1.0, step=0.01, optional=True,
                               tooltip=AUDIO_DENOISE_TOOLTIP),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, conditioning, seed: int, steps: int, cfg: float, guidance=None, held=None,
                step_cache=None, solver: str = "euler", shift: float = 0.0, sigmas=None, init_latent=None,
                denoise: float = 1.0, audio_denoise: float = -1.0) -> io.NodeOutput:
        check_combos(cls, solver=solver or "euler")
        handle = handle_of(model)
        conditioning = conditioning_of(conditioning)
        pipe = handle.pipeline
        where = "MOVA Joint Sampler"
        options = schedule_options(where, solver, shift, sigmas)
        denoise = 1.0 if denoise is None else float(denoise)
        audio_denoise = None if audio_denoise is None or float(audio_denoise) == -1.0 else float(audio_denoise)
        init = None
        if init_latent is not None:
            try:
                init = latents_from_comfy(init_latent, "init_latent")
            except ValueError as exc:
                raise ValueError(f"{where}: {exc} (to restyle a clip, connect a MOVA Encode output)") from None
        config = guidance if isinstance(guidance, GuidanceConfig) else GuidanceConfig(text_scale=float(cfg))
        callback = make_step_callback(options.num_steps(steps) if options else steps, pipe.configs.video_vae.z_dim,
                                      cls.hidden.unique_id)
        try:
            latents = pipe.sample(conditioning, seed=seed, steps=steps, guidance=config, held=held, callback=callback,
                                  step_cache=step_cache if isinstance(step_cache, StepCacheConfig) else None,
                                  schedule=options, init=init, denoise=denoise, audio_denoise=audio_denoise)
        except BaseException:
            pipe.release_all()
            raise
        stats = pipe.last_stats
        if stats is not None and step_cache is not None:
            logger.info("MOVA Joint Sampler: step cache skipped %d of %d passes", stats.skipped_passes,
                        stats.skipped_passes + sum(stats.passes_per_step))
        return io.NodeOutput(latents_to_comfy(latents))


NODES = [MovaJointSampler]
