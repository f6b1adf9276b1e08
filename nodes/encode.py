"""MOVA Encode: a clip (IMAGE frames + optional AUDIO) -> a MOVA LATENT to restyle with the Joint Sampler's denoise.

The frames and the sound are prepared and encoded exactly as the V2A / A2V drivers do (`drivers.encode_clip`): the
conditioning gives the clip's size, frame count and fps.
"""
from __future__ import annotations

from comfy_api.latest import io

from ..mova_model.sampling.drivers import encode_clip
from .types import MovaConditioning, MovaModel, audio_of, conditioning_of, handle_of, latents_to_comfy


class MovaEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaEncode",
            display_name="MOVA Encode",
            category="MOVA/sampling",
            description="Encodes a clip to restyle: the frames (IMAGE batch, e.g. from LoadVideo + "
                        "GetVideoComponents) through the video VAE and, if given, its AUDIO through the audio VAE. "
                        "Connect the output to the Joint Sampler's init_latent and lower its denoise (without audio "
                        "the sound is generated).",
            inputs=[
                MovaModel.Input("model"),
                MovaConditioning.Input("conditioning", tooltip="Gives the clip size, frame count (4k+1) and fps."),
                io.Image.Input("frames"),
                io.Audio.Input("audio", optional=True, tooltip="The clip's sound (any rate and channels; resampled, "
                                                               "mixed to mono, trimmed or padded to the clip)."),
                io.Float.Input("source_fps", default=0.0, min=0.0, max=1000.0, step=0.001, optional=True,
                               tooltip="The video's frame rate (connect GetVideoComponents' fps). 0: unknown, one "
                                       "video frame per clip frame."),
            ],
            outputs=[io.Latent.Output(display_name="latent"), io.String.Output(display_name="notes")],
        )

    @classmethod
    def execute(cls, model, conditioning, frames, audio=None, source_fps: float = 0.0) -> io.NodeOutput:
        pipe = handle_of(model).pipeline
        waveform, rate = audio_of(audio) if audio is not None else (None, 0)
        latents, notes = encode_clip(pipe, frames, conditioning_of(conditioning), waveform, rate, float(source_fps or 0.0))
        return io.NodeOutput(latents_to_comfy(latents), notes)


NODES = [MovaEncode]
