"""The MOVA nodes' adapters in-process (ComfyUI's modules importable, no server): type translation,
validation messages and the mux's atomic write. End-to-end runs are in tests/host."""
import pytest
import torch


@pytest.fixture(scope="module")
def types(node_module):
    return node_module("types")


def test_latent_round_trip_keeps_both_streams(types):
    from mova_model.sampling.pipeline import JointLatents

    latents = JointLatents(video=torch.randn(1, 4, 3, 8, 8), audio=torch.randn(1, 8, 40), width=64, height=64,
                           num_frames=9, video_fps=8.0, sample_rate=16000)
    comfy_latent = types.latents_to_comfy(latents)
    assert comfy_latent["type"] == "mova_av" and torch.equal(comfy_latent["samples"], latents.video)
    back = types.latents_from_comfy(comfy_latent)
    assert torch.equal(back.audio, latents.audio) and (back.width, back.num_frames, back.sample_rate) == (64, 9, 16000)


def test_foreign_latent_is_rejected_with_a_message(types):
    with pytest.raises(ValueError, match="not made by the MOVA Joint Sampler"):
        types.latents_from_comfy({"samples": torch.zeros(1, 4, 8, 8)})


def test_model_input_must_be_a_loader_output(types):
    with pytest.raises(ValueError, match="MOVA Loader"):
        types.handle_of("not a model")


def test_first_frame_batch_is_rejected(node_module):
    conditioner = node_module("conditioner")
    assert conditioner.first_frame_uint8(None) is None
    frame = conditioner.first_frame_uint8(torch.rand(1, 20, 30, 3))
    assert frame.shape == (20, 30, 3) and frame.dtype.name == "uint8"
    with pytest.raises(ValueError, match="one first frame, got a batch of 2"):
        conditioner.first_frame_uint8(torch.rand(2, 20, 30, 3))


@pytest.mark.parametrize("preset, passes", [("official (text CFG)", 2), ("lip-sync (dual CFG)", 3),
                                            ("text + modality (2 passes)", 2), ("no guidance (1 pass)", 1)])
def test_guidance_presets_and_pass_counts(node_module, preset, passes):
    guidance = node_module("guidance")
    config, summary = guidance.MovaGuidanceNode.execute(preset=preset, text_scale=0.0, bridge_scale=0.0).args
    assert f"{passes} passes per step" in summary
    from mova_model.sampling.guidance import PRESETS

    assert (config.text_scale, config.bridge_scale) == PRESETS[preset]


def test_guidance_custom_per_modality(node_module):
    guidance = node_module("guidance")
    config, summary = guidance.MovaGuidanceNode.execute(preset="custom", text_scale=4.0, bridge_scale=1.0,
                                                        audio_bridge_scale=2.0).args
    assert config.scales("video") == (4.0, 1.0) and config.scales("audio") == (4.0, 2.0)
    assert "3 passes per step" in summary


@pytest.fixture
def output_dir(tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path))
    return tmp_path


def test_mux_writes_video_and_audio(node_module, output_dir):
    from mova_model.media.av_io import probe_media

    mux = node_module("mux")
    frames = torch.rand(9, 32, 48, 3)
    audio = {"waveform": torch.randn(1, 2, 12000) * 0.1, "sample_rate": 44100}
    out = mux.MovaMux.execute(frames=frames, fps=8.0, filename_prefix="mova/test", audio=audio)
    saved = out.ui.as_dict()["images"][0]
    path = output_dir / saved["subfolder"] / saved["filename"]
    info = probe_media(path)
    assert (info.frames, info.width, info.height, info.audio_rate) == (9, 48, 32, 44100)
    assert abs(info.audio_seconds - info.video_seconds) < 1 / 8
    assert out.args[0].get_dimensions() == (48, 32)


