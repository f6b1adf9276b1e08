"""Guidance: pass counts per (s_T, s_B), per-modality union, and the combination formulas (paper Eq. 6)."""

import math

import pytest
import torch

from mova_model.sampling.guidance import (BOTH_OFF, FULL, PRESETS, TEXT_OFF, Branch, GuidanceConfig, branches_for, combine,
                                 required_branches)


def _preds(seed=0, shape=(1, 4, 2, 3, 5)):
    g = torch.Generator().manual_seed(seed)
    return {b: torch.randn(shape, generator=g) for b in (FULL, TEXT_OFF, BOTH_OFF)}


@pytest.mark.parametrize("text, bridge, expected", [
    (1.0, 1.0, (FULL,)),
    (5.0, 1.0, (FULL, TEXT_OFF)),
    (3.5, 3.5, (FULL, BOTH_OFF)),
    (5.0, 3.5, (FULL, TEXT_OFF, BOTH_OFF)),
    (1.0, 3.5, (FULL, TEXT_OFF, BOTH_OFF)),
])
def test_pass_counts(text, bridge, expected):
    assert required_branches(GuidanceConfig(text_scale=text, bridge_scale=bridge)) == expected
    assert branches_for(text, bridge) == frozenset(expected)


def test_branch_names():
    assert [b.name for b in (FULL, TEXT_OFF, BOTH_OFF)] == ["full", "text_off", "both_off"]
    assert Branch(text=True, bridge=False).name == "bridge_off"
    assert (FULL.text, FULL.bridge, TEXT_OFF.text, TEXT_OFF.bridge, BOTH_OFF.text, BOTH_OFF.bridge) == \
        (True, True, False, True, False, False)


@pytest.mark.parametrize("config, expected", [
    # video text CFG (full, text_off) + audio s_B = s_T (full, both_off) -> all three
    (GuidanceConfig(text_scale=5.0, bridge_scale=1.0, audio_text_scale=3.5, audio_bridge_scale=3.5), (FULL, TEXT_OFF, BOTH_OFF)),
    # video unguided + audio text CFG -> two
    (GuidanceConfig(text_scale=5.0, bridge_scale=1.0, video_text_scale=1.0), (FULL, TEXT_OFF)),
    # both 1 pass -> one
    (GuidanceConfig(text_scale=1.0, bridge_scale=1.0, audio_text_scale=1.0, video_text_scale=1.0), (FULL,)),
    # video s_B = s_T, audio unguided -> full + both_off
    (GuidanceConfig(text_scale=1.0, bridge_scale=1.0, video_text_scale=2.0, video_bridge_scale=2.0), (FULL, BOTH_OFF)),
])
def test_per_modality_scales_take_the_union(config, expected):
    assert required_branches(config) == expected


def test_scales_fall_back_to_the_shared_values():
    config = GuidanceConfig(text_scale=4.0, bridge_scale=2.0, audio_text_scale=6.0, video_bridge_scale=1.5)
    assert config.scales("video") == (4.0, 1.5)
    assert config.scales("audio") == (6.0, 2.0)
    with pytest.raises(ValueError, match="modality"):
        config.scales("image")


def test_presets_have_the_documented_pass_counts():
    counts = {name: len(required_branches(GuidanceConfig(text_scale=t, bridge_scale=b))) for name, (t, b) in PRESETS.items()}
    assert counts == {"official (text CFG)": 2, "lip-sync (dual CFG)": 3, "text + modality (2 passes)": 2,
                      "no guidance (1 pass)": 1}


@pytest.mark.parametrize("scale", [5.0, 3.5, 7.25, 0.0])
def test_text_cfg_is_bit_identical_to_the_official_expression(scale):
    preds = _preds(1)
    pos, neg = preds[FULL], preds[TEXT_OFF]
    official = neg + scale * (pos - neg)
    # only the two branches the official pipeline runs are needed
    out = combine({FULL: pos, TEXT_OFF: neg}, scale, 1.0)
    assert torch.equal(out, official)


def test_no_guidance_returns_the_conditional_pass_unchanged():
    preds = _preds(2)
    assert torch.equal(combine({FULL: preds[FULL]}, 1.0, 1.0), preds[FULL])


def _general(preds, s_t, s_b):
    full, text_off, both_off = (preds[b].double() for b in (FULL, TEXT_OFF, BOTH_OFF))
    return both_off + s_b * (text_off - both_off) + s_t * (full - text_off)


@pytest.mark.parametrize("scale", [3.5, 2.0, 6.0])
def test_equal_scales_match_the_general_formula(scale):
    preds = _preds(3)
    out = combine({FULL: preds[FULL], BOTH_OFF: preds[BOTH_OFF]}, scale, scale)
    torch.testing.assert_close(out.double(), _general(preds, scale, scale), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("s_t, s_b", [(5.0, 3.5), (1.0, 3.5), (5.0, 0.0), (2.0, 1.5)])
def test_general_formula_matches_float64_reference(s_t, s_b):
    preds = _preds(4)
    out = combine(preds, s_t, s_b)
    assert out.dtype == torch.float32 and out.shape == preds[FULL].shape
    torch.testing.assert_close(out.double(), _general(preds, s_t, s_b), atol=1e-5, rtol=1e-5)


def test_general_formula_by_hand():
    # v = both + s_B (text_off - both) + s_T (full - text_off); binary fractions, so exact in float32
    preds = {FULL: torch.tensor([1.0, -2.0]), TEXT_OFF: torch.tensor([0.5, 0.0]), BOTH_OFF: torch.tensor([0.25, 1.0])}
    out = combine(preds, 5.0, 3.5)
    # [0.25 + 3.5*0.25 + 5*0.5, 1 + 3.5*(-1) + 5*(-2)] = [3.625, -12.5]
    assert out.tolist() == [3.625, -12.5]
    # the s_B = s_T case ignores text_off: 0.25 + 2*(0.75) = 1.75, 1 + 2*(-3) = -5
    assert combine(preds, 2.0, 2.0).tolist() == [1.75, -5.0]
    # text CFG: 0.5 + 3*(0.5) = 2.0, 0 + 3*(-2) = -6
    assert combine(preds, 3.0, 1.0).tolist() == [2.0, -6.0]


FIELDS = ("text_scale", "bridge_scale", "video_text_scale", "audio_text_scale", "video_bridge_scale",
          "audio_bridge_scale", "a2v_scale", "v2a_scale")


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_validate_rejects_non_finite(field, value):
    with pytest.raises(ValueError, match=field):
        GuidanceConfig(**{field: value}).validate()


def test_validate_rejects_non_numbers_and_accepts_finite():
    with pytest.raises(ValueError, match="text_scale"):
        GuidanceConfig(text_scale="5").validate()
    GuidanceConfig(text_scale=5.0, bridge_scale=3.5, audio_text_scale=0.0, a2v_scale=0.5, v2a_scale=2).validate()
