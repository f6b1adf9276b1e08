"""How the ranks of a parallel MOVA run are arranged, and which arrangements a checkpoint allows.

A run on `world = cfg × ulysses` ranks: rank r has CFG rank `r // ulysses` (which guidance branches it
evaluates) and sequence rank `r % ulysses` (which token shard it holds). The ranks sharing a CFG rank form
one sequence-parallel (Ulysses) group; the ranks sharing a sequence rank form one CFG group.

Ulysses exchanges heads for tokens, so its degree must divide the head count of every attention that sees a
whole stream: the video and audio self-attention and both bridge directions (40, 12, 40 and 12 heads for the
released MOVA, so 1, 2 or 4; the official code goes further with ring attention, which is not implemented here).
The CFG degree can be at most the number of guidance passes a step needs (2 for text CFG, 3 for dual CFG).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence

SPLITS = ("cfg", "ulysses", "cfg+ulysses")


class ParallelError(RuntimeError):
    """A parallel run that cannot start or cannot go on; the message says what and what to do."""


@dataclass(frozen=True)
class ParallelLayout:
    """cfg: ranks the guidance branches are spread over; ulysses: ranks each branch's tokens are split over."""

    cfg: int = 1
    ulysses: int = 1

    @property
    def world(self) -> int:
        return self.cfg * self.ulysses

    def cfg_rank(self, rank: int) -> int:
        return rank // self.ulysses

    def sequence_rank(self, rank: int) -> int:
        return rank % self.ulysses

    def sequence_group_ranks(self, cfg_rank: int) -> List[int]:
        """Global ranks holding the token shards of one CFG rank's branches."""
        return [cfg_rank * self.ulysses + s for s in range(self.ulysses)]

    def cfg_group_ranks(self, sequence_rank: int) -> List[int]:
        """Global ranks that hold the same token shard for different branches."""
        return [c * self.ulysses + sequence_rank for c in range(self.cfg)]

    def describe(self) -> str:
        return f"{self.world} ranks = CFG {self.cfg} x Ulysses {self.ulysses}"


def layout_for(split: str, world: int, cfg_degree: int = 2) -> ParallelLayout:
    """The layout of `world` ranks for a split name ("cfg", "ulysses" or "cfg+ulysses").

    "cfg+ulysses" uses `cfg_degree` CFG ranks (2 by default: text CFG) and `world / cfg_degree` sequence ranks.
    """
    if split not in SPLITS:
        raise ParallelError(f"parallel split must be one of {', '.join(SPLITS)}, got {split!r}")
    if world < 1:
        raise ParallelError(f"a parallel run needs at least one rank, got {world}")
    if split == "cfg":
        return ParallelLayout(cfg=world, ulysses=1)
    if split == "ulysses":
        return ParallelLayout(cfg=1, ulysses=world)
    if world % cfg_degree or world < 2 * cfg_degree:
        raise ParallelError(f"cfg+ulysses with CFG {cfg_degree} needs a multiple of {cfg_degree} ranks, at least "
                            f"{2 * cfg_degree} (e.g. 4 = CFG 2 x Ulysses 2), got {world}")
    return ParallelLayout(cfg=cfg_degree, ulysses=world // cfg_degree)


def attention_head_counts(configs) -> dict:
    """Head counts of every attention that sees a whole stream, from `MovaConfigs`."""
    bridge = configs.dual_tower_bridge
    return {"video self-attention": int(configs.video_dit.num_heads),
            "audio self-attention": int(configs.audio_dit.num_heads),
            "bridge audio->video": int(bridge.visual_hidden_dim) // int(bridge.head_dim),
            "bridge video->audio": int(bridge.audio_hidden_dim) // int(bridge.head_dim)}


def allowed_ulysses_degrees(configs, limit: int = 64) -> List[int]:
    """Ulysses degrees the checkpoint allows: the divisors of the heads' common divisor (1, 2, 4 for MOVA)."""
    common = 0
    for heads in attention_head_counts(configs).values():
        common = math.gcd(common, heads)
    return [d for d in range(1, min(common, limit) + 1) if common % d == 0]


def check_layout(layout: ParallelLayout, configs, branches: Sequence) -> None:
    """Raise `ParallelError` when this checkpoint or this guidance cannot run on `layout`."""
    allowed = allowed_ulysses_degrees(configs)
    if layout.ulysses not in allowed:
        heads = ", ".join(f"{name} {count}" for name, count in attention_head_counts(configs).items())
        raise ParallelError(
            f"Ulysses degree {layout.ulysses} does not divide the head counts of this model ({heads}); "
            f"allowed degrees: {', '.join(map(str, allowed))} (ring attention for more ranks is not implemented)")
    if layout.cfg > max(1, len(branches)):
        raise ParallelError(
            f"CFG-parallel over {layout.cfg} ranks needs at least {layout.cfg} guidance passes per step, but this "
            f"guidance needs {len(branches)} (text CFG: 2, dual CFG: 3, scale 1: 1); use fewer CFG ranks or "
            f"the 'ulysses' split")
