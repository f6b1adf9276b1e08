"""Real-ComfyUI fixtures shared by tests/host and tests/browser (loaded via ``pytest_plugins``).

One server is started per test session (base directory in a tmp dir, this pack symlinked
into ``custom_nodes/comfyui-mova``, test images uploaded) and shared by all host and browser
tests. The venv is the one running pytest (``make test`` uses ``.venv``), or
``$MOVA_HOST_VENV``; it must have been prepared by ``scripts/install_host.sh``.
"""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))

import comfy_host  # noqa: E402

ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
TINY_CHECKPOINT_NAME = "mova-tiny"


def host_venv() -> Path:
    return Path(os.environ.get("MOVA_HOST_VENV") or sys.prefix)


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """A :class:`comfy_host.ComfySession` on a running ComfyUI 0.3.75 with this pack loaded.

    ``comfy.run(api_workflow, timeout=...)`` -> :class:`comfy_host.RunResult`;
    ``comfy.images["first_frame"]`` is the uploaded 64x48 test PNG's name for LoadImage.
    The server log is copied to ``tests/artifacts/host/comfyui.log`` at the end.
    """
    venv = host_venv()
    if not (venv / "comfyui" / "main.py").is_file():
        pytest.fail(
            f"no ComfyUI host in {venv}: run `make venv` (scripts/install_host.sh {venv} --with-browser)",
            pytrace=False,
        )
    base = tmp_path_factory.mktemp("comfy-host")
    server = comfy_host.ComfyServer(venv=venv, base=base, packs=[REPO_ROOT])
    try:
        server.start(timeout=180)
    except comfy_host.HostError as err:
        pytest.fail(f"ComfyUI did not start with the pack: {err}", pytrace=False)
    session = comfy_host.ComfySession(server, out_dir=base / "downloads")
    (ARTIFACTS / "host").mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "host" / "startup.json").write_text(
        json.dumps({"startup_seconds": round(server.startup_seconds, 2), "idle_rss_bytes": server.rss_bytes()})
    )
    try:
        image = comfy_host.write_test_image(base / "fixtures" / "mova_first_frame.png", 64, 48)
        session.images["first_frame"] = session.upload_image(image)
        yield session
    finally:
        server.stop()
        (ARTIFACTS / "host").mkdir(parents=True, exist_ok=True)
        if server.log_path.exists():
            shutil.copyfile(server.log_path, ARTIFACTS / "host" / "comfyui.log")


@pytest.fixture(scope="session")
def mova_checkpoint(comfy) -> str:
    """Name (for the loader's checkpoint input) of a tiny random-weight MOVA checkpoint.

    Written once per session with ``python -m mova_model tiny-checkpoint DIR`` into the
    server's ``models/mova/mova-tiny``.
    """
    dest = comfy.server.models_dir / "mova" / TINY_CHECKPOINT_NAME
    try:
        comfy_host.write_tiny_checkpoint(comfy.server.python, REPO_ROOT, dest)
    except comfy_host.HostError as err:
        pytest.fail(str(err), pytrace=False)
    return TINY_CHECKPOINT_NAME
