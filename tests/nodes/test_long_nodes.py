"""MOVA Extend, the conditioner's last frame / keyframes and the long-clip decoder and mux, in-process.
End-to-end runs through the real server are in tests/host/test_long_workflows.py."""
import numpy as np
import pytest
import torch

from mova_model.media.av_io import probe_media

pytestmark = pytest.mark.usefixtures("hidden_inputs")


@pytest.fixture
def output_dir(tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path))
    return tmp_path


def _cond(node_module, handle, prompt, frames=9, **images):
    conditioner = node_module("conditioner").MovaTextImageConditioner
    return conditioner.execute(handle, prompt, "", 32, 32, frames, 8.0, **images).result[0]


def _sample(node_module, handle, cond, seed=1):
    return node_module("sampler").MovaJointSampler.execute(handle, cond, seed, 2, 1.0).result[0]


def test_keyframe_positions_parsing(node_module):
    conditioner = node_module("conditioner")
    frames = conditioner.keyframes_uint8(torch.rand(2, 20, 30, 3), "4, -1", 9)
    assert sorted(frames) == [4, 8] and frames[4].dtype == np.uint8
    assert conditioner.keyframes_uint8(None, "", 9) == {}
    for images, text, message in ((torch.rand(2, 8, 8, 3), "4", "2 keyframe images"),
                                  (torch.rand(1, 8, 8, 3), "9", "outside the clip"),
                                  (torch.rand(1, 8, 8, 3), "a", "separated by commas"),
                                  (None, "3", "no keyframes image batch")):
        with pytest.raises(ValueError, match=message):
            conditioner.keyframes_uint8(images, text, 9)
    with pytest.raises(ValueError, match="one last frame"):
        conditioner.first_frame_uint8(torch.rand(2, 8, 8, 3), "last_image")


def test_conditioner_last_image_sets_the_last_mask(node_module, handle):
    cond = _cond(node_module, handle, "a cat", image=torch.rand(1, 20, 30, 3), last_image=torch.rand(1, 20, 30, 3))
    assert cond.condition[0, :4, 0].min() == 1 and cond.condition[0, :4, -1, 0, 0].tolist() == [0, 0, 0, 1]


def test_extend_chains_and_decodes_to_the_exact_length(node_module, handle, output_dir):
    extend = node_module("extend").MovaExtend
    latent = _sample(node_module, handle, _cond(node_module, handle, "a dog barks"))
    for i, prompt in enumerate(("a car passes", "rain falls")):
        cond = _cond(node_module, handle, prompt)
        latent = extend.execute(handle, latent, cond, 5, "clean", 10 + i, 2, 1.0).result[0]
    assert latent["mova"]["num_frames"] == 3 * 9 - 2 * 5 and len(latent["mova"]["segments"]) == 2
    frames, audio = node_module("decoder").MovaAVDecoder.execute(handle, latent).result
    assert frames.shape == (17, 32, 32, 3)
    assert audio["waveform"].shape[-1] == int(16000 * 17 / 8.0)
    mux = node_module("mux").MovaMux
    video = mux.execute(frames, 8.0, "mova/long", audio).result[0]
    files = [p for p in output_dir.rglob("*.mp4")]
    assert len(files) == 1 and probe_media(files[0]).frames == 17


def test_extend_bad_inputs(node_module, handle):
    extend = node_module("extend").MovaExtend
    cond = _cond(node_module, handle, "x")
    latent = _sample(node_module, handle, cond)
    InputError = ValueError  # the pack's InputError (a ValueError) under its ComfyUI package name

    with pytest.raises(ValueError, match="previous: this LATENT was not made by the MOVA"):
        extend.execute(handle, {"samples": torch.zeros(1, 4, 3, 4, 4)}, cond, 5, "clean", 1, 1, 1.0)
    with pytest.raises(InputError, match="4m\\+1"):
        extend.execute(handle, latent, cond, 3, "clean", 1, 1, 1.0)
    with pytest.raises(InputError, match="shorter than the segment"):
        extend.execute(handle, latent, cond, 9, "clean", 1, 1, 1.0)
    wide = node_module("conditioner").MovaTextImageConditioner.execute(handle, "x", "", 48, 32, 9, 8.0).result[0]
    with pytest.raises(InputError, match="same size"):
        extend.execute(handle, latent, wide, 5, "clean", 1, 1, 1.0)
    other_fps = node_module("conditioner").MovaTextImageConditioner.execute(handle, "x", "", 32, 32, 9, 12.0).result[0]
    with pytest.raises(InputError, match="same fps"):
        extend.execute(handle, latent, other_fps, 5, "clean", 1, 1, 1.0)
