"""I2V conditioning: the first-frame mask and the encoded first-frame clip (official prepare_latents)."""


import pytest
import torch

from mova_model.sampling.conditioning import first_frame_condition, first_frame_mask, latent_frames
from mova_model.checkpoint.configs import MovaConfigs
from mova_model.media.image_preprocess import to_model_range
from mova_model.network.video_vae import VideoVAE, build_video_vae_module

import codec_parity_helpers as H  # tests/ is on pytest's pythonpath


def load_video_vae(case) -> VideoVAE:
    root = H.checkpoint_dir(case)
    config = MovaConfigs.from_folder(root).video_vae
    module = build_video_vae_module(config)
    module.load_state_dict(H.load_component_state(root / "video_vae"), assign=True, strict=True)
    return VideoVAE(module, config)


@pytest.mark.parametrize("num_frames", [1, 5, 9, 17, 193])
def test_first_frame_mask(num_frames):
    t_lat = latent_frames(num_frames)
    assert t_lat == (num_frames - 1) // 4 + 1
    mask = first_frame_mask(num_frames, t_lat, 3, 5)
    assert mask.shape == (1, 4, t_lat, 3, 5) and mask.dtype == torch.float32
    assert bool((mask[:, :, 0] == 1).all())
    assert bool((mask[:, :, 1:] == 0).all())


def test_rejects_frame_counts_the_vae_cannot_fold():
    for bad in (0, 4, 8, 10):
        with pytest.raises(ValueError):
            latent_frames(bad)
    with pytest.raises(ValueError):
        first_frame_mask(9, 2, 4, 4)


def _check_condition(case, image_uint8, num_frames, expected, what):
    vae = load_video_vae(case)
    condition = first_frame_condition(vae, to_model_range(image_uint8), num_frames)
    tol = H.tolerance(case, atol=2e-4, rtol=1e-3)
    H.assert_close(condition, expected, what=what, **tol)
    z = vae.z_dim
    assert condition.shape[1] == 4 + z
    assert torch.equal(condition[:, :4], first_frame_mask(num_frames, condition.shape[2], *condition.shape[3:]))


@pytest.mark.parametrize("case", H.case_params("video_vae"))
def test_condition_matches_official(case):
    case = H.require_case(case)
    inputs, out = H.load_case(case)
    num_frames = int(case["args"]["num_frames"])
    _check_condition(case, inputs["image_uint8"].numpy(), num_frames, out["condition"], "condition")


@pytest.mark.parametrize("case", H.case_params("e2e_i2va"))
def test_e2e_condition_matches_official(case):
    case = H.require_case(case)
    inputs, out = H.load_case(case)
    _check_condition(case, inputs["image_uint8"].numpy(), int(case["args"]["num_frames"]), out["condition"], "e2e condition")


def test_whole_clip_is_encoded_not_just_the_first_frame():
    """Latent frames after the first encode grey frames: they must come from encoding the full clip."""
    from mova_model.checkpoint.configs import VideoVAEConfig
    from mova_model.network.ops import init_random_

    config = VideoVAEConfig.from_dict({"_class_name": "AutoencoderKLWan", "base_dim": 8, "z_dim": 4,
                                       "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_scales": [],
                                       "temperal_downsample": [False, True, True], "dropout": 0.0,
                                       "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4})
    module = build_video_vae_module(config)
    init_random_(module, torch.Generator().manual_seed(3))
    vae = VideoVAE(module, config)
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    condition = first_frame_condition(vae, image, 9)
    assert condition.shape == (1, 8, 3, 2, 2)
    clip = torch.cat([image.unsqueeze(2), torch.zeros(1, 3, 8, 16, 16)], dim=2)
    torch.testing.assert_close(condition[:, 4:], vae.encode_condition_video(clip))
    alone = vae.encode_condition_video(image.unsqueeze(2))
    assert alone.shape[2] == 1
    torch.testing.assert_close(condition[:, 4:, :1], alone, atol=1e-5, rtol=1e-4)  # causal: frame 0 alone is the same
