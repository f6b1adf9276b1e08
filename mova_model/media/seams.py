"""Continuity numbers for a joined clip: at each seam and at points inside the segments.

At a point (pixel frame j, time t = j / fps):
- video difference: mean absolute difference of frames j and j−1, in 0..255 units;
- audio jump: the largest sample-to-sample step |x[n] − x[n−1]| within ± `window_s` of t;
- audio step: the RMS of those steps in the same window (the jump saturates on clipped, noise-like audio);
- loudness change: RMS level of the `loudness_s` after t minus the `loudness_s` before, in dB.
Inside points are spread evenly over each segment, at least `2·loudness_s` away from every seam, so a seam is
compared against the same measure elsewhere in the same clip; `elsewhere_audio_jump` is the largest step over
every sample outside the seam windows. Used by `bench/seams.py` and the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np


@dataclass
class Point:
    kind: str  # "seam" or "inside"
    frame: int
    seconds: float
    video_diff: float
    audio_jump: float
    audio_step: float
    loudness_change_db: float


@dataclass
class SeamReport:
    points: List[Point]
    elsewhere_audio_jump: float = float("nan")

    def of(self, kind: str) -> List[Point]:
        return [p for p in self.points if p.kind == kind]

    def worst(self, kind: str, field: str) -> float:
        values = [abs(getattr(p, field)) for p in self.of(kind)]
        return max(values) if values else float("nan")

    def format(self) -> str:
        lines = [f"{'where':<8} {'frame':>6} {'time s':>8} {'video diff':>11} {'audio jump':>11} {'audio step':>11} "
                 f"{'loudness dB':>12}"]
        for p in self.points:
            lines.append(f"{p.kind:<8} {p.frame:>6} {p.seconds:>8.3f} {p.video_diff:>11.3f} {p.audio_jump:>11.5f} "
                         f"{p.audio_step:>11.5f} {p.loudness_change_db:>+12.2f}")
        for field, name in (("video_diff", "video diff"), ("audio_jump", "audio jump"), ("audio_step", "audio step"),
                            ("loudness_change_db", "|loudness|")):
            seam, inside = self.worst("seam", field), self.worst("inside", field)
            ratio = seam / inside if inside else float("inf")
            lines.append(f"largest {name}: seams {seam:.5g}, inside {inside:.5g}, ratio {ratio:.3g}")
        lines.append(f"largest audio jump outside the seam windows (every sample): {self.elsewhere_audio_jump:.5g}")
        return "\n".join(lines)


def seam_frames(segment_frames: Sequence[int], overlap: int) -> List[int]:
    """Join frames of a clip chained from segments of these lengths with `overlap` frames: the first frame after
    each overlap (where the previous segment's frames end)."""
    joins, end = [], 0
    for i, frames in enumerate(segment_frames):
        end = frames if i == 0 else end + frames - overlap
        if i < len(segment_frames) - 1:
            joins.append(end)
    return joins


def _rms_db(x: np.ndarray) -> float:
    return 20 * math.log10(max(float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if x.size else 0.0, 1e-9))


def measure(frames: np.ndarray, waveform: np.ndarray, sample_rate: int, fps: float, seams: Sequence[int],
            inside_per_segment: int = 3, window_s: float = 0.02, loudness_s: float = 0.25) -> SeamReport:
    """frames `[F, H, W, 3]` (uint8 or float 0..1), waveform `[C, S]` or `[S]` float, seams: join frames."""
    video = frames.astype(np.float32) * (255.0 if frames.dtype != np.uint8 else 1.0)
    audio = np.asarray(waveform, dtype=np.float64)
    audio = audio.mean(axis=0) if audio.ndim == 2 else audio.reshape(-1)
    steps = np.abs(np.diff(audio))
    count = video.shape[0]

    def point(kind: str, j: int) -> Point:
        t = j / fps
        n = int(round(t * sample_rate))
        w = max(1, int(window_s * sample_rate))
        window = steps[max(0, n - w): max(1, n + w)]
        jump = float(window.max()) if window.size else 0.0
        step = float(np.sqrt(np.mean(window ** 2))) if window.size else 0.0
        span = int(loudness_s * sample_rate)
        change = _rms_db(audio[n:n + span]) - _rms_db(audio[max(0, n - span):n])
        diff = float(np.abs(video[j] - video[j - 1]).mean()) if 0 < j < count else 0.0
        return Point(kind, j, t, diff, jump, step, change)

    points = [point("seam", j) for j in seams if 0 < j < count]
    bounds = [0] + [j for j in seams if 0 < j < count] + [count]
    guard = int(math.ceil(2 * loudness_s * fps))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        for k in range(inside_per_segment):
            j = lo + (hi - lo) * (k + 1) // (inside_per_segment + 1)
            if 0 < j < count and all(abs(j - s) >= guard for s in seams):
                points.append(point("inside", j))
    points.sort(key=lambda p: p.frame)
    outside = np.ones(steps.shape, dtype=bool)
    w = max(1, int(window_s * sample_rate))
    for j in seams:
        n = int(round(j / fps * sample_rate))
        outside[max(0, n - w): max(1, n + w)] = False
    elsewhere = float(steps[outside].max()) if outside.any() else float("nan")
    return SeamReport(points, elsewhere)
