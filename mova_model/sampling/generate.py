"""`python -m mova_model generate CHECKPOINT ...`: prompts (+ optional first / last frame) -> one mp4 with sound.

    python -m mova_model generate models/mova/MOVA-360p --prompt "A man says hello." --image first.png \
        --size 640x352 --frames 193 --fps 24 --steps 50 --seed 42 --out clip.mp4

One segment per `--prompt`; two or more are chained with `--overlap K` frames (see `continuation.py`): the
clip has `N·F − (N−1)·K` frames. The last line on stdout is the mp4 path; logs go to stderr. Bad settings
are reported before anything is loaded or written (exit status 2).

Sampler choice: `--solver euler|unipc|dpm++`, `--shift S` (default: the checkpoint's scheduler config),
`--sigmas 1,0.9,...,0` (a custom schedule; it sets the step count). Restyle a clip: `--init-video clip.mp4
--denoise 0.6` (its frames are cropped and resized like `--image`, taken at `--fps` from the video's own rate;
its sound, if any, is restyled too, `--audio-denoise` giving the sound its own strength: 0 keeps it).

Split for wrappers (the multi-GPU launcher): `build_parser()` parses, `request_from_args()` validates into a
`GenerateRequest`, `generate(pipeline, request)` samples the joined latents, `write_outputs()` decodes and
writes; `run_generate(pipeline, request)` does both.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from .. import bounds
from ..atomic_write import atomic_write
from ..checks import CheckError, check_destination, check_device
from ..cli_args import CliParser, interrupted_exit_code, refuse, sigterm_as_interrupt
from ..network.precision import auto_dtype
from .guidance import GuidanceConfig
from .pipeline import OFFICIAL_NEGATIVE_PROMPT, InputError, JointLatents, MovaPipeline, validate_geometry
from .schedules import ScheduleError, ScheduleOptions, check_denoise, check_solver, parse_sigmas

logger = logging.getLogger(__name__)

MP4_TEMP_NAME_RESERVE = 40
"""Characters the mp4 writer's temporary name adds (`.<stem>.mova-<pid>-<8 hex>.partial.mp4`)."""


@dataclass
class GenerateRequest:
    """A validated generate command. Images are uint8 `[H, W, 3]` (any size; cropped and resized to the clip)."""

    prompts: List[str]
    width: int
    height: int
    frames: int
    fps: float
    steps: int
    seed: int
    out: Path
    overlap: int = 0
    cfg: float = 5.0
    negative_prompt: str = OFFICIAL_NEGATIVE_PROMPT
    hold_mode: str = "clean"
    solver: str = "euler"
    shift: Optional[float] = None
    sigmas: Optional[tuple] = None
    init_frames: Optional[np.ndarray] = None
    """`--init-video` frames, uint8 `[F, H, W, 3]` (any size), at `init_fps` frames per second."""
    init_fps: float = 0.0
    init_audio: Optional[tuple] = None
    """(`[C, S]` float32 waveform, sample rate) of `--init-video`'s sound; None when it has none."""
    denoise: float = 1.0
    audio_denoise: Optional[float] = None
    image: Optional[np.ndarray] = None
    last_image: Optional[np.ndarray] = None
    save_latents: Optional[Path] = None
    notes: List[str] = field(default_factory=list)

    @property
    def schedule(self) -> Optional[ScheduleOptions]:
        """The schedule options (None: the official Euler run)."""
        options = ScheduleOptions(self.solver, self.shift, self.sigmas)
        return None if options.is_default else options

    @property
    def total_frames(self) -> int:
        """Frames of the joined clip: `N·F − (N−1)·K`."""
        n = len(self.prompts)
        return n * self.frames - (n - 1) * self.overlap


