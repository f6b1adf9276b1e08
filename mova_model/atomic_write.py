"""One way to write a file so that readers see the old file or the whole new one, never a half-written one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: Path | str, write: Callable[[str], None]) -> Path:
    """Call `write(temp_path)` on a hidden temporary file beside `path`, then rename it over `path`.

    The folder is created if needed. On any exception (interrupt included) the temporary file is deleted and
    the exception propagates, so `path` keeps its previous content or stays absent. Returns `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(handle)
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    return path
