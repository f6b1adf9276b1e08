"""MOVA Mux: IMAGE frames + AUDIO + fps -> an mp4 (H.264 + AAC, PyAV) saved atomically, and a core VIDEO."""
from __future__ import annotations

import logging
import os

import folder_paths
import torch
from comfy_api.latest import InputImpl, io, ui

from ..mova_model import bounds
from ..mova_model.media.av_io import Mp4Writer, fit_audio_to_video, frames_to_uint8, safe_filename_prefix
from .types import audio_of

MUX_CHUNK_FRAMES = 16

logger = logging.getLogger(__name__)


class MovaMux(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaMux",
            display_name="MOVA Mux",
            category="MOVA/output",
            description="Writes frames and audio into one mp4 (H.264 + AAC) in the output folder (written under a "
                        "temporary name, then renamed: never a partial file) and returns it as a VIDEO.",
            inputs=[
                io.Image.Input("frames", tooltip="IMAGE [F, H, W, 3] (even width and height)."),
                io.Float.Input("fps", default=24.0, step=0.5, **bounds.FPS.widget(), tooltip="Frames per second (> 0)."),
                io.String.Input("filename_prefix", default="mova/MOVA"),
                io.Audio.Input("audio", optional=True, tooltip="Trimmed or padded to the video's duration (frames / fps); "
                               "the log says so when that cuts or pads more than one frame's worth."),
            ],
            outputs=[io.Video.Output(display_name="video")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, frames, fps: float, filename_prefix: str, audio=None) -> io.NodeOutput:
        if not fps > 0:
            raise ValueError(f"fps must be greater than 0, got {fps}")
        if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames: expected IMAGE [F, H, W, 3], got {list(getattr(frames, 'shape', []))}")
        count, height, width, _ = frames.shape
        if count == 0:
            raise ValueError("frames: the IMAGE batch is empty")
        if height % 2 or width % 2:
            raise ValueError(f"frames: H.264 needs even width and height, got {width}x{height}")
        waveform = rate = None
        if audio is not None:
            wave, rate = audio_of(audio)
            if wave.dim() != 3 or wave.shape[0] < 1:
                raise ValueError(f"audio: expected waveform [batch, channels, samples], got {list(wave.shape)}")
            waveform, note = fit_audio_to_video(wave[0].float(), rate, count, fps)
            if note:
                logger.warning("MOVA Mux: %s", note)
        filename_prefix, note = safe_filename_prefix(filename_prefix)
        if note:
            logger.warning("MOVA Mux: %s", note)
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), width, height)
        file = f"{name}_{counter:05}_.mp4"
        # uint8 a chunk at a time into the streaming writer: no full-clip copy besides the input IMAGE
        with Mp4Writer(os.path.join(folder, file), width, height, fps, waveform, rate) as writer:
            for start in range(0, count, MUX_CHUNK_FRAMES):
                writer.add_frames(frames_to_uint8(frames[start:start + MUX_CHUNK_FRAMES]))
        path = writer.path
        video = InputImpl.VideoFromFile(str(path))
        return io.NodeOutput(video, ui=ui.PreviewVideo([ui.SavedResult(file, subfolder, io.FolderType.output)]))


NODES = [MovaMux]
