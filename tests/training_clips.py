"""Synthetic training clips written with PyAV for the training tests: moving colour bars and a tone."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import av
import numpy as np


def write_clip(path: Path, frames: int = 9, width: int = 48, height: int = 32, fps: float = 8.0,
               audio_rate: Optional[int] = 16000, seed: int = 0, caption: Optional[str] = "a test clip") -> Path:
    """An mp4 (H.264 + AAC unless `audio_rate` is None) and, when `caption` is given, a same-name .txt."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=3)
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=int(fps))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = None
        if audio_rate is not None:
            audio = container.add_stream("aac", rate=audio_rate)
            audio.layout = "mono"
        for i in range(frames):
            x = np.arange(width)[None, :, None]
            y = np.arange(height)[:, None, None]
            image = ((base[None, None, :] + 7 * x + 5 * y + 11 * i * (seed + 1)) % 256).astype(np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio is not None:
            seconds = frames / fps + 0.25
            t = np.arange(int(seconds * audio_rate)) / audio_rate
            wave = (0.3 * np.sin(2 * np.pi * (220 + 110 * seed) * t)).astype(np.float32)[None, :]
            chunk = 1024
            for start in range(0, wave.shape[1], chunk):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, start:start + chunk]), format="fltp", layout="mono")
                frame.sample_rate = audio_rate
                frame.pts = start
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def write_dataset(folder: Path, count: int = 2, **kwargs) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        write_clip(folder / f"clip{i}.mp4", seed=i, caption=f"clip number {i}, a tone and colour bars", **kwargs)
    return folder


GEOMETRY = dict(width=48, height=32, frames=9, fps=8.0)


def small_settings(**overrides):
    """`TrainSettings` of 4 optimizer steps of rank 4 on 48x32x9 clips; no warm-up and a high lr so a few
    steps show."""
    from mova_model.training.trainer import TrainSettings

    base = dict(steps=4, rank=4, alpha=4.0, lr=1e-2, warmup_steps=0, val_items=1, **GEOMETRY)
    base.update(overrides)
    return TrainSettings(**base)


def streaming_budget_gb(checkpoint_dir, experts: str, clip=None, rank: Optional[int] = None) -> float:
    """A VRAM budget (GB) at which the training plan streams: halfway between the smallest budget whose plan fits
    and the smallest that keeps every block resident. clip: (width, height, frames, fps), default `GEOMETRY`."""
    from mova_model.checkpoint.folder import MovaCheckpoint
    from mova_model.training.models import training_plan

    checkpoint = MovaCheckpoint.open(checkpoint_dir)
    clip = clip or (GEOMETRY["width"], GEOMETRY["height"], GEOMETRY["frames"], GEOMETRY["fps"])
    rank = rank if rank is not None else small_settings().rank

    def plan(gb):
        return training_plan(checkpoint, gb * 1e9, clip, "as stored", experts, rank=rank)

    def smallest(ok, lo=0.01, hi=64.0):
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if ok(mid) else (mid, hi)
        return hi

    resident = smallest(lambda gb: plan(gb).mode == "all-resident")
    fitting = smallest(lambda gb: plan(gb).fits, hi=resident)
    budget = (resident + fitting) / 2
    assert plan(budget).mode == "streamed" and plan(budget).fits
    return budget
