"""joint_forward: parity with `MOVA.inference_single_step` (cond/uncond, bridge switches, per-tower timesteps),
executor order, batching and the bf16 path."""

import pytest
import torch

from dit_fixtures import assert_close, case_tensors, load_component, read_cases
from mova_model.network.audio_dit import AudioDiT
from mova_model.network.bridge import DualTowerBridge
from mova_model.checkpoint.configs import AudioDiTConfig, BridgeConfig, VideoDiTConfig
from mova_model.network.denoiser import BridgeScales, execution_order, joint_forward
from mova_model.network.ops import Operations, init_random_
from mova_model.network.video_dit import VideoDiT


@pytest.fixture(scope="module")
def parity_models(shared_dir):
    checkpoint = shared_dir / "parity" / "checkpoint"
    return {name: load_component(checkpoint, name) for name in ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")}


def run_case(models, inputs, expert, fps, context_key, scales=BridgeScales()):
    video_input = torch.cat([inputs["latents"], inputs["condition"]], dim=1)
    return joint_forward(models[expert], models["audio_dit"], models["dual_tower_bridge"], video_input,
                         inputs["audio_latents"], inputs[context_key], inputs["timestep"], inputs["audio_timestep"],
                         fps, scales)


def _check(pred, outputs, video_key, audio_key, tol, what):
    video, audio = pred
    assert video.dtype == audio.dtype == torch.float32
    assert_close(video, outputs[video_key], tol["atol"], tol["rtol"], f"{what} video")
    assert_close(audio, outputs[audio_key], tol["atol"], tol["rtol"], f"{what} audio")


@pytest.mark.parametrize("name", ["denoiser_high_noise", "denoiser_low_noise"])
def test_parity_cond_and_uncond(shared_dir, parity_models, name):
    parity = shared_dir / "parity"
    case = next(c for c in read_cases(parity, ("joint_denoiser",)) if c["name"] == name)
    inputs, outputs = case_tensors(parity, case)
    args = case["args"]
    for branch, context in (("cond", "prompt_embeds"), ("uncond", "negative_prompt_embeds")):
        pred = run_case(parity_models, inputs, args["expert"], args["video_fps"], context)
        _check(pred, outputs, f"video_pred_{branch}", f"audio_pred_{branch}", case["tolerance"], f"{name} {branch}")


DUAL_BRANCHES = {
    "full": ("prompt_embeds", BridgeScales()),
    "text_off": ("negative_prompt_embeds", BridgeScales()),
    "both_off": ("negative_prompt_embeds", BridgeScales(condition=0.0)),
    "bridge_off": ("prompt_embeds", BridgeScales(enabled=False)),
}


@pytest.mark.parametrize("name", ["dual_cfg_high_noise", "dual_cfg_low_noise"])
def test_parity_bridge_on_off_branches(shared_dir, parity_models, name):
    fixtures = shared_dir / "parity-dual-cfg"
    case = next(c for c in read_cases(fixtures, ("dual_cfg_denoiser",)) if c["name"] == name)
    inputs, outputs = case_tensors(fixtures, case)
    for branch, (context, scales) in DUAL_BRANCHES.items():
        pred = run_case(parity_models, inputs, case["args"]["expert"], case["args"]["video_fps"], context, scales)
        _check(pred, outputs, f"video_pred_{branch}", f"audio_pred_{branch}", case["tolerance"], f"{name} {branch}")


@pytest.mark.parametrize("name", ["bridge_scales_high_noise", "bridge_scales_low_noise"])
def test_parity_per_direction_scales(shared_dir, parity_models, name):
    fixtures = shared_dir / "parity-dual-cfg"
    case = next(c for c in read_cases(fixtures, ("bridge_direction_scales",)) if c["name"] == name)
    inputs, outputs = case_tensors(fixtures, case)
    args = case["args"]
    scales = BridgeScales(a2v=args["a2v_condition_scale"], v2a=args["v2a_condition_scale"])
    pred = run_case(parity_models, inputs, args["expert"], args["video_fps"], "prompt_embeds", scales)
    _check(pred, outputs, "video_pred", "audio_pred", case["tolerance"], name)


@pytest.mark.parametrize("name", ["held_a2v_high_noise", "held_v2a_high_noise", "held_a2v_low_noise", "held_v2a_low_noise"])
def test_parity_different_timestep_per_tower(shared_dir, parity_models, name):
    fixtures = shared_dir / "parity-held"
    case = next(c for c in read_cases(fixtures, ("split_timestep_denoiser",)) if c["name"] == name)
    inputs, outputs = case_tensors(fixtures, case)
    assert inputs["timestep"].item() != inputs["audio_timestep"].item()
    pred = run_case(parity_models, inputs, case["args"]["expert"], case["args"]["video_fps"], "prompt_embeds")
    _check(pred, outputs, "video_pred", "audio_pred", case["tolerance"], name)


def test_bridge_scales_semantics():
    assert BridgeScales().resolve() == (1.0, 1.0)
    assert BridgeScales(condition=0.0).resolve() == (0.0, 0.0)
    assert BridgeScales(condition=0.0, a2v=0.7).resolve() == (0.7, 0.0)
    assert BridgeScales(a2v=0.5, v2a=1.5).resolve() == (0.5, 1.5)
    assert BridgeScales(condition=2.0, enabled=False).resolve() == (0.0, 0.0)
    assert BridgeScales(condition=None).resolve() == (1.0, 1.0)
    assert BridgeScales(enabled=False).is_off and not BridgeScales().is_off


# ---- tiny random models ---------------------------------------------------------------------------------------

def tiny_models(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    video = VideoDiT(VideoDiTConfig.from_dict(dict(
        dim=48, in_dim=12, ffn_dim=64, out_dim=4, text_dim=16, freq_dim=32, eps=1e-6, patch_size=[1, 2, 2],
        num_heads=2, num_layers=3, has_image_input=False)), Operations())
    audio = AudioDiT(AudioDiTConfig.from_dict(dict(
        dim=24, in_dim=8, ffn_dim=32, out_dim=8, text_dim=16, freq_dim=32, eps=1e-6, patch_size=[1],
        num_heads=1, num_layers=2, has_image_input=False, vae_type="dac")), Operations())
    bridge = DualTowerBridge(BridgeConfig.from_dict(dict(
        visual_layers=3, audio_layers=2, visual_hidden_dim=48, audio_hidden_dim=24, audio_fps=50.0, head_dim=24,
        interaction_strategy="full", apply_cross_rope=True)), Operations())
    return tuple(init_random_(m, gen).eval() for m in (video, audio, bridge))


def tiny_inputs(batch: int = 1, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return dict(video_input=torch.randn(batch, 12, 2, 4, 6, generator=gen),
                audio_latents=torch.randn(batch, 8, 17, generator=gen),
                context=torch.randn(batch, 6, 16, generator=gen),
                video_timestep=torch.rand(batch, generator=gen) * 1000,
                audio_timestep=torch.rand(batch, generator=gen) * 1000,
                video_fps=24.0)


def test_executor_order_matches_execution_order():
    video, audio, bridge = tiny_models()
    for scales in (BridgeScales(), BridgeScales(condition=0.0, v2a=1.0), BridgeScales(enabled=False)):
        calls = []

        def executor(module, *args):
            calls.append(module)
            return module(*args)

        joint_forward(video, audio, bridge, **tiny_inputs(), scales=scales, executor=executor)
        expected = execution_order(video, audio, bridge, scales)
        assert [id(m) for m in calls] == [id(m) for m in expected]
    full = execution_order(video, audio, bridge)
    a2v0, v2a0 = bridge.conditioners(0)
    assert full[:4] == [a2v0, v2a0, video.blocks[0], audio.blocks[0]]
    assert full[-1] is video.blocks[2] and len(full) == 2 * 2 + 2 * 2 + 1


def test_bridge_and_timesteps_matter():
    video, audio, bridge = tiny_models()
    inputs = tiny_inputs()
    on = joint_forward(video, audio, bridge, **inputs)
    off = joint_forward(video, audio, bridge, **inputs, scales=BridgeScales(enabled=False))
    same_t = joint_forward(video, audio, bridge, **{**inputs, "audio_timestep": inputs["video_timestep"]})
    for a, b in ((on, off), (on, same_t)):
        assert (a[0] - b[0]).abs().max() > 1e-4 and (a[1] - b[1]).abs().max() > 1e-4


def test_batch_of_two_equals_two_single_calls():
    video, audio, bridge = tiny_models()
    inputs = tiny_inputs(batch=2)
    video_pred, audio_pred = joint_forward(video, audio, bridge, **inputs)
    assert video_pred.shape == (2, 4, 2, 4, 6) and audio_pred.shape == (2, 8, 17)
    for i in range(2):
        single = {k: (v[i:i + 1] if torch.is_tensor(v) else v) for k, v in inputs.items()}
        v_i, a_i = joint_forward(video, audio, bridge, **single)
        torch.testing.assert_close(video_pred[i:i + 1], v_i, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(audio_pred[i:i + 1], a_i, atol=1e-5, rtol=1e-5)


def test_shared_context_broadcasts_over_batch():
    video, audio, bridge = tiny_models()
    inputs = tiny_inputs(batch=2)
    shared = {**inputs, "context": inputs["context"][:1]}
    repeated = {**inputs, "context": inputs["context"][:1].expand(2, -1, -1)}
    a = joint_forward(video, audio, bridge, **shared)
    b = joint_forward(video, audio, bridge, **repeated)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bf16_weights_give_float32_predictions_close_to_reference():
    video, audio, bridge = tiny_models()
    inputs = tiny_inputs()
    ref_video, ref_audio = joint_forward(video, audio, bridge, **inputs)
    for module in (video, audio, bridge):
        module.to(torch.bfloat16)
    out_video, out_audio = joint_forward(video, audio, bridge, **inputs)
    assert out_video.dtype == out_audio.dtype == torch.float32
    for out, ref in ((out_video, ref_video), (out_audio, ref_audio)):
        error = (out - ref).norm() / ref.norm()
        assert error < 0.05, f"bf16 relative error {error:.4f}"


def test_time_embedding_runs_in_float32_with_bf16_weights():
    video, _, _ = tiny_models()
    video_bf16 = video.to(torch.bfloat16)
    t = torch.tensor([731.25])
    e, t_mod = video_bf16.embed_time(t, torch.bfloat16)
    upcast = video_bf16.float()  # the same bf16-rounded weights, stored as float32
    e32, t_mod32 = upcast.embed_time(t)
    assert torch.equal(e, e32.bfloat16()) and torch.equal(t_mod, t_mod32.bfloat16())
