"""Continuation: a segment after a previous clip, its overlap held from that clip, then joined (see `extend`)."""

from __future__ import annotations

from .pipeline import InputError


def check_overlap(overlap: int, num_frames: int, previous_frames: int | None = None) -> None:
    """Raise `InputError` unless `overlap` K fits the latent grid (K = 4m + 1, so the held video is whole latent
    frames: pixel frame K−1 ends latent frame m) and is shorter than the segment (and the previous clip)."""
    if overlap < 1 or (overlap - 1) % 4:
        raise InputError(f"overlap must be 4m+1 frames (1, 5, 9, 13, ...) so it covers whole latent frames, got {overlap}")
    if overlap >= num_frames:
        raise InputError(f"overlap ({overlap} frames) must be shorter than the segment ({num_frames} frames)")
    if previous_frames is not None and overlap >= previous_frames:
        raise InputError(f"overlap ({overlap} frames) must be shorter than the previous clip ({previous_frames} frames)")
