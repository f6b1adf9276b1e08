"""Video VAE: diffusers AutoencoderKLWan built on meta, MOVA's latent normalization, encode/decode parity."""


import pytest
import torch

from mova_model.checkpoint.configs import MovaConfigs, VideoVAEConfig
from mova_model.network.video_vae import VideoVAE, build_video_vae_module

import codec_parity_helpers as H  # tests/ is on pytest's pythonpath


def load_video_vae(case) -> VideoVAE:
    root = H.checkpoint_dir(case)
    config = MovaConfigs.from_folder(root).video_vae
    module = build_video_vae_module(config)
    module.load_state_dict(H.load_component_state(root / "video_vae"), assign=True, strict=True)
    return VideoVAE(module, config)


TINY = {"_class_name": "AutoencoderKLWan", "base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1,
        "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0,
        "latents_mean": [0.5, -0.25, 0.0, 1.0], "latents_std": [2.0, 0.5, 1.0, 4.0]}


def test_build_on_meta_and_normalize_roundtrip():
    config = VideoVAEConfig.from_dict(dict(TINY))
    module = build_video_vae_module(config)
    params = list(module.parameters())
    assert params and all(p.device.type == "meta" for p in params)
    assert not list(module.buffers())  # nothing the checkpoint would not fill
    vae = VideoVAE(module, config)
    z = torch.randn(1, 4, 2, 3, 5)
    normalized = vae.normalize(z)
    torch.testing.assert_close(normalized[:, 1], (z[:, 1] + 0.25) * 2.0)
    torch.testing.assert_close(vae.denormalize(normalized), z, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("case", H.case_params("video_vae"))
def test_video_vae_matches_official(case):
    case = H.require_case(case)
    inputs, out = H.load_case(case)
    vae = load_video_vae(case)
    tol = H.tolerance(case, atol=2e-4, rtol=1e-3)
    exact = {"atol": 1e-6, "rtol": 1e-6}
    H.assert_close(vae.normalize(out["encoded_latent_mode"]), out["encoded_latent_normalized"], what="normalize", **exact)
    H.assert_close(vae.denormalize(inputs["normalized_latents_for_decode"]), out["decode_denormalized_input"],
                   what="denormalize", **exact)
    H.assert_close(vae.encode_mode(out["video_condition"]), out["encoded_latent_mode"], what="encode mode", **tol)
    H.assert_close(vae.encode_condition_video(out["video_condition"]), out["encoded_latent_normalized"],
                   what="encode normalized", **tol)
    decoded = vae.decode(inputs["normalized_latents_for_decode"])
    H.assert_close(decoded, out["decoded_video"], what="decoded_video", **tol)
    assert float(decoded.abs().max()) <= 1.0


@pytest.mark.parametrize("case", H.case_params("e2e_i2va"))
def test_e2e_video_decode_matches_official(case):
    case = H.require_case(case)
    _, out = H.load_case(case)
    vae = load_video_vae(case)
    tol = H.tolerance(case, "latents", atol=1e-3, rtol=1e-3)
    H.assert_close(vae.denormalize(out["final_video_latents"]), out["final_video_latents_denormalized"],
                   what="denormalized", atol=1e-6, rtol=1e-6)
    H.assert_close(vae.decode(out["final_video_latents"]), out["decoded_video"], what="decoded_video", **tol)


@pytest.mark.parametrize("case", H.case_params("video_vae"))
def test_tiled_decode_switch(case):
    case = H.require_case(case)
    inputs, out = H.load_case(case)
    vae = load_video_vae(case)
    latents = inputs["normalized_latents_for_decode"]
    height, width = out["decoded_video"].shape[-2:]
    vae.set_tiling(True, tile_sample_min_height=16, tile_sample_min_width=16,
                   tile_sample_stride_height=8, tile_sample_stride_width=8)
    assert vae.module.use_tiling
    tiled = vae.decode(latents)
    assert tiled.shape == out["decoded_video"].shape
    if height > 16 or width > 16:
        assert not torch.equal(tiled, out["decoded_video"])  # the tiled path really ran
    vae.set_tiling(False)
    assert not vae.module.use_tiling
    H.assert_close(vae.decode(latents), out["decoded_video"], what="untiled again", **H.tolerance(case))
