"""Audio/video file IO with PyAV (no ffmpeg subprocess, no torchaudio).

- `write_mp4`: H.264 video + AAC audio into one mp4, written under a temporary name in the target folder and
  renamed into place only when complete, so a failed or interrupted write never leaves a partial file.
- `resample_audio`: any sample rate / channel count to the rate and channel layout the DAC expects.
- `probe_media`: stream facts of a written file (for tests and logs).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional

import av
import numpy as np
import torch

logger = logging.getLogger(__name__)

AAC_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


class MediaError(ValueError):
    """Audio or video data that cannot be written or converted; the message says what is wrong."""


def _fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE `[F, H, W, 3]` float 0..1 -> uint8 `[F, H, W, 3]` (round to nearest)."""
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise MediaError(f"frames must be [F, H, W, 3], got {list(frames.shape)}")
    return (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def remix_channels(data: torch.Tensor, channels: int) -> torch.Tensor:
    """`[C, S]` -> `[channels, S]`: mono averages every channel; more channels than wanted are folded
    (channel i goes to output i mod `channels`, averaged); fewer are repeated."""
    count = data.shape[0]
    if count == channels:
        return data
    if channels == 1:
        return data.mean(dim=0, keepdim=True)
    if count > channels:
        return torch.stack([data[i::channels].mean(dim=0) for i in range(channels)])
    return data[torch.arange(channels) % count]


def resample_audio(waveform: torch.Tensor, sample_rate: int, target_rate: int, target_channels: int = 1) -> torch.Tensor:
    """Resample and remix `waveform` `[C, S]` float (−1..1) at `sample_rate` Hz to `[target_channels, S']` at
    `target_rate` Hz with PyAV's resampler (libswresample). Mono targets average the channels."""
    if waveform.dim() != 2 or waveform.shape[1] == 0:
        raise MediaError(f"audio must be [channels, samples] with samples > 0, got {list(waveform.shape)}")
    if sample_rate <= 0:
        raise MediaError(f"audio sample rate must be positive, got {sample_rate}")
    data = remix_channels(waveform.detach().float().cpu(), target_channels)
    if sample_rate == target_rate:
        return data.contiguous()
    layout = "mono" if target_channels == 1 else "stereo"
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data.numpy()), format="fltp", layout=layout)
    frame.sample_rate = int(sample_rate)
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=int(target_rate))
    chunks = [f.to_ndarray() for f in resampler.resample(frame)] + [f.to_ndarray() for f in resampler.resample(None)]
    out = np.concatenate(chunks, axis=1) if chunks else np.zeros((target_channels, 0), dtype=np.float32)
    return torch.from_numpy(out.astype(np.float32))


def write_mp4(path: Path | str, frames_uint8: np.ndarray, fps: float, audio: Optional[torch.Tensor] = None,
              sample_rate: Optional[int] = None, crf: int = 18) -> Path:
    """Write an mp4 (H.264 yuv420p + AAC) atomically and return its path.

    frames_uint8: `[F, H, W, 3]` uint8 (H and W even); fps in frames per second; audio: `[C, S]` float −1..1
    at `sample_rate` Hz (resampled to 48 kHz when AAC cannot take the rate).
    """
    if frames_uint8.ndim != 4 or frames_uint8.shape[-1] != 3 or frames_uint8.dtype != np.uint8:
        raise MediaError(f"video frames must be uint8 [F, H, W, 3], got {frames_uint8.dtype} {list(frames_uint8.shape)}")
    count, height, width, _ = frames_uint8.shape
    if count == 0:
        raise MediaError("video has no frames")
    with Mp4Writer(path, width, height, fps, audio, sample_rate, crf) as writer:
        writer.add_frames(frames_uint8)
    return writer.path


