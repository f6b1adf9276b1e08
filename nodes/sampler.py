"""MOVA Joint Sampler: MOVA_MODEL + MOVA_CONDITIONING -> LATENT holding the video and the audio latents together.

Progress goes to ComfyUI's progress bar with a latent preview of the video each step; `POST /interrupt` is
checked after every step, so a cancel stops within one step (and the model's working memory is released).
"""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..mova_model import bounds
from ..mova_model.sampling.guidance import GuidanceConfig
from ..mova_model.sampling.preview import latent_preview_rgb
from ..mova_model.sampling.sampler import StepInfo
from ..mova_model.sampling.step_cache import StepCacheConfig
from .step_cache import MovaStepCache
from .types import MovaConditioning, MovaGuidance, MovaHeld, MovaModel, conditioning_of, handle_of, latents_to_comfy

logger = logging.getLogger(__name__)
PREVIEW_MAX_SIZE = 512


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
            ],
            outputs=[io.Latent.Output(display_name="latent")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, conditioning, seed: int, steps: int, cfg: float, guidance=None, held=None,
                step_cache=None) -> io.NodeOutput:
        handle = handle_of(model)
        conditioning = conditioning_of(conditioning)
        pipe = handle.pipeline
        config = guidance if isinstance(guidance, GuidanceConfig) else GuidanceConfig(text_scale=float(cfg))
        callback = make_step_callback(steps, pipe.configs.video_vae.z_dim, cls.hidden.unique_id)
        try:
            latents = pipe.sample(conditioning, seed=seed, steps=steps, guidance=config, held=held, callback=callback,
                                  step_cache=step_cache if isinstance(step_cache, StepCacheConfig) else None)
        except BaseException:
            pipe.release_all()
            raise
        stats = pipe.last_stats
        if stats is not None and step_cache is not None:
            logger.info("MOVA Joint Sampler: step cache skipped %d of %d passes", stats.skipped_passes,
                        stats.skipped_passes + sum(stats.passes_per_step))
        return io.NodeOutput(latents_to_comfy(latents))


NODES = [MovaJointSampler]
