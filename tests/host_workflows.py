"""Helpers shared by the real-ComfyUI workflow tests (tests/host, tests/browser): the shipped API workflows
patched to the tiny checkpoint's sizes, media inputs written and uploaded, the output folder watched.

Nothing here talks to ComfyUI in-process: every workflow goes to the server over HTTP (``comfy.run``).
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np

from host_fixtures import REPO_ROOT

API_DIR = REPO_ROOT / "workflows" / "api"
SHIPPED = ("i2va", "t2va", "a2v", "v2a", "restyle")
LONG = ("long24", "first_last")  # long clips and keyframes: tests/host/test_long_workflows.py

# The small clip every test renders: a multiple of 16 on each side, 4k+1 frames.
TINY = {"width": 64, "height": 64, "frames": 9, "fps": 8.0, "steps": 3}

LAST_FRAME_NAME = "mova_last_frame.png"  # what workflows/api/mova_first_last_api.json loads as the last frame
VOICE_NAME = "mova_voice.wav"  # what workflows/api/mova_a2v_api.json loads
CLIP_NAME = "mova_clip.mp4"  # what workflows/api/mova_v2a_api.json loads
RESTYLE_CLIP_NAME = "mova_restyle_clip.mp4"  # what workflows/api/mova_restyle_api.json loads (a clip with sound)
VOICE_SECONDS = 0.7
VOICE_RATE = 44100
CLIP_FRAMES = 13


def load_api(name: str) -> dict:
    """A deep copy of ``workflows/api/mova_<name>_api.json``."""
    return json.loads((API_DIR / f"mova_{name}_api.json").read_text(encoding="utf-8"))


def nodes_of(workflow: dict, class_type: str) -> list[str]:
    """Ids of the nodes of one class, in id order."""
    return sorted((nid for nid, node in workflow.items() if node["class_type"] == class_type), key=str)


def node_of(workflow: dict, class_type: str) -> str:
    (nid,) = nodes_of(workflow, class_type)
    return nid


def patch_for_speed(workflow: dict, checkpoint: str, *, width=TINY["width"], height=TINY["height"],
                    frames=TINY["frames"], fps=TINY["fps"], steps=TINY["steps"], seed=None, prefix=None,
                    first_frame=None) -> dict:
    """A copy of ``workflow`` rendering the tiny clip with ``checkpoint``; ``prefix`` replaces the Mux's
    filename_prefix (so each test finds its own file), ``seed`` the sampler seed, ``first_frame`` the
    LoadImage file."""
    wf = copy.deepcopy(workflow)
    for node in wf.values():
        inputs = node["inputs"]
        kind = node["class_type"]
        if kind == "MovaLoader":
            inputs["checkpoint"] = checkpoint
        elif kind == "MovaTextImageConditioner":
            inputs.update(width=width, height=height, frames=frames, fps=float(fps))
        elif kind == "MovaJointSampler":
            inputs["steps"] = steps
            if seed is not None:
                inputs["seed"] = seed
        elif kind == "MovaMux":
            inputs["fps"] = float(fps)
            if prefix is not None:
                inputs["filename_prefix"] = prefix
        elif kind == "LoadImage" and first_frame is not None:
            inputs["image"] = first_frame
    return wf


def dac_sample_rate(comfy, checkpoint: str) -> int:
    """The checkpoint's audio rate in Hz, from ``audio_vae/config.json`` (the DAC's ``sample_rate``)."""
    config = comfy.server.models_dir / "mova" / checkpoint / "audio_vae" / "config.json"
    return int(json.loads(config.read_text())["sample_rate"])


def write_voice_wav(path: Path, seconds: float = VOICE_SECONDS, rate: int = VOICE_RATE) -> Path:
    """A stereo 16-bit PCM WAV: 220 Hz left, 330 Hz right, ``seconds`` long at ``rate`` Hz."""
    import wave

    t = np.arange(int(round(seconds * rate))) / rate
    stereo = np.stack([np.sin(2 * math.pi * 220 * t), np.sin(2 * math.pi * 330 * t)], axis=1) * 0.4
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((stereo * 32767).astype("<i2").tobytes())
    return path


def write_clip_mp4(path: Path, frames: int = CLIP_FRAMES, width: int = 64, height: int = 64, fps: float = 8.0) -> Path:
    """A small moving-gradient H.264 clip without audio, written with the pack's own ``write_mp4``."""
    from mova_model.media.av_io import write_mp4

    y, x = np.mgrid[0:height, 0:width]
    images = np.stack([
        np.stack([(x * 4 + 12 * i) % 256, (y * 4) % 256, np.full_like(x, 40 + 10 * i)], axis=-1)
        for i in range(frames)
    ]).astype(np.uint8)  # fmt: skip
    return write_mp4(path, images, fps)


def write_sound_clip_mp4(path: Path, frames: int = CLIP_FRAMES, fps: float = 8.0) -> Path:
    """The moving-gradient clip of ``write_clip_mp4`` with a 440 Hz tone as its sound (44.1 kHz mono)."""
    import torch

    from mova_model.media.av_io import read_video_frames, write_mp4

    silent = write_clip_mp4(path.with_name("silent_" + path.name), frames=frames, fps=fps)
    images, _ = read_video_frames(silent)
    t = torch.arange(int(VOICE_RATE * frames / fps)) / VOICE_RATE
    return write_mp4(path, images, fps, (torch.sin(2 * math.pi * 440 * t) * 0.3).reshape(1, -1), VOICE_RATE)


def upload_media(comfy, workdir: Path) -> dict:
    """Upload the A2V voice WAV, the V2A clip and the restyle clip under the names the shipped workflows load
    (idempotent)."""
    if "voice" not in comfy.images:
        comfy.images["voice"] = comfy.upload_image(write_voice_wav(workdir / VOICE_NAME))
    if "clip" not in comfy.images:
        comfy.images["clip"] = comfy.upload_image(write_clip_mp4(workdir / CLIP_NAME))
    if "restyle_clip" not in comfy.images:
        comfy.images["restyle_clip"] = comfy.upload_image(write_sound_clip_mp4(workdir / RESTYLE_CLIP_NAME))
    if "last_frame" not in comfy.images:
        from comfy_host import write_test_image

        comfy.images["last_frame"] = comfy.upload_image(write_test_image(workdir / LAST_FRAME_NAME, 48, 64))
    return comfy.images


def output_files(comfy) -> set[Path]:
    """Every file under the server's output folder (hidden and temporary ones included)."""
    root = comfy.server.base / "output"
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


def video_files(paths) -> set[Path]:
    """The mp4s (finished or partial) among ``paths``."""
    return {p for p in paths if ".mp4" in p.name or ".partial" in p.name}


def text_of(result, node_id: str) -> str:
    """The text a PreviewAny node showed."""
    return "\n".join(result.ui_outputs(node_id).get("text", []))
