"""VideoDiT: official key set on meta, parity with the official `WanModel.forward`, shapes, batching, bf16."""

import pytest
import torch

from dit_fixtures import assert_close, build_meta, case_tensors, load_component, read_cases, read_manifest
from mova_model.checkpoint.configs import VideoDiTConfig
from mova_model.network.ops import Operations, init_random_
from mova_model.network.video_dit import VideoDiT

TINY = dict(dim=48, in_dim=12, ffn_dim=64, out_dim=4, text_dim=16, freq_dim=32, eps=1e-6, patch_size=[1, 2, 2],
            num_heads=2, num_layers=2, has_image_input=False)


def tiny_video_dit(seed: int = 0, **overrides) -> VideoDiT:
    config = VideoDiTConfig.from_dict({**TINY, **overrides})
    return init_random_(VideoDiT(config, Operations()), torch.Generator().manual_seed(seed)).eval()


def tiny_inputs(batch: int = 1, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 12, 2, 4, 6, generator=gen)
    context = torch.randn(batch, 5, 16, generator=gen)
    timestep = torch.rand(batch, generator=gen) * 1000
    return x, timestep, context


@pytest.mark.parametrize("component", ["video_dit", "video_dit_2"])
def test_keys_and_shapes_match_official_manifest(shared_dir, component):
    model = build_meta(component, shared_dir / "spec/configs/MOVA-360p" / component / "config.json")
    manifest = read_manifest(shared_dir / "spec/manifests/MOVA-360p" / f"{component}.tsv")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert set(ours) == set(manifest)
    assert ours == manifest
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize("name", ["video_dit_forward", "video_dit_2_forward"])
def test_parity_with_official_forward(shared_dir, name):
    parity = shared_dir / "parity"
    case = next(c for c in read_cases(parity, ("video_dit_forward",)) if c["name"] == name)
    model = load_component(parity / case["checkpoint"], case["args"]["component"])
    inputs, outputs = case_tensors(parity, case)
    with torch.no_grad():
        out = model(inputs["x"], inputs["timestep"], inputs["context"])
    assert out.dtype == torch.float32
    assert_close(out, outputs["out"], case["tolerance"]["atol"], case["tolerance"]["rtol"], name)


def test_shapes_and_determinism():
    model = tiny_video_dit()
    x, t, ctx = tiny_inputs()
    with torch.no_grad():
        first = model(x, t, ctx)
        second = model(x, t, ctx)
    assert first.shape == (1, 4, 2, 4, 6)
    assert torch.equal(first, second)
    tokens, grid = model.patchify(x)
    assert tokens.shape == (1, 2 * 2 * 3, 48) and grid == (2, 2, 3)
    assert model.rope(grid).shape == (12, 1, 12)


def test_unpatchify_inverts_patch_layout():
    model = tiny_video_dit()
    grid = (2, 2, 3)
    tokens = torch.arange(12 * 16, dtype=torch.float32).view(1, 12, 16)
    video = model.unpatchify(tokens, grid)
    assert video.shape == (1, 4, 2, 4, 6)
    # token (f=1, h=1, w=2), patch cell (y=1, z=0), channel 3 -> position (c=3, t=1, row=3, col=4)
    token = 1 * 6 + 1 * 3 + 2
    assert video[0, 3, 1, 3, 4] == tokens[0, token, (1 * 2 + 0) * 4 + 3]


def test_batch_of_two_equals_two_single_calls():
    model = tiny_video_dit()
    x, t, ctx = tiny_inputs(batch=2)
    with torch.no_grad():
        both = model(x, t, ctx)
        singles = torch.cat([model(x[i:i + 1], t[i:i + 1], ctx[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(both, singles, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(both[0], both[1])


def test_timestep_changes_output_and_embedding_is_float32():
    model = tiny_video_dit()
    x, _, ctx = tiny_inputs()
    e, t_mod = model.embed_time(torch.tensor([500.0]))
    assert e.shape == (1, 48) and t_mod.shape == (1, 6, 48) and e.dtype == torch.float32
    with torch.no_grad():
        a = model(x, torch.tensor([900.0]), ctx)
        b = model(x, torch.tensor([100.0]), ctx)
    assert (a - b).abs().max() > 1e-3


def test_bf16_weights_follow_float32_reference():
    model = tiny_video_dit()
    x, t, ctx = tiny_inputs()
    with torch.no_grad():
        reference = model(x, t, ctx)
        model_bf16 = model.to(torch.bfloat16)
        assert model_bf16.compute_dtype == torch.bfloat16
        out = model_bf16(x, t, ctx)
    assert out.dtype == torch.bfloat16
    error = (out.float() - reference).norm() / reference.norm()
    assert error < 0.03, f"bf16 relative error {error:.4f}"


def test_modulate_rounds_once_in_bf16():
    from mova_model.network.dit_block import modulate

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 40, 48, generator=gen).bfloat16()
    shift, scale = (torch.randn(2, 1, 48, generator=gen).bfloat16() for _ in range(2))
    expected = (x.float() * (1 + scale.float()) + shift.float()).bfloat16()
    assert torch.equal(modulate(x, shift, scale), expected)
    x32 = x.float()
    assert torch.equal(modulate(x32, shift.float(), scale.float()), x32 * (1 + scale.float()) + shift.float())
