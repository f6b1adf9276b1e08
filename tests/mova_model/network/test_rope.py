"""RoPE helpers: splits, tables and application checked against direct formulas (no fixtures needed)."""

import math

import pytest
import torch

from mova_model.network import rope


def test_video_split_matches_official_rule():
    assert rope.video_rope_split(128) == (44, 42, 42)
    assert rope.video_rope_split(24) == (8, 8, 8)
    assert rope.video_rope_split(96) == (32, 32, 32)
    with pytest.raises(ValueError, match="head_dim 64"):
        rope.video_rope_split(64)


def test_video_rope_angles_per_axis():
    head_dim, grid = 24, (3, 2, 4)
    freqs = rope.video_rope(head_dim, grid)
    assert freqs.dtype == torch.complex128
    assert freqs.shape == (3 * 2 * 4, 1, head_dim // 2)
    t_dim, h_dim, w_dim = rope.video_rope_split(head_dim)
    for token in (0, 5, 13, 23):
        f, rest = divmod(token, 2 * 4)
        h, w = divmod(rest, 4)
        expected = []
        for pos, width in ((f, t_dim), (h, h_dim), (w, w_dim)):
            expected += [pos / 10000 ** (2 * i / width) for i in range(width // 2)]
        angles = torch.angle(freqs[token, 0])
        wrapped = torch.remainder(torch.tensor(expected, dtype=torch.float64) + math.pi, 2 * math.pi) - math.pi
        torch.testing.assert_close(angles, wrapped, atol=1e-12, rtol=0)
        torch.testing.assert_close(freqs[token, 0].abs(), torch.ones(head_dim // 2, dtype=torch.float64))


def test_audio_rope_is_plain_1d_over_head():
    freqs = rope.audio_rope(24, 7)
    assert freqs.shape == (7, 1, 12)
    expected = torch.outer(torch.arange(7, dtype=torch.float64), 1.0 / 10000 ** (torch.arange(0, 24, 2, dtype=torch.float64) / 24))
    torch.testing.assert_close(freqs[:, 0], torch.polar(torch.ones_like(expected), expected), atol=1e-14, rtol=0)


def _pairwise_reference(x, freqs, head_dim):
    b, s, width = x.shape
    xv = x.double().view(b, s, width // head_dim, head_dim // 2, 2)
    cos, sin = freqs.real.view(1, s, 1, -1), freqs.imag.view(1, s, 1, -1)
    a, c = xv[..., 0], xv[..., 1]
    return torch.stack((a * cos - c * sin, a * sin + c * cos), dim=-1).reshape(b, s, width)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_complex_rope_rotates_adjacent_pairs(dtype, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 24, 3 * 24, generator=gen).to(dtype)
    freqs = rope.video_rope(24, (2, 3, 4))
    expected = _pairwise_reference(x, freqs, 24).to(dtype)
    out = rope.apply_complex_rope(x, freqs, 24)
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected, atol=1e-6 if dtype == torch.float32 else 0, rtol=0)
    monkeypatch.setattr(rope, "_CHUNK_BYTES", 1)  # one head at a time: same numbers
    assert torch.equal(rope.apply_complex_rope(x, freqs, 24), out)


def test_aligned_positions_on_audio_axis():
    video, audio = rope.aligned_positions(24.0, (3, 2, 2), 20, 50.0)
    assert audio.tolist() == list(range(20))
    assert video.shape == (12,)
    step = 50.0 / 6.0
    torch.testing.assert_close(video, torch.tensor([0.0] * 4 + [step] * 4 + [2 * step] * 4))
    biased, _ = rope.aligned_positions(24.0, (3, 1, 1), 5, 50.0, first_frame_bias=True)
    torch.testing.assert_close(biased, torch.tensor([0.0, 50.0 / 24.0, 50.0 / 24.0 + step]))


def test_rotate_half_tables_and_application():
    positions = torch.tensor([0.0, 1.0, 8.5])
    cos, sin = rope.rotate_half_cos_sin(positions, 8)
    assert cos.shape == sin.shape == (1, 3, 8)
    inv = 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)
    angles = torch.outer(positions, inv)
    torch.testing.assert_close(cos[0], torch.cat([angles.cos(), angles.cos()], -1))
    torch.testing.assert_close(sin[0], torch.cat([angles.sin(), angles.sin()], -1))
    x = torch.randn(1, 3, 16, generator=torch.Generator().manual_seed(1))
    out = rope.apply_rotate_half(x, cos, sin, 8).view(1, 3, 2, 8)
    xv = x.view(1, 3, 2, 8)
    c, s = angles.cos().view(1, 3, 1, 4), angles.sin().view(1, 3, 1, 4)
    torch.testing.assert_close(out[..., :4], xv[..., :4] * c - xv[..., 4:] * s)
    torch.testing.assert_close(out[..., 4:], xv[..., 4:] * c + xv[..., :4] * s)


def test_rotate_half_bf16_rounds_once():
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(2)).bfloat16()
    cos, sin = rope.rotate_half_cos_sin(torch.arange(5).float() * 3.7, 8, torch.bfloat16)
    out = rope.apply_rotate_half(x, cos, sin, 8)
    assert out.dtype == torch.bfloat16
    expected = rope.apply_rotate_half(x.float(), cos.float(), sin.float(), 8).bfloat16()
    assert torch.equal(out, expected)
