"""tests/host: tests against a real ComfyUI server (marker ``host``).

The session-scoped ``comfy`` and ``mova_checkpoint`` fixtures live in ``tests/host_fixtures.py``
(loaded by ``tests/conftest.py`` through ``pytest_plugins``) so that tests/browser shares the
same server; see that module for what they provide.
"""
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """Every test under tests/host gets the ``host`` marker."""
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.host)
