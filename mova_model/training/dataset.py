"""Training clips: a folder of videos with sound and a same-name `.txt` caption each, or the official
`metadata.json` list of `{"video_path", "caption"}`; decoded with PyAV.

Each clip is prepared as the official `VideoAudioDataset` (`mova/datasets/video_audio_dataset.py`) does:
its first `num_frames` frames; a centre crop to the target aspect (`round(h·W/H)` or `round(w·H/W)`) and a
bilinear, antialiased resize to W×H (torchvision `resize` on uint8, reproduced with `F.interpolate`, rounded
back to uint8); values `x/255·2 − 1`; the first frame as the I2V condition; the audio from 0 to
`num_frames/fps` seconds, mono at the audio VAE's rate, cut or zero-padded to `int(rate·num_frames/fps)`.
Unlike the official, a file without audio, shorter than the clip, unreadable or without a caption (or with
a caption that is not UTF-8 text) is reported by name and skipped (or raises, with `strict=True`). Captions
are read up to `bounds.MAX_TEXT_CHARS` characters (a warning names a longer one), so a huge caption file
costs no memory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import av
import numpy as np
import torch
import torch.nn.functional as F

from ..bounds import MAX_TEXT_CHARS, cap_text
from ..media.av_io import resample_audio

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


class DatasetError(ValueError):
    """A dataset that cannot be used; the message says what was looked for or what is wrong."""


@dataclass(frozen=True)
class ClipGeometry:
    """Target clip: width × height pixels (multiples of 16), num_frames = 4k+1, fps, audio sample rate (Hz)."""

    width: int
    height: int
    num_frames: int
    fps: float
    sample_rate: int

    def validate(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 16 or self.height % 16:
            raise DatasetError(f"clip size {self.width}x{self.height}: width and height must be multiples of 16 (at least 16)")
        if self.num_frames < 5 or (self.num_frames - 1) % 4:
            raise DatasetError(f"frames {self.num_frames}: must be 4k+1 and at least 5 (e.g. 9, 49, 97, 193)")
        if not self.fps > 0:
            raise DatasetError(f"fps must be positive, got {self.fps}")

    @property
    def audio_samples(self) -> int:
        return int(self.sample_rate * self.num_frames / self.fps)


@dataclass
class ClipSource:
    """A clip file and its caption; `problem`: why the clip cannot be used although the file was found."""

    path: Path
    caption: Optional[str]
    problem: Optional[str] = None


@dataclass
class PreparedClip:
    """video [1, 3, F, H, W] and first_frame [1, 3, H, W] in [-1, 1]; audio [1, 1, S]."""

    source: ClipSource
    video: torch.Tensor
    first_frame: torch.Tensor
    audio: torch.Tensor


@dataclass
class DatasetScan:
    """What a folder holds: usable sources and `(file name, reason)` for everything skipped."""

    root: Path
    sources: List[ClipSource] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.root}: {len(self.sources)} clip(s) usable, {len(self.skipped)} skipped"]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


def scan_dataset(root: Path | str) -> DatasetScan:
    """Find the clips of a dataset folder (`metadata.json` if present, else videos + same-name `.txt`)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    scan = DatasetScan(root)
    meta = root / "metadata.json"
    if meta.is_file():
        try:
            items = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{meta}: not readable JSON ({exc})") from exc
        if not isinstance(items, list):
            raise DatasetError(f"{meta}: expected a list of {{\"video_path\", \"caption\"}} objects")
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not item.get("video_path"):
                scan.skipped.append((f"metadata.json[{i}]", "no video_path"))
                continue
            caption = item.get("caption")
            if caption is not None:
                caption = cap_text(str(caption), f"caption of {item['video_path']} in metadata.json")
            scan.sources.append(ClipSource(root / str(item["video_path"]), caption))
    else:
        for path in sorted(p for p in root.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()):
            txt = path.with_suffix(".txt")
            caption, problem = read_caption(txt) if txt.is_file() else (None, None)
            scan.sources.append(ClipSource(path, caption, problem))
    return scan