def build_parser() -> CliParser:
    parser = CliParser(prog="python -m mova_model generate",
                                     description="Generate a video with sound from prompts (one segment per --prompt).")
    parser.add_argument("checkpoint", type=Path, help="MOVA checkpoint folder (official layout)")
    parser.add_argument("--prompt", action="append", required=True,
                        help="prompt of one segment; repeat for a longer clip (one segment each)")
    parser.add_argument("--negative-prompt", default=OFFICIAL_NEGATIVE_PROMPT)
    parser.add_argument("--image", type=Path, help="first frame (PNG/JPEG/...); default: text only (white first frame)")
    parser.add_argument("--last-image", type=Path, help="last frame of the (last) segment")
    parser.add_argument("--size", default="640x352", help="WxH, multiples of 16 (default 640x352)")
    parser.add_argument("--frames", type=int, default=193, help="frames per segment, 4k+1 (default 193)")
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=42, help="segment i uses seed + i")
    parser.add_argument("--cfg", type=float, default=5.0, help="text CFG scale (official 5.0)")
    parser.add_argument("--overlap", type=int, default=0,
                        help="frames shared by consecutive segments, 4m+1 and less than --frames (needed for 2+ prompts)")
    parser.add_argument("--hold-mode", choices=("clean", "renoise"), default="clean",
                        help="how the overlap is held from the previous segment")
    parser.add_argument("--out", type=Path, required=True, help="output .mp4")
    parser.add_argument("--save-latents", type=Path, help="also write the joined latents (.safetensors)")
    parser.add_argument("--solver", default="euler",
                        help="euler (official, default), unipc or dpm++ (the Wan 2.2 multistep flow solvers)")
    parser.add_argument("--shift", type=float, default=None,
                        help="schedule shift (default: the checkpoint's scheduler config)")
    parser.add_argument("--sigmas", default=None,
                        help="custom schedule: comma-separated sigmas from at most 1 down to 0 (sets the steps)")
    parser.add_argument("--init-video", type=Path, default=None,
                        help="a clip to restyle (its frames and sound); with --denoise below 1")
    parser.add_argument("--denoise", type=float, default=1.0,
                        help="restyle strength 0..1 (1: from pure noise, the default; 0: keep the clip)")
    parser.add_argument("--audio-denoise", type=float, default=None,
                        help="the sound's own strength 0..1 (default: --denoise; 0 keeps the clip's sound)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="DiT dtype (default: bfloat16 on a GPU with native bf16, else float32)")
    parser.add_argument("--lora", action="append", default=[], metavar="PATH[,strength=S][,expert=high|low|both]",
                        help="apply a LoRA (any supported format; repeatable, stacked in order). expert: which video "
                             "expert a Wan LoRA goes to (high = video_dit, low = video_dit_2, default both); "
                             "allow_partial=1 loads the keys that match and lists the rest")
    from ..parallel.launch import add_parallel_arguments

    add_parallel_arguments(parser)
    return parser


def read_image(path: Path, what: str) -> np.ndarray:
    """An image file -> uint8 RGB `[H, W, 3]`; a missing or unreadable file is an `InputError`."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"{what}: file {str(path)!r} does not exist")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{what}: {str(path)!r} is not a readable image ({exc})") from None


@dataclass(frozen=True)
class LoraSpec:
    """One `--lora PATH[,strength=S][,expert=high|low|both][,allow_partial=1]`."""

    path: Path
    strength: float = 1.0
    expert: str = "both"
    allow_partial: bool = False


def parse_lora(text: str) -> LoraSpec:
    """`PATH[,strength=S][,expert=high|low|both][,allow_partial=1]` -> `LoraSpec` (the file must exist)."""
    from ..network.lora import EXPERTS

    path, *options = text.split(",")
    values = {"strength": "1.0", "expert": "both", "allow_partial": "0"}
    for option in options:
        name, sep, value = option.partition("=")
        if not sep or name.strip() not in values:
            raise InputError(f"--lora {text!r}: options are strength=S, expert=high|low|both, allow_partial=0|1 "
                             f"(comma-separated after the path), not {option!r}")
        values[name.strip()] = value.strip()
    if not bounds.LORA_STRENGTH.contains(values["strength"]):
        raise InputError(f"--lora {text!r}: strength must be a number {bounds.LORA_STRENGTH.describe()}, "
                         f"got {values['strength']!r}")
    strength = float(values["strength"])
    if values["expert"] not in EXPERTS:
        raise InputError(f"--lora {text!r}: expert must be one of {', '.join(EXPERTS)}, got {values['expert']!r}")
    if values["allow_partial"] not in ("0", "1", "true", "false"):
        raise InputError(f"--lora {text!r}: allow_partial must be 0 or 1, got {values['allow_partial']!r}")
    if not Path(path).exists():
        raise InputError(f"--lora: {path!r} does not exist")
    return LoraSpec(Path(path), strength, values["expert"], values["allow_partial"] in ("1", "true"))


def parse_size(text: str) -> tuple:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--size must look like 640x352 (width x height), got {text!r}") from None
    return width, height


def check_cli_limits(args: argparse.Namespace, segments: int) -> None:
    """The numbers (shared `bounds`), the device and both destinations, before anything is loaded or written
    (issue 17, items 6 and 12): a bad one raises `InputError` naming the argument and what is allowed."""
    try:
        bounds.STEPS.check("--steps", args.steps)
        bounds.SEED.check("--seed", args.seed)
        if segments > 1:  # segment i uses seed + i
            bounds.SEED.check(f"--seed + {segments - 1} (the last segment's seed)", args.seed + segments - 1)
        bounds.CFG.check("--cfg", args.cfg)
        timeout = getattr(args, "parallel_timeout", None)
        if getattr(args, "parallel", None) and timeout is not None:
            bounds.PARALLEL_TIMEOUT_S.check("--parallel-timeout", timeout)
        check_device(args.device, "--device")
        check_destination(Path(args.out), "--out", reserve=MP4_TEMP_NAME_RESERVE)
        if args.save_latents is not None:
            if Path(args.save_latents).resolve() == Path(args.out).resolve():
                raise CheckError("--save-latents must name another file than --out")
            check_destination(Path(args.save_latents), "--save-latents")
    except (bounds.BoundsError, CheckError) as exc:
        raise InputError(str(exc)) from None


def _request_without_schedule(args: argparse.Namespace) -> GenerateRequest:
    """Validate every setting (nothing loaded yet); raises `InputError` naming what is wrong and what is allowed."""
    from .continuation import check_overlap

    width, height = parse_size(args.size)
    validate_geometry(width, height, int(args.frames), float(args.fps))
    prompts = [p for p in args.prompt]
    if any(not p.strip() for p in prompts):
        raise InputError("--prompt: every prompt must contain text")
    if args.steps < 1:
        raise InputError(f"--steps must be at least 1, got {args.steps}")
    if args.seed < 0:
        raise InputError(f"--seed must be 0 or more, got {args.seed}")
    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise InputError(f"--out must end in .mp4, got {str(out)!r}")
    if args.save_latents is not None and Path(args.save_latents).suffix != ".safetensors":
        raise InputError(f"--save-latents must end in .safetensors, got {str(args.save_latents)!r}")
    check_cli_limits(args, len(prompts))
    if len(prompts) > 1:
        check_overlap(int(args.overlap), int(args.frames))
    elif args.overlap:
        raise InputError("--overlap needs two or more --prompt (one segment per prompt)")
    image = read_image(args.image, "--image") if args.image else None
    last_image = read_image(args.last_image, "--last-image") if args.last_image else None
    for text in getattr(args, "lora", None) or []:  # before loading: `open_pipeline` applies them
        parse_lora(text)
    return GenerateRequest(prompts=prompts, width=width, height=height, frames=int(args.frames), fps=float(args.fps),
                           steps=int(args.steps), seed=int(args.seed), out=out, overlap=int(args.overlap),
                           cfg=float(args.cfg), negative_prompt=args.negative_prompt, hold_mode=args.hold_mode,
                           image=image, last_image=last_image, save_latents=args.save_latents)


def request_from_args(args: argparse.Namespace) -> GenerateRequest:
    """Every setting validated (nothing loaded yet), the sampler choice (--solver / --shift / --sigmas) and the clip
    to restyle (--init-video / --denoise / --audio-denoise) included; `InputError` names what is wrong."""
    request = _request_without_schedule(args)
    options = schedule_from_args(args)
    request.solver, request.shift, request.sigmas = options.solver, options.shift, options.sigmas
    read_init_video(args, request)
    return request


def schedule_from_args(args: argparse.Namespace) -> ScheduleOptions:
    """--solver / --shift / --sigmas as checked `ScheduleOptions`; `InputError` naming the option."""
    checks = (("--solver", lambda: check_solver(str(args.solver))),
              ("--sigmas", lambda: parse_sigmas(args.sigmas) if args.sigmas is not None else None),
              ("--shift", lambda: ScheduleOptions(shift=args.shift).validate()))
    values = []
    for flag, check in checks:
        try:
            values.append(check())
        except ScheduleError as exc:
            raise InputError(f"{flag}: {exc}") from None
    if values[1] is not None:
        logger.info("--sigmas gives %d steps (--steps%s not used)", len(values[1]) - 1,
                    "" if args.shift is None else " and --shift")
    return ScheduleOptions(values[0], args.shift, values[1])


def read_init_video(args: argparse.Namespace, request: GenerateRequest) -> None:
    """--init-video / --denoise / --audio-denoise into `request` (frames, fps, sound), checked before any loading:
    the strengths in 0..1, one segment, a video long enough for --frames at --fps."""
    from ..media.av_io import MediaError, read_audio, read_video_frames
    from .drivers import usable_frames

    try:
        request.denoise = check_denoise("--denoise", float(args.denoise))
        if args.audio_denoise is not None:
            request.audio_denoise = check_denoise("--audio-denoise", float(args.audio_denoise))
    except ScheduleError as exc:
        raise InputError(str(exc)) from None
    if args.init_video is None:
        if request.denoise < 1 or (request.audio_denoise is not None and request.audio_denoise < 1):
            raise InputError("--denoise / --audio-denoise below 1 rework an existing clip: give it with --init-video")
        return
    if len(request.prompts) > 1:
        raise InputError("--init-video restyles one clip: give one --prompt")
    path = Path(args.init_video)
    if not path.is_file():
        raise InputError(f"--init-video: file {str(path)!r} does not exist")
    try:
        frames, fps = read_video_frames(path)
    except (MediaError, OSError, ValueError) as exc:  # PyAV raises its own errors, all OSError/ValueError subclasses
        raise InputError(f"--init-video: {str(path)!r} is not a readable video ({exc})") from None
    usable = usable_frames(frames.shape[0], request.fps, fps)
    if usable < request.frames:
        raise InputError(f"--init-video: {str(path)!r} has {frames.shape[0]} frames at {fps:g} fps "
                         f"({frames.shape[0] / fps:.2f} s), too short for --frames {request.frames} at --fps "
                         f"{request.fps:g}; use --frames {usable} or fewer" if usable else
                         f"--init-video: {str(path)!r} is too short for even one frame")
    try:
        request.init_audio = read_audio(path)
    except MediaError:
        request.init_audio = None  # no sound: a restyle generates it
        if request.audio_denoise is not None and request.audio_denoise < 1:
            raise InputError(f"--audio-denoise {request.audio_denoise:g}: {str(path)!r} has no sound to keep or "
                             "rework; leave --audio-denoise out (the sound is generated)") from None
    request.init_frames, request.init_fps = frames, float(fps)


def generate(pipeline: MovaPipeline, request: GenerateRequest,
             callback: Optional[Callable] = None) -> JointLatents:
    """Sample every segment and join them: `JointLatents` of `request.total_frames` frames.

    Segment 0 takes `--image` as its first frame; the last segment takes `--last-image` as its last frame.
    Segment i > 0 continues segment i−1 (its first frame and the overlap come from the clip so far) with
    seed `seed + i`; guidance, LoRA and memory plan are the pipeline's, the same for every segment.
    """
    guidance = GuidanceConfig(text_scale=request.cfg)
    count = len(request.prompts)
    joined: Optional[JointLatents] = None
    for index, prompt in enumerate(request.prompts):
        last = request.last_image if index == count - 1 else None
        logger.info("segment %d/%d: %r", index + 1, count, prompt)
        conditioning = pipeline.prepare_conditioning(
            prompt, request.negative_prompt, request.image if index == 0 else None, width=request.width,
            height=request.height, num_frames=request.frames, video_fps=request.fps, last_image_uint8=last)
        if joined is None:
            init = None
            if request.init_frames is not None:
                from .drivers import encode_clip

                waveform, rate = (None, 0) if request.init_audio is None else request.init_audio
                init, notes = encode_clip(pipeline, torch.from_numpy(request.init_frames).float().div(255), conditioning,
                                          None if waveform is None else torch.from_numpy(waveform), rate,
                                          source_fps=request.init_fps)
                logger.info("init clip: %s", notes)
            joined = pipeline.sample(conditioning, seed=request.seed, steps=request.steps, guidance=guidance,
                                     callback=callback, schedule=request.schedule, init=init, denoise=request.denoise,
                                     audio_denoise=request.audio_denoise)
        else:
            from .continuation import extend

            joined = extend(pipeline, joined, conditioning, overlap=request.overlap, seed=request.seed + index,
                            steps=request.steps, guidance=guidance, hold_mode=request.hold_mode,
                            callback=callback, schedule=request.schedule).joined
    assert joined is not None
    return joined


def save_latents(path: Path, latents: JointLatents) -> Path:
    """Write video `[1, z, T', h, w]` and audio `[1, C, L]` latents with the clip geometry as metadata (atomic)."""
    from safetensors.torch import save_file

    meta = {"format": "mova_av", "width": str(latents.width), "height": str(latents.height),
            "num_frames": str(latents.num_frames), "video_fps": repr(float(latents.video_fps)),
            "sample_rate": str(latents.sample_rate), "segments": json.dumps(list(latents_segments(latents)))}
    tensors = {"video": latents.video.detach().float().cpu().contiguous(),
               "audio": latents.audio.detach().float().cpu().contiguous()}
    return atomic_write(path, lambda temp: save_file(tensors, temp, metadata=meta))


def latents_segments(latents: JointLatents) -> list:
    return [seam.to_dict() for seam in latents.segments]


def write_outputs(pipeline: MovaPipeline, latents: JointLatents, request: GenerateRequest) -> Path:
    """Decode (video by temporal chunks) and write the mp4 (and the latents when asked); returns the mp4 path."""
    from ..media.long_clip import write_clip_mp4

    path = write_clip_mp4(pipeline, latents, request.out)
    if request.save_latents is not None:
        save_latents(request.save_latents, latents)
    return path


def run_generate(pipeline: MovaPipeline, request: GenerateRequest, callback: Optional[Callable] = None) -> Path:
    return write_outputs(pipeline, generate(pipeline, request, callback), request)


def open_pipeline(args: argparse.Namespace) -> MovaPipeline:
    device = torch.device(args.device)
    if args.dtype is None:
        dtype = auto_dtype(device)  # bf16 only where the GPU has it natively
    else:
        dtype = getattr(torch, args.dtype)
    pipeline = MovaPipeline.from_pretrained(args.checkpoint, device=device, dtype=dtype)
    return with_loras(pipeline, [parse_lora(text) for text in getattr(args, "lora", None) or []])


def with_loras(pipeline: MovaPipeline, specs: Sequence[LoraSpec]) -> MovaPipeline:
    """`pipeline` with each `--lora` stacked in order (names and shapes checked, no weight read); a file that does
    not fit is an `InputError` naming it."""
    from ..network.lora import LoraError, LoraPatch

    for spec in specs:
        try:
            weights = pipeline.load_lora(spec.path, expert=spec.expert, allow_partial=spec.allow_partial)
            pipeline = pipeline.with_lora(LoraPatch(weights, spec.strength))
        except LoraError as exc:
            raise InputError(f"--lora: {exc}") from None
        logger.info("LoRA %s x%g (expert %s): %s", spec.path, spec.strength, spec.expert, weights.summary())
        for key, reason in weights.skipped:
            logger.warning("LoRA %s: skipped %s: %s", spec.path, key, reason)
    return pipeline


def generate_cli(argv: Optional[Sequence[str]] = None) -> int:
    """Exit status 0 with the mp4 path as the last stdout line; 2 on bad settings (nothing written)."""
    from ..checkpoint.folder import CheckpointError

    parser = build_parser()
    args = parser.parse_or_status(list(argv or []))
    if isinstance(args, int):  # --help, or the parser's one `error:` line
        return args
    if args.parallel:
        from ..parallel.launch import run_parallel_generate

        return run_parallel_generate(args, request_from_args, open_pipeline, generate, write_outputs)
    try:
        with sigterm_as_interrupt():
            request = request_from_args(args)
            pipeline = open_pipeline(args)
            path = run_generate(pipeline, request)
    except (InputError, CheckpointError) as exc:
        return refuse(str(exc))
    except KeyboardInterrupt as exc:  # outputs are written atomically: nothing partial is left
        what, code = interrupted_exit_code(exc)
        sys.stderr.write(f"{what}; no partial file was left\n")
        return code
    sys.stdout.write(f"{path}\n")
    return 0
