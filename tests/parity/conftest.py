"""Parametrize the parity suite over every case of `$MOVA_PARITY_DIR/index.json` (default `../shared/parity`).

A missing fixture directory skips the suite outside CI and fails it under `CI=true`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO.parent / "shared" / "parity"


def parity_dir() -> Path:
    return Path(os.environ.get("MOVA_PARITY_DIR") or DEFAULT_DIR).resolve()


def _cases():
    root = parity_dir()
    index = root / "index.json"
    if not index.is_file():
        return root, None
    return root, json.loads(index.read_text())


def pytest_generate_tests(metafunc):
    if "parity_case" not in metafunc.fixturenames:
        return
    root, index = _cases()
    if index is None:
        metafunc.parametrize("parity_case", [pytest.param(None, id="no-fixture-dir")])
        return
    cases = index.get("cases") or []
    params = [pytest.param((root, index, case), id=case.get("name", f"case{i}")) for i, case in enumerate(cases)]
    if not params:
        params = [pytest.param((root, index, None), id="empty-index")]
    metafunc.parametrize("parity_case", params)
