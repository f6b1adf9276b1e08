"""Shared fixtures of the lead-module tests: one tiny random-weight checkpoint and one pipeline on it.

The checkpoint is written once per session by `write_tiny_checkpoint`; the pipeline is CPU float32. Tests that
count module builds make their own `fresh_pipe` (same checkpoint, empty component cache).
"""

import pytest
import torch

from mova_model.sampling.pipeline import MovaPipeline
from mova_model.checkpoint.tiny import write_tiny_checkpoint

CLIP = dict(width=32, height=32, num_frames=5, video_fps=8.0)
"""The clip every sampling test uses: 32x32 pixels, 5 frames at 8 fps (latents [1,4,2,4,4] and [1,8,63])."""


@pytest.fixture(scope="session")
def clip():
    """Geometry of the test clip (a copy of `CLIP`)."""
    return dict(CLIP)


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_mova") / "MOVA-tiny")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_checkpoint_dir):
    return MovaPipeline.from_pretrained(tiny_checkpoint_dir, device="cpu", dtype=torch.float32)


@pytest.fixture
def fresh_pipe(tiny_pipe):
    """A pipeline on the same (already validated) checkpoint with its own, empty component cache."""
    return MovaPipeline(tiny_pipe.checkpoint, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_cond(tiny_pipe):
    """Text-only conditioning of the test clip (prompt and an explicit negative prompt)."""
    return tiny_pipe.prepare_conditioning("a man says hello in the kitchen", "static, blurry", None, **CLIP)
