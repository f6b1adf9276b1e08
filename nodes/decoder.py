"""MOVA Audio/Video Decoder: the sampler's LATENT -> IMAGE frames and AUDIO, ComfyUI's core types."""
from __future__ import annotations

from comfy_api.latest import io

from ..mova_model.media.long_clip import decode_clip_audio, decode_frames
from ..mova_model.sampling.pipeline import clip_audio_samples as clip_samples  # noqa: F401  (the trim rule)
from .types import MovaModel, handle_of, latents_from_comfy


class MovaAVDecoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaAVDecoder",
            display_name="MOVA Audio/Video Decoder",
            category="MOVA/decode",
            description="Decodes the video latents with the Wan VAE into frames (IMAGE [F, H, W, 3], 0..1) and the "
                        "audio latents with the DAC into a waveform (AUDIO), trimmed to frames / fps seconds. The video is "
                        "decoded a few latent frames at a time (same frames as a whole decode), so a long joined "
                        "clip needs the output plus one chunk.",
            inputs=[MovaModel.Input("model"), io.Latent.Input("latent")],
            outputs=[io.Image.Output(display_name="frames"), io.Audio.Output(display_name="audio")],
        )

    @classmethod
    def execute(cls, model, latent) -> io.NodeOutput:
        pipe = handle_of(model).pipeline
        latents = latents_from_comfy(latent)
        frames = decode_frames(pipe, latents)
        waveform, rate = decode_clip_audio(pipe, latents)
        audio = {"waveform": waveform, "sample_rate": rate}
        return io.NodeOutput(frames, audio)


NODES = [MovaAVDecoder]
