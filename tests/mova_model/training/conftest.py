"""Fixtures of the training tests: a small synthetic dataset (PyAV) and short runs on the tiny checkpoint."""

from __future__ import annotations

import pytest

from mova_model.training.trainer import TrainSettings

from training_clips import write_dataset

GEOMETRY = dict(width=48, height=32, frames=9, fps=8.0)


def small_settings(**overrides) -> TrainSettings:
    """4 optimizer steps of rank 4 on 48x32x9 clips; warm-up 0 and a high lr so that a few steps show."""
    base = dict(steps=4, rank=4, alpha=4.0, lr=1e-2, warmup_steps=0, val_items=1, **GEOMETRY)
    base.update(overrides)
    return TrainSettings(**base)


@pytest.fixture(scope="session")
def clip_dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("train_data") / "clips", count=2)


@pytest.fixture(scope="session")
def encode_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("train_cache")
