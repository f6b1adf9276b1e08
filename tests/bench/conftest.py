"""Fixtures of the bench tests: the tiny random-weight checkpoint (written once per session)."""
import pytest

from mova_model.checkpoint.tiny import write_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_mova_bench") / "MOVA-tiny")