def test_mux_bad_input_writes_nothing(node_module, output_dir):
    mux = node_module("mux")
    with pytest.raises(ValueError, match="fps must be greater than 0"):
        mux.MovaMux.execute(frames=torch.rand(3, 32, 32, 3), fps=0.0, filename_prefix="mova/x")
    with pytest.raises(ValueError, match="even width and height"):
        mux.MovaMux.execute(frames=torch.rand(3, 33, 32, 3), fps=8.0, filename_prefix="mova/x")
    assert [p for p in output_dir.rglob("*") if p.is_file()] == []


def test_mux_failure_mid_write_leaves_no_file(node_module, output_dir, monkeypatch):
    import av

    mux = node_module("mux")
    real_from_ndarray = av.VideoFrame.from_ndarray
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full (simulated)")
        return real_from_ndarray(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", staticmethod(failing))
    with pytest.raises(RuntimeError, match="simulated"):
        mux.MovaMux.execute(frames=torch.rand(5, 32, 32, 3), fps=8.0, filename_prefix="mova/x")
    assert [p for p in output_dir.rglob("*") if p.is_file()] == []


def test_decoder_trims_audio_to_the_clip(node_module):
    decoder = node_module("decoder")
    assert decoder.clip_samples(193, 24.0, 48000) == 386000
    assert decoder.clip_samples(9, 8.0, 16000) == 18000


def test_mux_empty_prefix_writes_a_visible_file_with_the_usual_mode(node_module, output_dir):
    """Issue 9: an empty filename_prefix wrote a hidden `._00001_.mp4`, and saved mp4s were mode 0600."""
    mux = node_module("mux")
    out = mux.MovaMux.execute(frames=torch.rand(5, 32, 32, 3), fps=8.0, filename_prefix="")
    saved = out.ui.as_dict()["images"][0]
    assert (saved["subfolder"], saved["filename"]) == ("", "MOVA_00001_.mp4")
    (written,) = [p for p in output_dir.rglob("*") if p.is_file()]
    assert written.name == "MOVA_00001_.mp4"
    plain = output_dir / "plain.txt"
    plain.write_text("x")  # how ComfyUI's savers create files: 0666 minus the umask
    assert written.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_mux_says_when_its_fps_cuts_the_audio(node_module, output_dir, caplog):
    """Issue 9: Mux fps 120 on a 24 fps clip cut the audio to a fifth without a word."""
    mux = node_module("mux")
    audio = {"waveform": torch.randn(1, 1, int(48000 * 9 / 24)) * 0.1, "sample_rate": 48000}
    with caplog.at_level("WARNING"):
        mux.MovaMux.execute(frames=torch.rand(9, 32, 32, 3), fps=24.0, filename_prefix="mova/ok", audio=audio)
    assert not [r for r in caplog.records if "MOVA Mux" in r.getMessage()]
    with caplog.at_level("WARNING"):
        mux.MovaMux.execute(frames=torch.rand(9, 32, 32, 3), fps=120.0, filename_prefix="mova/cut", audio=audio)
    (record,) = [r for r in caplog.records if "MOVA Mux" in r.getMessage()]
    assert "the audio lasts 0.375 s but 9 frames at 120 fps last 0.075 s, so the audio was cut" in record.getMessage()
    assert "(9 frames / 0.375 s = 24 fps)" in record.getMessage()


def test_loader_auto_dtype_asks_comfyui_not_torch_emulation(node_module, monkeypatch):
    """A pre-Ampere card: torch reports bf16 as supported (emulated), ComfyUI's `should_use_bf16` says no."""
    loader = node_module("loader")
    import comfy.model_management as mm

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    asked = []
    monkeypatch.setattr(mm, "should_use_bf16", lambda device=None, **kw: asked.append(device) or False)
    assert loader.resolve_dtype("auto", torch.device("cuda", 0)) == torch.float32
    assert asked == [torch.device("cuda", 0)]
    monkeypatch.setattr(mm, "should_use_bf16", lambda device=None, **kw: True)
    assert loader.resolve_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert loader.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert loader.resolve_dtype("fp16", torch.device("cuda", 0)) == torch.float16
