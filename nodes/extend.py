"""MOVA Extend: a further segment after a previous MOVA LATENT, with the overlap's video and sound carried over.

The output is the joined LATENT (previous clip + new segment), so Extend nodes chain and the MOVA Audio/Video
Decoder and MOVA Mux work on it unchanged. All logic is `mova_model.sampling.continuation.extend`.
"""
from __future__ import annotations

from comfy_api.latest import io

from ..mova_model import bounds
from ..mova_model.sampling.continuation import extend
from ..mova_model.sampling.guidance import GuidanceConfig
from ..mova_model.sampling.sampler import HOLD_MODES
from .combos import check_combos
from .sampler import make_step_callback, schedule_inputs, schedule_options
from .types import MovaConditioning, MovaGuidance, MovaModel, conditioning_of, handle_of, latents_from_comfy, latents_to_comfy

HOLD_TOOLTIP = ("clean (default): the overlap stays exactly the previous clip's (hard hold, exact join). "
                "renoise: the overlap is re-noised each step and the model's own version is crossfaded in (soft hold).")


class MovaExtend(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaExtend",
            display_name="MOVA Extend",
            category="MOVA/sampling",
            description="Generates the next segment of a clip: its first frame is the previous clip's frame where the "
                        "overlap starts, the overlap's video and audio are held from the previous clip, then the two "
                        "are crossfaded and joined (frames: previous + segment - overlap). The conditioning gives "
                        "the segment's prompt and frame count (its image input is not used; a last frame is kept).",
            inputs=[
                MovaModel.Input("model"),
                io.Latent.Input("previous", tooltip="LATENT from a MOVA Joint Sampler or another MOVA Extend."),
                MovaConditioning.Input("conditioning",
                                       tooltip="The next segment's prompt and frames; same size and fps as the previous clip."),
                io.Int.Input("overlap", default=25, min=1, max=1021, step=4,
                             tooltip="Frames shared with the previous clip, 4m+1 (25 = about 1 s at 24 fps), "
                                     "shorter than both clips."),
                io.Combo.Input("hold_mode", options=list(HOLD_MODES), default="clean", tooltip=HOLD_TOOLTIP),
                io.Int.Input("seed", default=43, control_after_generate=True, **bounds.SEED.widget(),
                             tooltip="This segment's seed (give each segment its own)."),
                io.Int.Input("steps", default=50, **bounds.STEPS.widget(), tooltip="Denoising steps (official: 50)."),
                io.Float.Input("cfg", default=5.0, step=0.1, **bounds.CFG.widget(),
                               tooltip="Text CFG scale. Ignored when a guidance input is connected."),
                MovaGuidance.Input("guidance", optional=True, tooltip="The same MOVA Guidance as the first segment."),
                *schedule_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, previous, conditioning, overlap: int, hold_mode: str, seed: int, steps: int, cfg: float,
                guidance=None, solver: str = "euler", shift: float = 0.0, sigmas=None) -> io.NodeOutput:
        check_combos(cls, hold_mode=hold_mode, solver=solver or "euler")
        options = schedule_options("MOVA Extend", solver, shift, sigmas)
        handle = handle_of(model)
        conditioning = conditioning_of(conditioning)
        previous_latents = latents_from_comfy(previous, "previous")
        pipe = handle.pipeline
        config = guidance if isinstance(guidance, GuidanceConfig) else GuidanceConfig(text_scale=float(cfg))
        callback = make_step_callback(options.num_steps(steps) if options else steps, pipe.configs.video_vae.z_dim,
                                      cls.hidden.unique_id)
        try:
            result = extend(pipe, previous_latents, conditioning, overlap=int(overlap), seed=int(seed), steps=int(steps),
                            guidance=config, hold_mode=hold_mode, callback=callback, schedule=options)
        except BaseException:
            pipe.release_all()
            raise
        return io.NodeOutput(latents_to_comfy(result.joined))


NODES = [MovaExtend]
