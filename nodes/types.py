"""The pack's few custom ComfyUI types, and the model handle the Loader hands to the other nodes.

- `MOVA_MODEL`: a `MovaModelHandle` (a lazily loaded `MovaPipeline` plus its memory plan).
- `MOVA_CONDITIONING`: `mova_model.sampling.pipeline.Conditioning` (text embeddings + first-frame condition + clip size).
- `MOVA_GUIDANCE`: `mova_model.sampling.guidance.GuidanceConfig` (text / bridge CFG scales).
- `MOVA_HELD`: `mova_model.sampling.sampler.HeldStream` (an audio or video stream held fixed: A2V / V2A).
Everything else is a core type: LATENT (video latents in `samples`, audio latents beside them), IMAGE,
AUDIO, VIDEO, STRING.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from comfy_api.latest import io

from ..mova_model.sampling.pipeline import Conditioning, JointLatents, MovaPipeline

MovaModel = io.Custom("MOVA_MODEL")
MovaConditioning = io.Custom("MOVA_CONDITIONING")
MovaGuidance = io.Custom("MOVA_GUIDANCE")
MovaHeld = io.Custom("MOVA_HELD")

LATENT_TYPE = "mova_av"


@dataclass
class MovaModelHandle:
    """What flows on a MOVA_MODEL wire: the pipeline (modules load on first use) and the plan text."""

    pipeline: MovaPipeline
    name: str
    plan_text: str = ""


def latents_to_comfy(latents: JointLatents) -> dict:
    """JointLatents -> a core LATENT dict: `samples` = video latents `[1, z, T', H/8, W/8]`, the audio latents
    `[1, C, L]` and the clip geometry beside them, `type` = "mova_av"."""
    return {"samples": latents.video.cpu(), "audio_samples": latents.audio.cpu(), "type": LATENT_TYPE,
            "mova": {"width": latents.width, "height": latents.height, "num_frames": latents.num_frames,
                     "video_fps": latents.video_fps, "sample_rate": latents.sample_rate,
                     "segments": [seam.to_dict() for seam in latents.segments], "has_audio": bool(latents.has_audio)}}


def latents_from_comfy(latent: dict, name: str = "latent") -> JointLatents:
    """A LATENT made by the MOVA Joint Sampler (or MOVA Extend, MOVA Encode) -> JointLatents; any other LATENT is
    rejected."""
    if not isinstance(latent, dict) or latent.get("type") != LATENT_TYPE or "audio_samples" not in latent:
        raise ValueError(f"{name}: this LATENT was not made by the MOVA Joint Sampler (it has no audio stream); "
                         "connect the MOVA Joint Sampler's output")
    meta = latent.get("mova")
    if not isinstance(meta, dict) or any(k not in meta for k in ("width", "height", "num_frames", "video_fps", "sample_rate")):
        raise ValueError("latent: this MOVA LATENT has lost its clip description (size, frames, fps); "
                         "connect a MOVA Joint Sampler or MOVA Extend output directly")
    from ..mova_model.sampling.continuation import Seam

    return JointLatents(video=latent["samples"], audio=latent["audio_samples"], width=int(meta["width"]),
                        height=int(meta["height"]), num_frames=int(meta["num_frames"]),
                        video_fps=float(meta["video_fps"]), sample_rate=int(meta["sample_rate"]),
                        segments=tuple(Seam.from_dict(d) for d in meta.get("segments") or ()),
                        has_audio=bool(meta.get("has_audio", True)))


def conditioning_of(value) -> Conditioning:
    """The MOVA_CONDITIONING on a wire, or a message saying what to connect."""
    if not isinstance(value, Conditioning):
        raise ValueError("conditioning: connect the output of a MOVA Text+Image Conditioner")
    return value


def audio_of(value, name: str = "audio") -> tuple:
    """A core AUDIO on a wire -> (waveform `[B, channels, samples]`, sample rate in Hz), or a message saying what
    to connect."""
    if not isinstance(value, dict) or "waveform" not in value or "sample_rate" not in value:
        raise ValueError(f"{name}: expected a ComfyUI AUDIO (from LoadAudio or another audio node)")
    return value["waveform"], int(value["sample_rate"])


def handle_of(model: Optional[MovaModelHandle]) -> MovaModelHandle:
    if not isinstance(model, MovaModelHandle):
        raise ValueError("model: connect the output of a MOVA Loader node")
    return model


