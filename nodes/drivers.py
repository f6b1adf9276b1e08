"""A2V and V2A: hold the audio (MOVA Audio Driver) or the video (MOVA Video Driver) fixed while the other stream
is generated. Both output MOVA_HELD for the Joint Sampler's `held` input, and a STRING saying what was adapted."""
from __future__ import annotations

from comfy_api.latest import io

from ..mova_model.sampling.drivers import held_audio, held_video
from ..mova_model.sampling.sampler import HOLD_MODES
from .combos import check_combos
from .types import MovaConditioning, MovaHeld, MovaModel, audio_of, conditioning_of, handle_of

MODE_TOOLTIP = ("clean (default): the held tower sees the clean stream at timestep 0 every step, like a finished "
                "stream. renoise: the clean stream is re-noised to each step's noise level (inpainting style).")


class MovaAudioDriver(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaAudioDriver",
            display_name="MOVA Audio Driver (A2V)",
            category="MOVA/conditioning",
            description="Lip-sync to your own audio: the AUDIO (any rate and channels; resampled and mixed to mono, "
                        "trimmed or padded to the clip) is encoded by the DAC and held while the video is generated.",
            inputs=[
                MovaModel.Input("model"),
                MovaConditioning.Input("conditioning", tooltip="Gives the clip length (frames / fps)."),
                io.Audio.Input("audio"),
                io.Combo.Input("mode", options=list(HOLD_MODES), default="clean", tooltip=MODE_TOOLTIP),
            ],
            outputs=[MovaHeld.Output(display_name="held"), io.String.Output(display_name="notes")],
        )

    @classmethod
    def execute(cls, model, conditioning, audio, mode: str) -> io.NodeOutput:
        check_combos(cls, mode=mode)
        pipe = handle_of(model).pipeline
        waveform, rate = audio_of(audio)
        held, notes = held_audio(pipe, waveform, rate, conditioning_of(conditioning), mode)
        return io.NodeOutput(held, f"audio: {notes}")


class MovaVideoDriver(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaVideoDriver",
            display_name="MOVA Video Driver (V2A)",
            category="MOVA/conditioning",
            description="Add sound to your video: the frames (IMAGE batch, e.g. from LoadVideo + GetVideoComponents) are "
                        "encoded by the video VAE and held while the audio is generated. Connect the clip's first "
                        "frame to the conditioner's image too.",
            inputs=[
                MovaModel.Input("model"),
                MovaConditioning.Input("conditioning", tooltip="Gives the clip size and frame count (4k+1)."),
                io.Image.Input("frames"),
                io.Combo.Input("mode", options=list(HOLD_MODES), default="clean", tooltip=MODE_TOOLTIP),
                io.Float.Input("source_fps", default=0.0, min=0.0, max=1000.0, step=0.001, optional=True,
                               tooltip="The video's frame rate (connect GetVideoComponents' fps). Frames are taken at "
                                       "the clip's fps from it, so the video keeps its speed. 0: unknown, one video "
                                       "frame per clip frame."),
            ],
            outputs=[MovaHeld.Output(display_name="held"), io.String.Output(display_name="notes")],
        )

    @classmethod
    def execute(cls, model, conditioning, frames, mode: str, source_fps: float = 0.0) -> io.NodeOutput:
        check_combos(cls, mode=mode)
        pipe = handle_of(model).pipeline
        held, notes = held_video(pipe, frames, conditioning_of(conditioning), mode, float(source_fps or 0.0))
        return io.NodeOutput(held, f"video: {notes}")


NODES = [MovaAudioDriver, MovaVideoDriver]
