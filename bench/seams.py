"""Seam continuity of a generated long clip, in numbers: at each seam and at points inside the segments, the
frame-to-frame difference, the largest audio sample-to-sample jump (and the RMS step) and the loudness change.

    python -m bench.seams clip.mp4 --latents clip.safetensors          # seams from `generate --save-latents`
    python -m bench.seams clip.mp4 --segment-frames 201 --segments 3 --overlap 13
    python -m bench.seams clip.mp4 --seams 188,376                      # join frames given by hand
    python -m bench.seams clip.mp4 --demo CHECKPOINT                    # first makes a 3-segment clip (tiny: CPU)

A seam is the first frame after an overlap (where the previous segment's own frames end). Ratios near 1 mean the
seam looks and sounds like the rest of the clip; a ratio well above 1 in any column marks a visible or audible
cut. Measures are in `mova_model.media.seams`. On the tiny random-weight checkpoint the audio is full-scale
noise, so the audio jump saturates at 2.0 everywhere; real weights give meaningful numbers (not run here).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mova_model.media.av_io import read_audio, read_video_frames
from mova_model.media.seams import measure, seam_frames


def seams_from_latents(path: Path) -> list:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        segments = json.loads((handle.metadata() or {}).get("segments", "[]"))
    return [int(s["frame"]) + int(s["overlap_frames"]) for s in segments]


def make_demo(checkpoint: Path, out: Path, latents: Path) -> None:
    """A 3-segment clip with the generate CLI (tiny sizes), for trying the measure without real weights."""
    from mova_model.sampling.generate import generate_cli

    code = generate_cli([str(checkpoint), "--prompt", "rain on a street", "--prompt", "a taxi stops",
                         "--prompt", "a door closes", "--size", "32x32", "--frames", "17", "--fps", "8",
                         "--steps", "4", "--seed", "1", "--overlap", "5", "--out", str(out),
                         "--save-latents", str(latents)])
    if code:
        raise SystemExit(code)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mp4", type=Path)
    parser.add_argument("--latents", type=Path, help="the clip's --save-latents file (holds the seams)")
    parser.add_argument("--segment-frames", type=int)
    parser.add_argument("--segments", type=int, default=3)
    parser.add_argument("--overlap", type=int)
    parser.add_argument("--seams", help="join frames, comma separated")
    parser.add_argument("--demo", type=Path, metavar="CHECKPOINT", help="generate a 3-segment clip to mp4 first")
    parser.add_argument("--inside", type=int, default=3, help="measure points inside each segment")
    parser.add_argument("--window", type=float, default=0.02, help="audio jump window, seconds either side")
    parser.add_argument("--loudness", type=float, default=0.25, help="loudness window, seconds either side")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.demo is not None:
        args.latents = args.latents or args.mp4.with_suffix(".safetensors")
        make_demo(args.demo, args.mp4, args.latents)
    if args.latents is not None:
        joins = seams_from_latents(args.latents)
    elif args.seams:
        joins = [int(v) for v in args.seams.split(",") if v.strip()]
    elif args.segment_frames and args.overlap is not None:
        joins = seam_frames([args.segment_frames] * args.segments, args.overlap)
    else:
        parser.error("give --latents, --seams, or --segment-frames with --overlap")
    frames, fps = read_video_frames(args.mp4)
    waveform, rate = read_audio(args.mp4)
    report = measure(frames, waveform, rate, fps, joins, args.inside, args.window, args.loudness)
    print(f"{args.mp4}: {frames.shape[0]} frames at {fps:g} fps, audio {waveform.shape[1]} samples at {rate} Hz, "
          f"seams at frames {joins}")
    print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
