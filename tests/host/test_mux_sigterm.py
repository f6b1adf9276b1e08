"""SIGTERM while MOVA Mux writes, then a restart (real ComfyUI 0.3.75, its own server: this one is killed).

Issue 9: a server killed mid-write left ``.<name>.<random>.partial.mp4`` in the output folder for good
(unreadable, surviving the restart), against the README's "never a partial file". A killed process cannot
clean up, so the next write into that folder must remove what the dead process left.
"""
import os
import signal
import time

import comfy_host

from host_fixtures import REPO_ROOT, host_venv

SUBFOLDER = "mova_sigterm"


def _mux_workflow(frames: int, size: int, prefix: str) -> dict:
    """Noisy frames (slow enough to encode that the kill lands mid-write) straight into MOVA Mux."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": frames, "color": 0}},
        "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": 1, "strength": 0.8}},
        "3": {"class_type": "MovaMux", "inputs": {"frames": ["2", 0], "fps": 24.0, "filename_prefix": prefix}},
    }


def _partials(folder) -> list:
    return sorted(p.name for p in folder.glob("*.partial.mp4"))


def test_partial_file_of_a_killed_server_is_removed_on_the_next_run(tmp_path):
    base = tmp_path / "comfy"
    out = base / "output" / SUBFOLDER
    server = comfy_host.ComfyServer(venv=host_venv(), base=base, packs=[REPO_ROOT])
    server.start(timeout=180)
    try:
        client = comfy_host.ComfyClient(server.url)
        client.queue_prompt(_mux_workflow(frames=600, size=128, prefix=f"{SUBFOLDER}/long"))
        deadline = time.monotonic() + 120
        while not _partials(out):
            assert time.monotonic() < deadline, f"Mux never started writing:\n{server.log_tail()}"
            assert not list(out.glob("long_*.mp4")), "the write finished before the kill (raise the frame count)"
            time.sleep(0.02)
        time.sleep(0.3)
        os.kill(server.pid, signal.SIGTERM)
        server.process.wait(timeout=60)
    finally:
        server.stop()
    left = _partials(out)
    assert left, "the kill did not land during the write (raise the frame count)"
    assert not list(out.glob("long_*.mp4"))

    restarted = comfy_host.ComfyServer(venv=host_venv(), base=base, packs=[REPO_ROOT])
    restarted.start(timeout=180)
    try:
        result = comfy_host.ComfyClient(restarted.url).run(
            _mux_workflow(frames=5, size=32, prefix=f"{SUBFOLDER}/short"), timeout=120)
        assert result.status == "success", result.error
        log = restarted.log_text()
    finally:
        restarted.stop()
    assert _partials(out) == [], f"left after the next run: {_partials(out)}"
    assert [p.name for p in out.glob("*.mp4")] == ["short_00001_.mp4"]
    assert f"removed {out / left[0]}: an unfinished mp4 left by an interrupted write" in log
