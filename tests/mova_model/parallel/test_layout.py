"""Rank layouts and the degrees a checkpoint allows (no processes)."""
from types import SimpleNamespace

import pytest

from mova_model.parallel.layout import (ParallelError, ParallelLayout, allowed_ulysses_degrees, check_layout,
                                        layout_for)
from mova_model.sampling.guidance import FULL, TEXT_OFF, BOTH_OFF


def configs(video_heads=40, audio_heads=12, video_dim=5120, audio_dim=1536, head_dim=128):
    """The head structure of the released MOVA (40 video heads, 12 audio heads, bridge heads of 128)."""
    return SimpleNamespace(video_dit=SimpleNamespace(num_heads=video_heads), audio_dit=SimpleNamespace(num_heads=audio_heads),
                           dual_tower_bridge=SimpleNamespace(visual_hidden_dim=video_dim, audio_hidden_dim=audio_dim,
                                                             head_dim=head_dim))


def test_released_mova_allows_ulysses_1_2_4():
    assert allowed_ulysses_degrees(configs()) == [1, 2, 4]


def test_layouts_and_rank_groups():
    assert layout_for("cfg", 3) == ParallelLayout(cfg=3, ulysses=1)
    assert layout_for("ulysses", 4) == ParallelLayout(cfg=1, ulysses=4)
    both = layout_for("cfg+ulysses", 8)
    assert both == ParallelLayout(cfg=2, ulysses=4)
    assert both.sequence_group_ranks(1) == [4, 5, 6, 7] and both.cfg_group_ranks(2) == [2, 6]
    assert (both.cfg_rank(5), both.sequence_rank(5)) == (1, 1)
    with pytest.raises(ParallelError, match="multiple of 2"):
        layout_for("cfg+ulysses", 3)
    with pytest.raises(ParallelError, match="cfg, ulysses, cfg\\+ulysses"):
        layout_for("ring", 2)


def test_refused_degrees_name_the_allowed_ones():
    with pytest.raises(ParallelError, match="Ulysses degree 3 .* allowed degrees: 1, 2, 4"):
        check_layout(ParallelLayout(ulysses=3), configs(), (FULL, TEXT_OFF))
    with pytest.raises(ParallelError, match="Ulysses degree 8"):
        check_layout(ParallelLayout(ulysses=8), configs(), (FULL, TEXT_OFF))
    with pytest.raises(ParallelError, match="needs at least 3 guidance passes per step, but this guidance needs 2"):
        check_layout(ParallelLayout(cfg=3), configs(), (FULL, TEXT_OFF))
    check_layout(ParallelLayout(cfg=3, ulysses=4), configs(), (FULL, TEXT_OFF, BOTH_OFF))
