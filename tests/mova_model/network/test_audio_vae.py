"""DAC audio VAE: official key layout, weight-norm fusing, preprocess/encode/decode parity."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mova_model.network.audio_vae import CastConvTranspose1d, DacVAE, fuse_weight_norm
from mova_model.checkpoint.configs import AudioVAEConfig, MovaConfigs
from mova_model.network.ops import Operations, init_random_

import codec_parity_helpers as H  # tests/ is on pytest's pythonpath


TINY = {"_class_name": "DAC", "encoder_dim": 4, "encoder_rates": [2, 3], "latent_dim": 6, "decoder_dim": 16,
        "decoder_rates": [3, 2], "sample_rate": 600, "continuous": True, "use_weight_norm": False}


def load_audio_vae(case) -> DacVAE:
    root = H.checkpoint_dir(case)
    config = MovaConfigs.from_folder(root).audio_vae
    model = DacVAE(config, Operations())
    model.load_state_dict(fuse_weight_norm(H.load_component_state(root / "audio_vae")), assign=True, strict=True)
    return model


def _manifest(path: Path):
    config, keys = None, {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# config:"):
            config = json.loads(line[len("# config:"):])
        elif line and not line.startswith("#"):
            key, shape, _ = line.split("\t")
            keys[key] = tuple(json.loads(shape))
    return config, keys


def test_keys_match_official_manifest():
    root = H.REPO_ROOT.parent / "shared" / "spec" / "manifests"
    plain = sorted(root.glob("*/audio_vae.tsv"))
    if not plain:
        pytest.skip("spec manifests not found")
    for path in plain:
        config, keys = _manifest(path)
        model = DacVAE(AudioVAEConfig.from_dict(config), Operations())
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == keys, path
        alt = path.with_name("audio_vae.ALT-use_weight_norm-true.tsv")
        if alt.is_file():
            _, alt_keys = _manifest(alt)
            fused = fuse_weight_norm({k: torch.empty(s, device="meta") for k, s in alt_keys.items()})
            assert {k: tuple(v.shape) for k, v in fused.items()} == keys


@pytest.mark.parametrize("transpose", [False, True])
def test_fuse_weight_norm_equals_torch_weight_norm(transpose):
    torch.manual_seed(0)
    layer = nn.ConvTranspose1d(6, 4, 4, stride=2) if transpose else nn.Conv1d(6, 4, 5)
    wn = torch.nn.utils.weight_norm(layer)
    with torch.no_grad():
        wn.weight_g.mul_(torch.rand_like(wn.weight_g) + 0.5)
    state = {f"conv.{k}": v.detach().clone() for k, v in wn.state_dict().items()}
    assert "conv.weight_g" in state and "conv.weight" not in state
    fused = fuse_weight_norm(state)
    assert set(fused) == {"conv.weight", "conv.bias"}
    x = torch.randn(2, 6, 11)
    expected = wn(x)
    plain = nn.ConvTranspose1d(6, 4, 4, stride=2) if transpose else nn.Conv1d(6, 4, 5)
    plain.load_state_dict({"weight": fused["conv.weight"], "bias": fused["conv.bias"]})
    torch.testing.assert_close(plain(x), expected, atol=1e-6, rtol=1e-6)
    # Already-plain state dicts pass through unchanged.
    again = fuse_weight_norm(fused)
    assert again.keys() == fused.keys() and all(again[k] is fused[k] for k in fused)


def test_fuse_weight_norm_rejects_broken_pairs():
    g, v = torch.ones(2, 1, 1), torch.ones(2, 3, 1)
    with pytest.raises(ValueError):
        fuse_weight_norm({"a.weight_g": g})
    with pytest.raises(ValueError):
        fuse_weight_norm({"a.weight_v": v})
    with pytest.raises(ValueError):
        fuse_weight_norm({"a.weight_g": g, "a.weight_v": v, "a.weight": v})


def test_shapes_preprocess_and_storage_dtype():
    config = AudioVAEConfig.from_dict(dict(TINY))
    model = DacVAE(config, Operations())
    assert model.hop_length == 6 and model.latent_dim == 6
    assert any(isinstance(m, CastConvTranspose1d) for m in model.modules())
    init_random_(model, torch.Generator().manual_seed(0))
    wave = torch.randn(1, 1, 50)
    padded = model.preprocess(wave, 600)
    assert padded.shape[-1] == 54 and torch.equal(padded[..., :50], wave) and not padded[..., 50:].any()
    assert model.latent_length(50) == 9
    with pytest.raises(ValueError):
        model.preprocess(wave, 44100)
    mean, logvar = model.encode(padded)
    assert mean.shape == logvar.shape == (1, 6, 9)
    assert float(logvar.min()) >= -30 and float(logvar.max()) <= 20
    z = torch.randn(1, 6, 7)
    audio = model.decode(z)
    assert audio.shape == (1, 1, 42) and float(audio.abs().max()) < 1
    # bf16 storage, fp32 compute: the same as computing with the bf16-rounded weights in fp32.
    rounded = {k: v.to(torch.bfloat16).to(torch.float32) for k, v in model.state_dict().items()}
    model.load_state_dict(rounded, assign=True)
    expected = model.decode(z)
    model.load_state_dict({k: v.to(torch.bfloat16) for k, v in rounded.items()}, assign=True)
    got = model.decode(z)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", H.case_params("audio_vae"))
def test_audio_vae_matches_official(case):
    case = H.require_case(case)
    inputs, out = H.load_case(case)
    model = load_audio_vae(case)
    tol = H.tolerance(case, atol=1e-4, rtol=1e-3)
    sample_rate = int(case["args"].get("sample_rate", model.sample_rate))
    padded = model.preprocess(inputs["waveform"], sample_rate)
    H.assert_close(padded, out["waveform_padded"], atol=0, rtol=0, what="waveform_padded")
    mean, logvar = model.encode(padded)
    H.assert_close(mean, out["posterior_mean"], what="posterior_mean", **tol)
    H.assert_close(logvar, out["posterior_logvar"], what="posterior_logvar", **tol)
    H.assert_close(torch.exp(0.5 * logvar), out["posterior_std"], what="posterior_std", **tol)
    H.assert_close(model.decode(inputs["latents_for_decode"]), out["decoded_waveform"], what="decoded_waveform", **tol)


@pytest.mark.parametrize("case", H.case_params("e2e_i2va"))
def test_e2e_audio_decode_matches_official(case):
    case = H.require_case(case)
    _, out = H.load_case(case)
    model = load_audio_vae(case)
    tol = H.tolerance(case, "audio", atol=1e-4, rtol=1e-3)
    audio = model.decode(out["final_audio_latents"])
    H.assert_close(audio, out["audio_waveform"], what="audio_waveform", **tol)
    args = case["args"]
    if "audio_num_samples_requested" in args:
        requested = int(args["audio_num_samples_requested"])
        assert model.latent_length(requested) == out["final_audio_latents"].shape[-1]
        assert requested == int(model.sample_rate * int(args["num_frames"]) / float(args["video_fps"]))
