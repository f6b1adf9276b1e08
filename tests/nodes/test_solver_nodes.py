"""The sampler-choice and restyle inputs in-process: a core SIGMAS node drives the Joint Sampler, MOVA Encode
makes a LATENT the sampler restyles, and each bad value is refused at the node with a message naming it.
End-to-end through the real server: tests/host/test_restyle_workflow.py."""
import pytest
import torch

pytestmark = pytest.mark.usefixtures("hidden_inputs")


@pytest.fixture(scope="module")
def cond(node_module, handle):
    return node_module("conditioner").MovaTextImageConditioner.execute(handle, "waves", "", 32, 32, 5, 8.0).result[0]


@pytest.fixture(scope="module")
def encoded(node_module, handle, cond):
    frames = torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(2))
    audio = {"waveform": torch.sin(torch.linspace(0, 500, 8000)).reshape(1, 1, -1) * 0.3, "sample_rate": 16000}
    latent, notes = node_module("encode").MovaEncode.execute(handle, cond, frames, audio).result
    assert "video:" in notes and "audio:" in notes
    return latent


def _sampler(node_module):
    return node_module("sampler").MovaJointSampler


def test_core_sigmas_drive_the_joint_sampler(node_module, handle, cond):
    from comfy_extras.nodes_custom_sampler import KarrasScheduler

    from comfyui_mova.mova_model.sampling.schedules import ScheduleOptions

    (sigmas,) = KarrasScheduler.execute(steps=3, sigma_max=1.0, sigma_min=0.05, rho=7.0).result
    latent = _sampler(node_module).execute(handle, cond, 4, 50, 1.0, solver="unipc", sigmas=sigmas).result[0]
    pipe = handle.pipeline
    assert pipe.last_stats.passes_per_step == [1, 1, 1]  # three steps from the list, not 50
    from comfyui_mova.mova_model.sampling.guidance import GuidanceConfig

    expected = pipe.sample(cond, seed=4, steps=50, guidance=GuidanceConfig(text_scale=1.0),
                           schedule=ScheduleOptions("unipc", sigmas=sigmas))
    assert torch.equal(latent["samples"], expected.video) and torch.equal(latent["audio_samples"], expected.audio)


def test_encode_then_restyle(node_module, handle, cond, encoded):
    sampler = _sampler(node_module)
    assert encoded["type"] == "mova_av" and encoded["mova"]["has_audio"] is True
    kept = sampler.execute(handle, cond, 4, 2, 1.0, init_latent=encoded, denoise=0.0).result[0]
    assert torch.equal(kept["samples"], encoded["samples"]) and torch.equal(kept["audio_samples"], encoded["audio_samples"])
    sound_kept = sampler.execute(handle, cond, 4, 2, 1.0, solver="dpm++", init_latent=encoded, denoise=0.6,
                                 audio_denoise=0.0).result[0]
    assert torch.equal(sound_kept["audio_samples"], encoded["audio_samples"])
    assert not torch.equal(sound_kept["samples"], encoded["samples"])


def test_extend_takes_a_solver(node_module, handle, cond):
    latent = _sampler(node_module).execute(handle, cond, 4, 2, 1.0).result[0]
    nine = node_module("conditioner").MovaTextImageConditioner.execute(handle, "rain", "", 32, 32, 9, 8.0).result[0]
    joined = node_module("extend").MovaExtend.execute(handle, latent, nine, 1, "clean", 5, 2, 1.0, solver="unipc",
                                                      shift=2.0).result[0]
    assert joined["mova"]["num_frames"] == 5 + 9 - 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(solver="heun"), r"MOVA Joint Sampler: solver = 'heun' is not allowed; choose one of: 'euler', 'unipc', 'dpm\+\+'"),
    (dict(sigmas=torch.tensor([1.0, 0.3, 0.6, 0.0])), r"MOVA Joint Sampler: sigmas must be strictly decreasing, but "
                                                      r"sigma\[2\] = 0.6 is not below sigma\[1\] = 0.3"),
    (dict(sigmas=torch.tensor([1.0, 0.3])), "MOVA Joint Sampler: sigmas must end at 0"),
    (dict(denoise=1.5, init_latent="ENC"), "denoise must be between 0 and 1"),
    (dict(denoise=0.5), "reworks an existing clip: connect one"),
    (dict(denoise=0.5, init_latent={"samples": torch.zeros(1, 4, 2, 4, 4)}),
     r"init_latent: this LATENT was not made by the MOVA .* \(to restyle a clip, connect a MOVA Encode output\)"),
    (dict(denoise=0.5, sigmas=torch.tensor([0.8, 0.3, 0.0]), init_latent="ENC"), "custom sigma list sets where"),
])
def test_bad_values_are_refused_at_the_node(node_module, handle, cond, encoded, kwargs, message):
    kwargs = {k: (encoded if v == "ENC" else v) for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        _sampler(node_module).execute(handle, cond, 4, 2, 1.0, **kwargs)


def test_an_init_clip_of_another_size_is_refused(node_module, handle, encoded):
    wide = node_module("conditioner").MovaTextImageConditioner.execute(handle, "x", "", 48, 32, 5, 8.0).result[0]
    with pytest.raises(ValueError, match="the init clip is 32x32, 5 frames .* this clip is 48x32, 5 frames"):
        _sampler(node_module).execute(handle, wide, 4, 2, 1.0, init_latent=encoded, denoise=0.5)


def test_extend_refuses_a_bad_sigma_list(node_module, handle, cond):
    latent = _sampler(node_module).execute(handle, cond, 4, 1, 1.0).result[0]
    with pytest.raises(ValueError, match="MOVA Extend: sigmas must end at 0"):
        node_module("extend").MovaExtend.execute(handle, latent, cond, 1, "clean", 5, 2, 1.0,
                                                 sigmas=torch.tensor([1.0, 0.5]))


def test_mova_sigmas_gives_the_schedule_as_core_sigmas(node_module, handle, cond):
    from comfy_extras.nodes_custom_sampler import SplitSigmas

    from comfyui_mova.mova_model.sampling.schedules import ScheduleOptions, denoised_schedule

    node = node_module("schedule").MovaSigmas
    sigmas, text = node.execute(handle, "unipc", 8, 0.0, 0.5).result
    config = handle.pipeline.configs.scheduler
    assert torch.equal(sigmas, denoised_schedule(config, ScheduleOptions("unipc"), 8, 0.5).sigmas)
    assert text.startswith(f"{sigmas[0].item():.6g}, ") and text.endswith(", 0")
    typed, _ = node.execute(handle, "euler", 50, 0.0, 1.0, sigmas_text="1, 0.9375, 0.8333, 0.625, 0").result
    assert typed.tolist() == pytest.approx([1, 0.9375, 0.8333, 0.625, 0])
    high, low = SplitSigmas.execute(typed, 2).result  # core sigma nodes take it
    _sampler(node_module).execute(handle, cond, 4, 50, 1.0, sigmas=low)  # starts at 0.8333
    assert handle.pipeline.last_stats.passes_per_step == [1, 1]
    with pytest.raises(ValueError, match="MOVA Sigmas: sigmas must end at 0"):
        node.execute(handle, "euler", 50, 0.0, 1.0, sigmas_text="1, 0.5")
