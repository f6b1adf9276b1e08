"""Encoded-clip cache: each clip is encoded once (`encoding.ClipEncoders`) and stored as safetensors under a
key made of the clip file's content, its caption, the geometry and the checkpoint's encoders.

The checkpoint part hashes, for the text encoder, tokenizer, video VAE and audio VAE: each file's relative
path and size, every safetensors header (names, dtypes, shapes, offsets) and the first and last MiB of each
weight file (hashing a multi-GB file whole on every run would cost more than encoding). A changed clip,
caption, geometry or encoder gives a new key, so a stale entry is never read; entries are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from safetensors.torch import load_file, save_file

from ..atomic_write import atomic_write
from ..checks import CheckError, check_writable_folder
from ..checkpoint.folder import MovaCheckpoint
from .dataset import ClipGeometry, ClipSource, DatasetError, DatasetScan, file_digest, load_clip, no_usable_clip
from .step import EncodedClip

logger = logging.getLogger(__name__)

ENCODER_FOLDERS = ("tokenizer", "text_encoder", "video_vae", "audio_vae")
CACHE_VERSION = "1"
_EDGE = 1 << 20


def dataset_cache_dir(dataset: str | Path, fallback: Path, what: str = "cache folder") -> Tuple[Path, Optional[CheckError]]:
    """Where the encoded clips of `dataset` are cached: (`<dataset>/.mova_cache`, None) when that folder can be
    written, else (`fallback`, why not: the dataset folder is read-only). `what` names the folder in the reason."""
    preferred = Path(str(dataset).rstrip("/") or "/") / ".mova_cache"
    try:
        return check_writable_folder(preferred, what), None
    except CheckError as exc:
        return Path(fallback), exc


def checkpoint_fingerprint(checkpoint: MovaCheckpoint) -> str:
    """Hash of the encoder folders of a checkpoint (see the module docstring)."""
    digest = hashlib.sha256(CACHE_VERSION.encode())
    for folder in ENCODER_FOLDERS:
        base = checkpoint.root / folder
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            size = path.stat().st_size
            digest.update(f"{path.relative_to(checkpoint.root)}:{size}".encode())
            with open(path, "rb") as handle:
                if path.suffix == ".safetensors" and size >= 8:
                    header_len = int.from_bytes(handle.read(8), "little")
                    digest.update(handle.read(min(header_len, size - 8)))
                handle.seek(0)
                digest.update(handle.read(_EDGE))
                if size > 2 * _EDGE:
                    handle.seek(size - _EDGE)
                    digest.update(handle.read(_EDGE))
    return digest.hexdigest()


def clip_key(content_digest: str, caption: str, geometry: ClipGeometry, fingerprint: str, empty_caption: bool) -> str:
    payload = json.dumps({"clip": content_digest, "caption": caption, "w": geometry.width, "h": geometry.height,
                          "f": geometry.num_frames, "fps": geometry.fps, "sr": geometry.sample_rate,
                          "ckpt": fingerprint, "empty": empty_caption, "v": CACHE_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def atomic_save_file(tensors: Dict[str, torch.Tensor], path: Path, metadata: Optional[Dict[str, str]] = None) -> Path:
    """`safetensors.save_file` into a temporary file beside `path`, then rename over it."""
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda temp: save_file(contiguous, temp, metadata=metadata))


def _store(clip: EncodedClip, path: Path) -> None:
    tensors = {"context": clip.context, "video_latents": clip.video_latents, "condition": clip.condition,
               "audio_latents": clip.audio_latents}
    if clip.empty_context is not None:
        tensors["empty_context"] = clip.empty_context
    atomic_save_file(tensors, path, {"video_fps": repr(clip.video_fps), "name": clip.name})


def _restore(path: Path, name: str) -> EncodedClip:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    t = load_file(str(path))
    return EncodedClip(t["context"], t["video_latents"], t["condition"], t["audio_latents"],
                       float(meta["video_fps"]), t.get("empty_context"), name)


def encode_dataset(scan: DatasetScan, geometry: ClipGeometry, checkpoint: MovaCheckpoint, cache_dir: Optional[Path],
                   encoders_factory: Callable[[], "object"], strict: bool = False, empty_caption: bool = False,
                   on_clip: Optional[Callable[[int, int, str], None]] = None) -> Tuple[List[EncodedClip], List[Tuple[str, str]]]:
    """Encoded clips of `scan` (from the cache when present) and the `(name, reason)` list of skipped files.

    `encoders_factory()` returns a `ClipEncoders`; it is created only if a clip must be encoded and released
    before returning. Raises `DatasetError` when nothing is usable (or on the first problem with `strict`).
    """
    fingerprint = checkpoint_fingerprint(checkpoint) if cache_dir is not None else ""
    clips: List[EncodedClip] = []
    skipped = list(scan.skipped)
    holder: Dict[str, object] = {}

    def encoders() -> object:
        if "encoders" not in holder:
            holder["encoders"] = encoders_factory()
        return holder["encoders"]

    try:
        for i, source in enumerate(scan.sources):
            if on_clip is not None:
                on_clip(i, len(scan.sources), source.path.name)
            try:
                clips.append(_one(source, geometry, cache_dir, fingerprint, empty_caption, encoders))
            except DatasetError as exc:
                if strict:
                    raise
                skipped.append((source.path.name, str(exc).split(": ", 1)[-1]))
                logger.warning("skipped %s", exc)
    finally:
        if "encoders" in holder:
            holder["encoders"].release()  # type: ignore[attr-defined]
    if not clips:
        raise no_usable_clip(scan, skipped)
    return clips, skipped


def _one(source: ClipSource, geometry: ClipGeometry, cache_dir: Optional[Path], fingerprint: str,
         empty_caption: bool, encoders: Callable[[], object]) -> EncodedClip:
    name = source.path.name
    path = None
    if source.caption is not None and source.path.is_file() and cache_dir is not None:
        key = clip_key(file_digest(source.path), str(source.caption), geometry, fingerprint, empty_caption)
        path = Path(cache_dir) / f"{key}.safetensors"
        if path.is_file():
            try:
                return _restore(path, name)
            except Exception as exc:  # a damaged entry is re-encoded
                logger.warning("cache entry %s unreadable (%s); encoding again", path.name, exc)
    prepared = load_clip(source, geometry)
    clip = encoders().encode(prepared.video, prepared.first_frame, prepared.audio, str(source.caption), geometry.fps,
                      with_empty_caption=empty_caption)
    clip.name = name
    if path is not None:
        _store(clip, path)
    return clip