class Mp4Writer:
    """An mp4 written a chunk of frames at a time (H.264 yuv420p + AAC), renamed into place only on success.

        with Mp4Writer(path, width, height, fps, audio, rate) as writer:
            for chunk in chunks:            # uint8 [n, H, W, 3]
                writer.add_frames(chunk)

    Only the chunk being encoded is held besides the encoder's own buffers, so a long clip needs no full copy
    of its frames. The audio `[C, S]` float −1..1 (small beside the video) is encoded once, after the frames.
    An exception inside the block (or no frames) deletes the temporary file; the target is never half written.
    """

    def __init__(self, path: Path | str, width: int, height: int, fps: float, audio: Optional[torch.Tensor] = None,
                 sample_rate: Optional[int] = None, crf: int = 18) -> None:
        if height % 2 or width % 2:
            raise MediaError(f"H.264 needs even width and height, got {width}x{height}")
        if not fps > 0:
            raise MediaError(f"fps must be greater than 0, got {fps}")
        if audio is not None:
            if sample_rate is None or sample_rate <= 0:
                raise MediaError("audio needs a positive sample rate")
            if audio.dim() != 2:
                raise MediaError(f"audio must be [channels, samples], got {list(audio.shape)}")
            if audio.shape[0] > 2:
                audio = remix_channels(audio.detach().float().cpu(), 2)
            if sample_rate not in AAC_SAMPLE_RATES:
                audio, sample_rate = resample_audio(audio, sample_rate, 48000, audio.shape[0]), 48000
        self.path = Path(path)
        self.width, self.height, self.fps, self.crf = int(width), int(height), fps, crf
        self.audio, self.sample_rate = audio, sample_rate
        self.frames_written = 0
        self._temp: Optional[str] = None
        self._container = None
        self._video = None
        self._audio_stream = None

    def __enter__(self) -> "Mp4Writer":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, self._temp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".partial.mp4", dir=str(self.path.parent))
        os.close(handle)
        try:
            self._container = av.open(self._temp, mode="w", format="mp4")
            self._video = self._container.add_stream("libx264", rate=_fraction(self.fps))
            self._video.width, self._video.height = self.width, self.height
            self._video.pix_fmt = "yuv420p"
            self._video.options = {"crf": str(self.crf)}
            if self.audio is not None:
                layout = "mono" if self.audio.shape[0] == 1 else "stereo"
                self._audio_stream = self._container.add_stream("aac", rate=int(self.sample_rate), layout=layout)
        except BaseException:
            self._abort()
            raise
        return self

    def add_frames(self, frames_uint8: np.ndarray) -> None:
        """Encode uint8 frames `[n, H, W, 3]` at the writer's size."""
        if frames_uint8.ndim != 4 or frames_uint8.shape[-1] != 3 or frames_uint8.dtype != np.uint8:
            raise MediaError(f"video frames must be uint8 [F, H, W, 3], got {frames_uint8.dtype} {list(frames_uint8.shape)}")
        if frames_uint8.shape[1:3] != (self.height, self.width):
            raise MediaError(f"frames are {frames_uint8.shape[2]}x{frames_uint8.shape[1]}, the video is {self.width}x{self.height}")
        for image in frames_uint8:
            for packet in self._video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                self._container.mux(packet)
        self.frames_written += frames_uint8.shape[0]

    def _finish(self) -> None:
        if self.frames_written == 0:
            raise MediaError("video has no frames")
        for packet in self._video.encode():
            self._container.mux(packet)
        if self.audio is not None:
            stream = self._audio_stream
            samples = np.ascontiguousarray(self.audio.detach().float().clamp(-1, 1).cpu().numpy())
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=stream.layout.name)
            frame.sample_rate = int(self.sample_rate)
            frame.pts = 0
            for packet in stream.encode(frame):
                self._container.mux(packet)
            for packet in stream.encode():
                self._container.mux(packet)
        self._container.close()
        self._container = None

    def _abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is being discarded anyway
                pass
            self._container = None
        if self._temp and os.path.exists(self._temp):
            os.unlink(self._temp)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._abort()
            return False
        try:
            self._finish()
            os.replace(self._temp, self.path)
        except BaseException:
            self._abort()
            raise
        logger.info("wrote %s (%d frames at %s fps%s)", self.path, self.frames_written, self.fps,
                    ", with audio" if self.audio is not None else "")
        return False


@dataclass
class MediaInfo:
    """Stream facts of a media file: frame count, fps, durations in seconds, audio rate and channels."""

    frames: int
    fps: float
    width: int
    height: int
    video_seconds: float
    audio_rate: Optional[int]
    audio_channels: Optional[int]
    audio_seconds: Optional[float]
    video_codec: str
    audio_codec: Optional[str]


def probe_media(path: Path | str) -> MediaInfo:
    """Decode a media file's streams and report what they hold."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
        fps = float(video.average_rate or video.guessed_rate or 0)
        info = dict(frames=frames, fps=fps, width=video.codec_context.width, height=video.codec_context.height,
                    video_seconds=frames / fps if fps else 0.0, video_codec=video.codec_context.name,
                    audio_rate=None, audio_channels=None, audio_seconds=None, audio_codec=None)
    with av.open(str(path)) as container:
        if container.streams.audio:
            stream = container.streams.audio[0]
            samples = sum(f.samples for f in container.decode(stream))
            info.update(audio_rate=stream.codec_context.sample_rate, audio_channels=stream.codec_context.channels,
                        audio_seconds=samples / stream.codec_context.sample_rate, audio_codec=stream.codec_context.name)
    return MediaInfo(**info)


def read_video_frames(path: Path | str) -> tuple:
    """Decode a video file to (`[F, H, W, 3]` uint8 frames, fps)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
    if not frames:
        raise MediaError(f"{path}: no video frames")
    return np.stack(frames), fps


def read_audio(path: Path | str) -> tuple:
    """Decode the first audio stream of a media file to (`[C, S]` float32 −1..1, sample rate in Hz)."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        chunks = [f.to_ndarray().astype(np.float32).reshape(stream.codec_context.channels, -1)
                  if f.format.is_planar else f.to_ndarray().astype(np.float32).reshape(-1, stream.codec_context.channels).T
                  for f in container.decode(stream)]
        rate = int(stream.codec_context.sample_rate)
    if not chunks:
        raise MediaError(f"{path}: the audio stream is empty")
    return np.concatenate(chunks, axis=1), rate
