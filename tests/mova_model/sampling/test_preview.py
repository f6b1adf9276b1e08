"""latent_preview_rgb: shape, dtype, frame choice, linear projection with factors, min-max without."""

import numpy as np
import torch

from mova_model.sampling.preview import latent_preview_rgb


def _latents(z=4, frames=3, h=5, w=6, seed=0):
    return torch.randn(1, z, frames, h, w, generator=torch.Generator().manual_seed(seed))


def test_without_factors_min_max_of_the_middle_frame():
    latents = _latents()
    out = latent_preview_rgb(latents)
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8
    x = latents[0, :3, 1]  # middle of 3 latent frames
    expected = ((x - x.amin(dim=(1, 2), keepdim=True)) / (x.amax(dim=(1, 2), keepdim=True) - x.amin(dim=(1, 2), keepdim=True)))
    expected = (expected.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(out, expected)
    assert (out.reshape(-1, 3).min(0) == 0).all() and (out.reshape(-1, 3).max(0) == 255).all()


def test_frame_argument_selects_the_frame():
    latents = _latents()
    assert np.array_equal(latent_preview_rgb(latents, frame=0), latent_preview_rgb(latents[:, :, :1]))
    assert not np.array_equal(latent_preview_rgb(latents, frame=0), latent_preview_rgb(latents, frame=2))


def test_with_factors_projects_linearly():
    latents = torch.zeros(1, 2, 1, 2, 2)
    latents[0, 0, 0] = torch.tensor([[1.0, -1.0], [0.0, 0.5]])
    latents[0, 1, 0] = torch.tensor([[0.0, 0.0], [1.0, -0.5]])
    factors = [[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]]
    out = latent_preview_rgb(latents, factors, rgb_bias=[0.0, 0.0, -0.5])
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    # rgb = x @ factors + bias, then (rgb + 1) / 2 clamped, x255 rounded
    x = latents[0, :, 0].permute(1, 2, 0)
    rgb = x @ torch.tensor(factors) + torch.tensor([0.0, 0.0, -0.5])
    expected = (((rgb + 1) / 2).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(out, expected)
    assert out[0, 0].tolist() == [255, 128, 128]  # x = (1, 0): rgb = (1, 0, 0.5 - 0.5) -> (1.0, 0.5, 0.5)
    assert out[1, 0].tolist() == [128, 255, 128]  # x = (0, 1): rgb = (0, 1, 0) -> (0.5, 1.0, 0.5)


def test_factors_of_the_wrong_size_fall_back_to_min_max():
    latents = _latents(z=4)
    assert np.array_equal(latent_preview_rgb(latents, [[1.0, 0.0, 0.0]] * 3), latent_preview_rgb(latents))


def test_single_channel_latents_give_gray():
    out = latent_preview_rgb(_latents(z=1, frames=1))
    assert out.shape == (5, 6, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_constant_latents_do_not_divide_by_zero():
    out = latent_preview_rgb(torch.full((1, 4, 1, 3, 3), 2.0))
    assert out.shape == (3, 3, 3) and (out == 0).all()
