"""A folder nothing can be written into, for the tests of read-only datasets and destinations.

Permission bits do not stop root (CI and these machines run tests as root), so as root the folder is made
immutable (`chattr +i`, which root obeys); without that the test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest


def _writable(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        return False
    probe.unlink()
    return True


@contextlib.contextmanager
def read_only_folder(folder: Path):
    """Make the existing `folder` read-only for every process (this one and a ComfyUI server) while inside."""
    folder = Path(folder)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = lambda: folder.chmod(0o755)  # noqa: E731
    else:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make a folder read-only as root here (chattr +i: {done.stderr.strip()})")
        undo = lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)  # noqa: E731
    try:
        if _writable(folder):
            pytest.skip(f"{folder} stays writable here; the read-only case cannot be tested")
        yield folder
    finally:
        undo()
