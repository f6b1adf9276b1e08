"""One way to write a file so that readers see the old file or the whole new one, never a half-written one."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Callable


def _create_temp(path: Path) -> tuple:
    """Create the empty hidden temporary file for `path`; -> (its path, the mode a plain `open()` gives a new
    file: 0666 minus the umask, 0644 usually, as ComfyUI's own outputs get)."""
    while True:
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return str(temp), stat.S_IMODE(os.stat(temp).st_mode)
        except FileExistsError:
            continue


def atomic_write(path: Path | str, write: Callable[[str], None]) -> Path:
    """Call `write(temp_path)` on a hidden temporary file beside `path`, then rename it over `path`.

    The folder is created if needed. On any exception (interrupt included) the temporary file is deleted and
    the exception propagates, so `path` keeps its previous content or stays absent. Returns `path`. The file
    gets the mode a plain `open()` would give it (0666 minus the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp, mode = _create_temp(path)
    try:
        write(temp)
        os.chmod(temp, mode)  # writers such as safetensors' `save_file` recreate the file 0600
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    return path
