"""Parity with the official MOVA implementation: every case of the fixture set's index.json, no skips.

`MOVA_PARITY_DIR=<dir> python -m pytest tests/parity` runs every case listed in `<dir>/index.json` (default
`../shared/parity`). Each case's checkpoint is opened with `MovaCheckpoint.open`, the same loader a user's
folder goes through. An unknown case kind, a missing file or a case that cannot run is a failure.
Max abs / rel errors per output are appended to `tests/artifacts/parity/<set>.jsonl`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from . import runners

REPO = Path(__file__).resolve().parents[2]


def test_case(parity_case):
    if parity_case is None:
        message = "parity fixtures not found: set MOVA_PARITY_DIR or put the shared folder beside the repo"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    root, index, case = parity_case
    assert case is not None, f"{root}/index.json lists no cases"
    kind = case.get("kind")
    runner = runners.RUNNERS.get(kind)
    assert runner is not None, f"case {case.get('name')!r}: unknown case kind {kind!r} (known: {sorted(runners.RUNNERS)})"
    context = runners.CaseContext.load(Path(root), index, case)
    report = runner(context)
    out_dir = REPO / "tests" / "artifacts" / "parity"
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{index.get('set', Path(root).name)}.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"case": case["name"], "kind": kind, "errors": report.errors}) + "\n")
    report.raise_failures()
