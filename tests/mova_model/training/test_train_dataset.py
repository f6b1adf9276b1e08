"""Dataset discovery, clip preparation, skipped files and the encoded-clip cache."""

import json

import pytest
import torch

from mova_model.checkpoint.folder import MovaCheckpoint
from mova_model.training.cache import encode_dataset
from mova_model.training.dataset import (ClipGeometry, DatasetError, _crop_resize, load_clip, scan_dataset)
from mova_model.training.encoding import ClipEncoders

from training_clips import write_clip

GEO = ClipGeometry(48, 32, 9, 8.0, 16000)


def test_clip_is_prepared_like_the_official_dataset(tmp_path):
    path = write_clip(tmp_path / "a.mp4", frames=12, width=64, height=32)
    clip = load_clip(scan_dataset(tmp_path).sources[0], GEO)
    assert clip.video.shape == (1, 3, 9, 32, 48) and clip.first_frame.shape == (1, 3, 32, 48)
    assert clip.video.min() >= -1 and clip.video.max() <= 1
    assert torch.equal(clip.first_frame, clip.video[:, :, 0])
    assert clip.audio.shape == (1, 1, int(16000 * 9 / 8.0))
    assert clip.audio.abs().max() > 0.05  # the tone is there
    assert path.exists()


def test_crop_resize_matches_torchvision_when_available():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    frames = torch.randint(0, 256, (2, 3, 37, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ours = _crop_resize(frames, 32, 48)
    crop = tvf.center_crop(frames, [37, int(round(37 * 48 / 32))])
    theirs = tvf.resize(crop, [32, 48], interpolation=tvf.InterpolationMode.BILINEAR, antialias=True)
    assert (ours.int() - theirs.int()).abs().max() <= 1


def test_bad_files_are_named_and_skipped_or_raise_when_strict(tmp_path):
    write_clip(tmp_path / "good.mp4")
    write_clip(tmp_path / "silent.mp4", audio_rate=None)
    write_clip(tmp_path / "short.mp4", frames=5)
    write_clip(tmp_path / "nocaption.mp4", caption=None)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "broken.txt").write_text("broken")
    scan = scan_dataset(tmp_path)
    reasons = {}
    for source in scan.sources:
        try:
            load_clip(source, GEO)
        except DatasetError as exc:
            reasons[source.path.name] = str(exc)
    assert set(reasons) == {"silent.mp4", "short.mp4", "nocaption.mp4", "broken.mp4"}
    assert "no audio track" in reasons["silent.mp4"] and "shorter than the clip" in reasons["short.mp4"]
    assert "no caption" in reasons["nocaption.mp4"] and "unreadable" in reasons["broken.mp4"]


def test_metadata_json_and_empty_dataset(tmp_path):
    (tmp_path / "videos").mkdir()
    write_clip(tmp_path / "videos" / "x.mp4", caption=None)
    (tmp_path / "metadata.json").write_text(json.dumps([{"video_path": "videos/x.mp4", "caption": "hi"}, {"caption": "no path"}]))
    scan = scan_dataset(tmp_path)
    assert [s.caption for s in scan.sources] == ["hi"] and scan.skipped == [("metadata.json[1]", "no video_path")]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no usable clip: looked for video files"):
        encode_dataset(scan_dataset(empty), GEO, None, None, lambda: None)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "missing")


def test_cache_is_reused_and_invalidated_by_content_geometry_and_checkpoint(tmp_path, tiny_checkpoint_dir):
    data = tmp_path / "d"
    data.mkdir()
    write_clip(data / "c.mp4")
    ck = MovaCheckpoint.open(tiny_checkpoint_dir)
    builds = []

    def factory(checkpoint=ck):
        builds.append(1)
        return ClipEncoders(checkpoint)

    cache = tmp_path / "cache"
    first, _ = encode_dataset(scan_dataset(data), GEO, ck, cache, factory)
    second, _ = encode_dataset(scan_dataset(data), GEO, ck, cache, factory)
    assert len(builds) == 1 and torch.equal(first[0].video_latents, second[0].video_latents)
    assert len(list(cache.glob("*.safetensors"))) == 1
    encode_dataset(scan_dataset(data), ClipGeometry(32, 32, 9, 8.0, 16000), ck, cache, factory)
    assert len(builds) == 2
    write_clip(data / "c.mp4", seed=5)  # same name, new content
    encode_dataset(scan_dataset(data), GEO, ck, cache, factory)
    assert len(builds) == 3
    from mova_model.checkpoint.tiny import write_tiny_checkpoint
    other = MovaCheckpoint.open(write_tiny_checkpoint(tmp_path / "other", seed=1))
    encode_dataset(scan_dataset(data), GEO, other, cache, lambda: factory(other))
    assert len(builds) == 4 and len(list(cache.glob("*.safetensors"))) == 4
