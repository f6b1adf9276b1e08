"""Parametrize the parity suite over every case of `$MOVA_PARITY_DIR/index.json`.

Without `MOVA_PARITY_DIR`, every fixture set beside the repo is run: each `../shared/parity*/index.json`
(core, dual CFG, held streams, training, keyframes, and any set added later), case ids prefixed by the set.
A missing fixture directory skips the suite outside CI and fails it under `CI=true`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO.parent / "shared" / "parity"


def parity_dir() -> Path:
    return Path(os.environ.get("MOVA_PARITY_DIR") or DEFAULT_DIR).resolve()


def parity_dirs() -> List[Path]:
    """`$MOVA_PARITY_DIR` alone when set, else every `parity*` set with an index beside the default one."""
    if os.environ.get("MOVA_PARITY_DIR"):
        return [parity_dir()]
    found = sorted(p.parent for p in DEFAULT_DIR.parent.glob("parity*/index.json"))
    return found or [DEFAULT_DIR]


def pytest_generate_tests(metafunc):
    if "parity_case" not in metafunc.fixturenames:
        return
    roots = parity_dirs()
    params = []
    for root in roots:
        prefix = f"{root.name}/" if len(roots) > 1 else ""
        index_file = root / "index.json"
        if not index_file.is_file():
            params.append(pytest.param(None, id=f"{prefix}no-fixture-dir"))
            continue
        index = json.loads(index_file.read_text())
        cases = index.get("cases") or []
        params += [pytest.param((root, index, case), id=prefix + case.get("name", f"case{i}"))
                   for i, case in enumerate(cases)]
        if not cases:
            params.append(pytest.param((root, index, None), id=f"{prefix}empty-index"))
    metafunc.parametrize("parity_case", params)
