"""A folder nothing can be written into, for the tests of read-only datasets and destinations.

Permission bits do not stop root (CI and these machines run tests as root), so as root the folder is made
immutable (`chattr +i`, which root obeys). Where neither works, `try_read_only_folder` yields False (the test
goes on without that part) and `read_only_folder` skips the test with the reason.
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
def try_read_only_folder(folder: Path):
    """Make the existing `folder` read-only for every process (this one and a ComfyUI server) while inside;
    yields whether that worked (the folder is left as it was when it did not)."""
    folder = Path(folder)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = lambda: folder.chmod(0o755)  # noqa: E731
    else:
        try:
            done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        except OSError:
            done = None
        if done is None or done.returncode != 0:
            yield False
            return
        undo = lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)  # noqa: E731
    try:
        yield not _writable(folder)
    finally:
        undo()


@contextlib.contextmanager
def read_only_folder(folder: Path):
    """`try_read_only_folder`, skipping the test where a folder cannot be made read-only."""
    with try_read_only_folder(folder) as done:
        if not done:
            pytest.skip(f"{folder} cannot be made read-only here (as root this needs chattr +i)")
        yield Path(folder)
