"""DualTowerBridge: official key set, parity with `build_aligned_freqs` + `DualTowerConditionalBridge.forward`,
strategies, scale semantics and the executor hook."""

import pytest
import torch

from dit_fixtures import assert_close, build_meta, case_tensors, load_component, read_cases, read_manifest
from mova_model.network.bridge import DualTowerBridge, interaction_layers
from mova_model.checkpoint.configs import BridgeConfig
from mova_model.network.ops import Operations, init_random_

TINY = dict(visual_layers=3, audio_layers=2, visual_hidden_dim=32, audio_hidden_dim=16, audio_fps=50.0, head_dim=8,
            interaction_strategy="full", apply_cross_rope=True)


def tiny_bridge(**overrides) -> DualTowerBridge:
    bridge = DualTowerBridge(BridgeConfig.from_dict({**TINY, **overrides}), Operations())
    return init_random_(bridge, torch.Generator().manual_seed(0)).eval()


def tiny_states(seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 2 * 2 * 3, 32, generator=gen), torch.randn(1, 20, 16, generator=gen)


def test_keys_and_shapes_match_official_manifest(shared_dir):
    bridge = build_meta("dual_tower_bridge", shared_dir / "spec/configs/MOVA-360p/dual_tower_bridge/config.json")
    manifest = read_manifest(shared_dir / "spec/manifests/MOVA-360p/dual_tower_bridge.tsv")
    assert {k: list(v.shape) for k, v in bridge.state_dict().items()} == manifest
    assert bridge.layers == tuple(range(30))


def test_parity_with_official_bridge(shared_dir):
    parity = shared_dir / "parity"
    (case,) = read_cases(parity, ("bridge_forward",))
    bridge = load_component(parity / case["checkpoint"], "dual_tower_bridge")
    inputs, outputs = case_tensors(parity, case)
    args, tol = case["args"], case["tolerance"]
    video_rope, audio_rope = bridge.aligned_rope(args["video_fps"], args["grid_size"], args["audio_steps"])
    for name, value in zip(("cos_v", "sin_v", "cos_a", "sin_a"), (*video_rope, *audio_rope)):
        assert_close(value, outputs[name], tol["atol"], tol["rtol"], name)
    with torch.no_grad():
        for layer in args["interacting_layers"]:
            video, audio = bridge(layer, inputs["visual_hidden"], inputs["audio_hidden"], video_rope, audio_rope,
                                  args["condition_scale"], args["condition_scale"])
            assert_close(video, outputs[f"layer{layer}_visual_out"], tol["atol"], tol["rtol"], f"layer {layer} video")
            assert_close(audio, outputs[f"layer{layer}_audio_out"], tol["atol"], tol["rtol"], f"layer {layer} audio")


def test_interaction_strategies():
    assert interaction_layers("full", 40, 30) == list(range(30))
    assert interaction_layers("shallow_focus", 40, 30) == list(range(10))
    assert interaction_layers("distributed", 40, 30) == list(range(0, 30, 3))
    assert interaction_layers("progressive", 40, 30) == list(range(8)) + list(range(8, 30, 3))
    assert interaction_layers("custom", 40, 10) == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="interaction_strategy"):
        interaction_layers("sideways", 4, 4)
    bridge = tiny_bridge(interaction_strategy="distributed", visual_layers=8, audio_layers=7)
    assert bridge.interacts(0) and bridge.interacts(3) and not bridge.interacts(1)
    assert sorted(bridge.audio_to_video_conditioners.keys()) == ["0", "3", "6"]


def test_both_directions_read_pre_update_states_and_scales_multiply():
    bridge = tiny_bridge()
    video, audio = tiny_states()
    v_rope, a_rope = bridge.aligned_rope(24.0, (2, 2, 3), 20)
    a2v, v2a = bridge.conditioners(1)
    with torch.no_grad():
        video_term = a2v(video, audio, v_rope, a_rope)
        audio_term = v2a(audio, video, a_rope, v_rope)
        out_v, out_a = bridge(1, video, audio, v_rope, a_rope, 0.5, 1.5)
        off_v, off_a = bridge(1, video, audio, v_rope, a_rope, 0.0, 0.0)
        skip_v, skip_a = bridge(5, video, audio, v_rope, a_rope, 1.0, 1.0)
    torch.testing.assert_close(out_v, video + video_term * 0.5)
    torch.testing.assert_close(out_a, audio + audio_term * 1.5)
    assert off_v is video and off_a is audio
    assert skip_v is video and skip_a is audio


def test_cross_rope_switch_changes_result():
    video, audio = tiny_states()
    with_rope = tiny_bridge()
    without = tiny_bridge(apply_cross_rope=False)
    without.load_state_dict(with_rope.state_dict())
    v_rope, a_rope = with_rope.aligned_rope(24.0, (2, 2, 3), 20)
    with torch.no_grad():
        a, _ = with_rope(0, video, audio, v_rope, a_rope)
        b, _ = without(0, video, audio, None, None)
    assert (a - b).abs().max() > 1e-4


def test_executor_sees_every_conditioner_call():
    bridge = tiny_bridge()
    video, audio = tiny_states()
    seen = []

    def executor(module, *args):
        seen.append(module)
        return module(*args)

    with torch.no_grad():
        bridge(0, video, audio, None, None, 1.0, 1.0, executor=executor)
    assert seen == list(bridge.conditioners(0))


def test_trainable_condition_scale_key():
    bridge = DualTowerBridge(BridgeConfig.from_dict({**TINY, "trainable_condition_scale": True}), Operations())
    assert "condition_scale" in bridge.state_dict()
