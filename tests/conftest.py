"""Shared pytest configuration for the whole suite.

Markers (also declared in pyproject.toml): ``host`` tests start a real ComfyUI server,
``browser`` tests drive the real frontend in headless Chromium. Both are deselected by
default (``addopts``); ``make test`` runs everything with ``-m ""``.
"""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Attention inputs a GPU's fused kernels would refuse (a non-unit last-dim stride) are errors in every test,
# in this process and in the ranks and servers it starts (mova_model/network/attention.py, `kernel_inputs`).
os.environ["MOVA_STRICT_ATTENTION_LAYOUT"] = "1"

# Inductor's on-disk cache does not key its C++ kernels by ATen's CPU capability: code compiled for AVX2 is reused
# under ATEN_CPU_CAPABILITY=default and no longer compiles there. One cache folder per capability (for this
# process and what it starts) keeps the scalar-kernel runs of the suite apart. A user's own setting is kept.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ and os.environ.get("ATEN_CPU_CAPABILITY"):
    import getpass
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_{os.environ['ATEN_CPU_CAPABILITY'].lower()}")

# The real-ComfyUI fixtures (`comfy`, `mova_checkpoint`), shared by tests/host and tests/browser.
pytest_plugins = ["host_fixtures"]


def pytest_configure(config):
    config.addinivalue_line("markers", "host: starts a real ComfyUI server (needs scripts/install_host.sh)")
    config.addinivalue_line("markers", "browser: drives the ComfyUI frontend in headless Chromium")


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only reference folder ``../shared`` (parity fixtures, spec).

    Absent on a user's clone: the test is skipped. In CI (``CI=true``) it must be there,
    so its absence fails the test instead of silently skipping the parity checks.
    """
    path = (REPO_ROOT.parent / "shared").resolve()
    if path.is_dir():
        return path
    message = f"{path} not found (reference data lives beside the repo as ../shared)"
    if running_in_ci():
        pytest.fail(message + "; CI=true requires it", pytrace=False)
    pytest.skip(message)