def read_caption(path: Path) -> Tuple[Optional[str], Optional[str]]:
    """(caption, None), or (None, why it cannot be used). Reads at most `MAX_TEXT_CHARS` characters (a
    longer caption is cut with a warning); the file must be UTF-8 text."""
    import codecs

    limit = 4 * MAX_TEXT_CHARS + 4  # bytes: enough for MAX_TEXT_CHARS characters of any UTF-8 text
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        return None, f"caption {path.name} cannot be read ({exc.strerror or exc})"
    complete = len(raw) <= limit
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(raw[:limit], final=complete)
    except UnicodeDecodeError as exc:
        return None, (f"caption {path.name} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                      "save it as UTF-8")
    if len(text) > MAX_TEXT_CHARS:
        logger.warning("caption %s is %s bytes; only its first %s characters are read (the text encoder reads 512 "
                       "tokens, about 2,000-3,000 characters). Shorten it.", path.name, f"{path.stat().st_size:,}",
                       f"{MAX_TEXT_CHARS:,}")
        text = text[:MAX_TEXT_CHARS]
    return text.strip(), None


def no_usable_clip(scan: DatasetScan, skipped: List[Tuple[str, str]]) -> DatasetError:
    """The error of a dataset none of whose clips can be used: what was looked for, and each file's reason."""
    looked = (f"{scan.root / 'metadata.json'}" if (scan.root / "metadata.json").is_file()
              else f"video files ({', '.join(VIDEO_SUFFIXES)}) with a same-name .txt "
                   f"caption in {scan.root}")
    detail = "; ".join(f"{n}: {r}" for n, r in skipped) or "nothing found"
    return DatasetError(f"the dataset has no usable clip: looked for {looked} ({detail})")


def caption_problem(source: ClipSource) -> Optional[str]:
    """Why `source` cannot be used, as far as its caption and file say (None: its video must be read to know)."""
    if source.problem:
        return source.problem
    if source.caption is None or not str(source.caption).strip():
        return f"no caption (put it in {source.path.with_suffix('.txt').name} or metadata.json)"
    if not source.path.is_file():
        return "file not found"
    return None


def check_captions(scan: DatasetScan, strict: bool = False) -> None:
    """Before anything is decoded or loaded: with `strict` a clip with a caption problem is an error, and a
    dataset where no clip has a usable caption is refused (`no_usable_clip`)."""
    problems = [(source.path.name, caption_problem(source)) for source in scan.sources]
    problems = [(name, reason) for name, reason in problems if reason]
    if strict and problems:
        raise DatasetError(f"{problems[0][0]}: {problems[0][1]}")
    if len(problems) == len(scan.sources):
        raise no_usable_clip(scan, list(scan.skipped) + problems)


def _crop_resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [F, 3, h, w] -> uint8 [F, 3, height, width]: official centre crop, bilinear antialiased resize."""
    in_h, in_w = int(frames.shape[-2]), int(frames.shape[-1])
    target = float(width) / float(height)
    ratio = float(in_w) / float(in_h)
    if ratio > target:
        crop_h, crop_w = in_h, max(1, int(round(in_h * target)))
    else:
        crop_w, crop_h = in_w, max(1, int(round(in_w / target)))
    top, left = int(round((in_h - crop_h) / 2.0)), int(round((in_w - crop_w) / 2.0))
    frames = frames[..., top:top + crop_h, left:left + crop_w]
    if (crop_h, crop_w) == (height, width):
        return frames
    out = F.interpolate(frames.float(), size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _decode_video(container: "av.container.InputContainer", count: int) -> torch.Tensor:
    stream = container.streams.video[0]
    frames = []
    for frame in container.decode(stream):
        frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
        if len(frames) == count:
            break
    if not frames:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    return torch.stack(frames).permute(0, 3, 1, 2).contiguous()


def _decode_audio(container: "av.container.InputContainer", seconds: float, rate: int) -> torch.Tensor:
    stream = container.streams.audio[0]
    chunks, native_rate, start = [], None, None
    for frame in container.decode(stream):
        if start is None:
            start = float(frame.time or 0.0)
        native_rate = frame.sample_rate
        data = frame.to_ndarray()
        if data.ndim == 1 or frame.format.is_packed:
            data = data.reshape(-1, len(frame.layout.channels)).T
        chunks.append(data.astype(np.float32))
        if sum(c.shape[1] for c in chunks) >= (seconds + 0.1) * native_rate:
            break
    if not chunks:
        return torch.zeros(1, 0)
    wave = resample_audio(torch.from_numpy(np.concatenate(chunks, axis=1)), int(native_rate), int(rate), 1)
    if start and start > 0:  # official: left-pad by the first sample's presentation time
        wave = F.pad(wave, (int(round(start * rate)), 0))
    return wave


def load_clip(source: ClipSource, geometry: ClipGeometry) -> PreparedClip:
    """Decode and prepare one clip; raises `DatasetError` naming the file and the problem."""
    name = source.path.name
    problem = caption_problem(source)
    if problem:
        raise DatasetError(f"{name}: {problem}")
    try:
        with av.open(str(source.path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{name}: no video stream")
            if not container.streams.audio:
                raise DatasetError(f"{name}: no audio track (MOVA trains video and audio together)")
            frames = _decode_video(container, geometry.num_frames)
        with av.open(str(source.path)) as container:
            wave = _decode_audio(container, geometry.num_frames / geometry.fps, geometry.sample_rate)
    except DatasetError:
        raise
    except Exception as exc:  # PyAV raises many types for broken files
        raise DatasetError(f"{name}: unreadable ({type(exc).__name__}: {exc})") from exc
    if frames.shape[0] < geometry.num_frames:
        raise DatasetError(f"{name}: has {frames.shape[0]} frames, shorter than the clip of {geometry.num_frames}")
    video = _crop_resize(frames, geometry.height, geometry.width).float() / 255.0 * 2 - 1
    video = video.permute(1, 0, 2, 3).unsqueeze(0).contiguous()  # [1, 3, F, H, W]
    target = geometry.audio_samples
    wave = wave[:, :target] if wave.shape[1] >= target else F.pad(wave, (0, target - wave.shape[1]))
    return PreparedClip(source, video, video[:, :, 0].clone(), wave.unsqueeze(0).contiguous())


def file_digest(path: Path) -> str:
    """sha256 of a file's content (the cache key's clip part)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
