"""LoRA target presets and the timestep draw of the training step."""

import pytest
import torch

from mova_model.checkpoint.folder import MovaCheckpoint, build_meta_module
from mova_model.sampling.scheduler import FlowMatchPairScheduler
from mova_model.training.targets import LoraTargets, TargetError
from mova_model.training.timesteps import TrainingTimesteps, expert_for_step
from mova_model.training.trainable_lora import TrainableLora


@pytest.fixture(scope="module")
def metas(tiny_checkpoint_dir):
    ck = MovaCheckpoint.open(tiny_checkpoint_dir)
    return ck, {n: build_meta_module(n, ck.config(n)) for n in ("video_dit", "audio_dit", "dual_tower_bridge")}


def test_official_preset_wraps_block_and_bridge_linears_but_not_embeddings_or_heads(metas):
    _, modules = metas
    paths = LoraTargets.parse("official").select(modules["video_dit"])
    assert paths and all(p.startswith("blocks.") for p in paths)
    assert {p.split(".", 2)[2] for p in paths} == {"self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                                                    "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o",
                                                    "ffn.0", "ffn.2"}
    bridge = LoraTargets.parse("official").select(modules["dual_tower_bridge"])
    assert bridge and all(p.split(".")[-2] == "inner" for p in bridge)


def test_attention_preset_and_custom_lists(metas):
    _, modules = metas
    attention = LoraTargets.parse("attention").select(modules["audio_dit"])
    assert attention and not any("ffn" in p for p in attention)
    ffn = LoraTargets.parse("ffn").select(modules["audio_dit"])
    assert ffn and all(".ffn." in p for p in ffn)
    assert LoraTargets.parse(["q", "k", "v", "o", "to_q", "to_k", "to_v", "proj"]).preset == "official"
    with pytest.raises(TargetError):
        LoraTargets.parse(" , ")
    with pytest.raises(ValueError, match="match no Linear"):
        TrainableLora.for_modules({"audio_dit": modules["audio_dit"]}, 4, 4.0, LoraTargets.parse("no_such_layer"))


def test_lora_init_is_official_and_keys_load_back(metas):
    _, modules = metas
    lora = TrainableLora.for_modules(modules, 4, 8.0, LoraTargets.parse("official"))
    lora.reset_official(torch.Generator().manual_seed(0))
    down, up = lora.pair(lora.keys()[0])
    assert torch.count_nonzero(up) == 0 and down.abs().max() <= 1 / down.shape[1] ** 0.5
    weights = lora.to_weights()
    assert weights.rank == 4 and weights.alpha == 8.0 and set(weights.pairs) == {"video_dit", "audio_dit", "dual_tower_bridge"}


def test_timestep_ranges_follow_the_boundary_and_the_global_rng_order(metas):
    ck, _ = metas
    table = TrainingTimesteps.from_scheduler(FlowMatchPairScheduler(ck.configs.scheduler), 0.9)
    b = table.boundary_fraction
    assert 0 < b < 1
    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        assert int(table.draw_index("video_dit", g)) < int(b * 1000)
        assert int(table.draw_index("video_dit_2", g)) >= int(b * 1000)
    torch.manual_seed(11)
    u = torch.rand(1)
    expected = torch.floor((0.0 + u * (b - 0.0)) * 1000).long()
    assert torch.equal(table.draw_index("video_dit", torch.Generator().manual_seed(11)), expected)
    assert [expert_for_step(i) for i in range(4)] == ["video_dit", "video_dit_2"] * 2
    assert expert_for_step(1, "high") == "video_dit"


def test_beyond_official_options_keep_the_official_draw_order(metas):
    from mova_model.training.step import EncodedClip, StepOptions, draw_step

    ck, _ = metas
    table = TrainingTimesteps.from_scheduler(FlowMatchPairScheduler(ck.configs.scheduler), 0.9)
    clip = EncodedClip(torch.zeros(1, 512, 8), torch.zeros(1, 4, 2, 2, 2), torch.zeros(1, 8, 2, 2, 2),
                       torch.zeros(1, 8, 5), 8.0, torch.zeros(1, 512, 8))
    plain = draw_step(table, clip, "video_dit_2", torch.Generator().manual_seed(4))
    dropped = draw_step(table, clip, "video_dit_2", torch.Generator().manual_seed(4), StepOptions(caption_dropout=0.999))
    assert torch.equal(plain.timestep_id, dropped.timestep_id) and torch.equal(plain.audio_noise, dropped.audio_noise)
    assert dropped.drop_caption and not plain.drop_caption
    g = torch.Generator().manual_seed(5)
    lo = int(table.boundary_fraction * 1000)
    ids = [int(table.draw_index("video_dit_2", g, "logit_normal")) for _ in range(200)]
    assert min(ids) >= lo and max(ids) <= 999
