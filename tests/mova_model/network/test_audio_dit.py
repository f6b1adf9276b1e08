"""AudioDiT: official key set on meta, parity with the official `WanAudioModel.forward`, shapes, batching, bf16."""

import pytest
import torch

from dit_fixtures import assert_close, build_meta, case_tensors, load_component, read_cases, read_manifest
from mova_model.network.audio_dit import AudioDiT
from mova_model.checkpoint.configs import AudioDiTConfig, ConfigError
from mova_model.network.ops import Operations, init_random_

TINY = dict(dim=48, in_dim=8, ffn_dim=64, out_dim=8, text_dim=16, freq_dim=32, eps=1e-6, patch_size=[1],
            num_heads=2, num_layers=2, has_image_input=False, vae_type="dac")


def tiny_audio_dit(seed: int = 0) -> AudioDiT:
    return init_random_(AudioDiT(AudioDiTConfig.from_dict(TINY), Operations()), torch.Generator().manual_seed(seed)).eval()


def tiny_inputs(batch: int = 1, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 8, 30, generator=gen), torch.rand(batch, generator=gen) * 1000,
            torch.randn(batch, 5, 16, generator=gen))


def test_keys_and_shapes_match_official_manifest(shared_dir):
    model = build_meta("audio_dit", shared_dir / "spec/configs/MOVA-360p/audio_dit/config.json")
    manifest = read_manifest(shared_dir / "spec/manifests/MOVA-360p/audio_dit.tsv")
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == manifest


def test_parity_with_official_forward(shared_dir):
    parity = shared_dir / "parity"
    (case,) = read_cases(parity, ("audio_dit_forward",))
    model = load_component(parity / case["checkpoint"], "audio_dit")
    inputs, outputs = case_tensors(parity, case)
    with torch.no_grad():
        out = model(inputs["x"], inputs["timestep"], inputs["context"])
    assert_close(out, outputs["out"], case["tolerance"]["atol"], case["tolerance"]["rtol"], "audio_dit_forward")


def test_shapes_determinism_and_batch():
    model = tiny_audio_dit()
    x, t, ctx = tiny_inputs(batch=2)
    with torch.no_grad():
        out = model(x, t, ctx)
        again = model(x, t, ctx)
        singles = torch.cat([model(x[i:i + 1], t[i:i + 1], ctx[i:i + 1]) for i in range(2)])
    assert out.shape == (2, 8, 30)
    assert torch.equal(out, again)
    torch.testing.assert_close(out, singles, atol=1e-5, rtol=1e-5)
    tokens, grid = model.patchify(x)
    assert tokens.shape == (2, 30, 48) and grid == (30,)
    assert model.rope(grid).shape == (30, 1, 12)


def test_oobleck_layout_is_rejected():
    with pytest.raises(ConfigError, match="oobleck"):
        AudioDiTConfig.from_dict({**TINY, "vae_type": "oobleck"})


def test_bf16_weights_follow_float32_reference():
    model = tiny_audio_dit()
    x, t, ctx = tiny_inputs()
    with torch.no_grad():
        reference = model(x, t, ctx)
        out = model.to(torch.bfloat16)(x, t, ctx)
    assert out.dtype == torch.bfloat16
    error = (out.float() - reference).norm() / reference.norm()
    assert error < 0.03, f"bf16 relative error {error:.4f}"
