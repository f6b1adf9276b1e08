"""Fixtures of the training tests: a small synthetic dataset (PyAV) and its encoded-clip cache."""

from __future__ import annotations

import pytest

from training_clips import write_dataset


@pytest.fixture(scope="session")
def clip_dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("train_data") / "clips", count=2)


@pytest.fixture(scope="session")
def encode_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("train_cache")
