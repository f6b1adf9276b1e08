"""Parity-fixture access for the codec tests (scheduler, text encoder, image, VAEs, conditioning).

The fixture set is `../shared/parity` beside the repo, or the folder named by `MOVA_PARITY_DIR` (absolute, or
relative to the repo root), e.g. `MOVA_PARITY_DIR=../shared/parity-held`. Cases are chosen by `kind` from the
set's `index.json`, never by name, so other sets (other sizes, shifts, step counts) run the same checks.
Component weights are read with a small local loader over a component folder's `*.safetensors`.

Tests import this file by path (`load_helpers()` in each test module): pytest runs in importlib mode.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[1]

SCALAR_ATEN_KERNELS = torch.backends.cpu.get_cpu_capability() == "DEFAULT"
"""True under `ATEN_CPU_CAPABILITY=default`: ATen's scalar CPU kernels instead of the AVX2/AVX-512 ones."""


def recorded_exact_tolerance(ulps: int = 2) -> Dict[str, float]:
    """Tolerance for outputs the official code computes with ATen elementwise kernels (linspace, randn, exp).

    The fixtures were recorded with ATen's vectorized CPU kernels (AVX2 / AVX-512), which reproduce them bit for
    bit, so there the check is exact. The scalar fallback (`ATEN_CPU_CAPABILITY=default`) rounds some elements
    differently in the last bit: measured 131 of 1000 training timesteps off by one ulp (1.6e-7 relative) and 127
    of 288 `randn` values off by up to 1.2e-6 (its Box-Muller uses another log/cos). The official code would
    compute those same bits on such a CPU, so there the check allows `ulps` units in the last place of fp32.
    """
    if not SCALAR_ATEN_KERNELS:
        return {"atol": 0.0, "rtol": 0.0}
    return {"atol": 0.0, "rtol": ulps * torch.finfo(torch.float32).eps}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def parity_dir() -> Path | None:
    """The fixture folder, or None when it is absent (tests then skip; in CI they fail)."""
    named = os.environ.get("MOVA_PARITY_DIR")
    if named:
        path = Path(named)
        path = path if path.is_absolute() else (REPO_ROOT / path)
    else:
        path = REPO_ROOT.parent / "shared" / "parity"
    path = path.resolve()
    return path if (path / "index.json").is_file() else None


def case_params(kind: str) -> List[Any]:
    """`pytest.param(case, id=name)` for every case of `kind`; one skipped (or, in CI, failing) param if none."""
    root = parity_dir()
    if root is None:
        reason = "parity fixtures not found (../shared/parity or MOVA_PARITY_DIR)"
        if _in_ci():
            return [pytest.param(None, id=f"{kind}-missing")]  # require_case fails it
        return [pytest.param(None, id=f"{kind}-missing", marks=pytest.mark.skip(reason=reason))]
    index = json.loads((root / "index.json").read_text(encoding="utf-8"))
    params = [pytest.param(case, id=case["name"]) for case in index.get("cases", []) if case.get("kind") == kind]
    if not params:
        return [pytest.param(None, id=f"{kind}-none", marks=pytest.mark.skip(reason=f"no {kind!r} case in {root}"))]
    return params


def require_case(case: Dict[str, Any] | None) -> Dict[str, Any]:
    if case is None:
        if _in_ci():
            pytest.fail("parity fixtures are required in CI", pytrace=False)
        pytest.skip("no parity case")
    return case


def load_case(case: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """(inputs, outputs) tensors of a case; a case without an inputs file gets {}."""
    root = parity_dir()
    assert root is not None
    inputs_path = root / case["inputs"] if case.get("inputs") else None
    inputs = load_file(str(inputs_path)) if inputs_path is not None and inputs_path.is_file() else {}
    outputs = load_file(str(root / case["outputs"]))
    return inputs, outputs


def checkpoint_dir(case: Dict[str, Any]) -> Path:
    root = parity_dir()
    assert root is not None
    return (root / case.get("checkpoint", "checkpoint")).resolve()


def load_component_state(folder: Path) -> Dict[str, torch.Tensor]:
    """Every tensor of a component folder's `*.safetensors` files (shards included), on the CPU."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors file in {folder}")
    state: Dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def tolerance(case: Dict[str, Any], key: str | None = None, atol: float = 1e-4, rtol: float = 1e-3) -> Dict[str, float]:
    """atol/rtol from the case's `tolerance` (optionally its sub-entry `key`), else the defaults given."""
    tol = case.get("tolerance") or {}
    if key is not None and isinstance(tol.get(key), dict):
        tol = tol[key]
    return {"atol": float(tol.get("atol", atol)), "rtol": float(tol.get("rtol", rtol))}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {list(actual.shape)} != {list(expected.shape)}"
    torch.testing.assert_close(actual.to(expected.dtype), expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")
