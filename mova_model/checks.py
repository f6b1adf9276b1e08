"""Checks of what a user names, made before any long work (issue 17, item 6): a torch device that exists here,
an output file that can be written (folder writable, name not too long, not a folder), an existing file that
must not be replaced, and the next free name beside it.

Every check raises `CheckError` (a `ValueError`) with one sentence: what was given, what is wrong and what
to do. Nothing is created on disk by a check (the write probe uses an anonymous temporary file).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

TEMP_NAME_RESERVE = 16
"""Characters a temporary file adds to the name it is written under (`atomic_write`: `.<name>.<8 hex>.tmp`)."""


class CheckError(ValueError):
    """A device or destination that cannot be used; the message says what to change."""


def check_device(text: str, what: str = "--device") -> torch.device:
    """`text` as a torch device that exists on this machine: cpu, cuda, cuda:N (N < the GPU count) or mps."""
    value = str(text or "").strip()
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise CheckError(f"{what} {value!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise CheckError(f"{what} {value}: this machine has no CUDA GPU that torch can use "
                             f"(torch {torch.__version__}{'' if torch.version.cuda else ', a build without CUDA'}); "
                             "use --device cpu")
        if (device.index or 0) >= count:
            raise CheckError(f"{what} {value}: there are {count} CUDA GPU(s) here (cuda:0 to cuda:{count - 1})")
        return device
    if device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise CheckError(f"{what} {value}: MPS is not available on this machine; use --device cpu")
        return device
    raise CheckError(f"{what} {value!r}: only cpu, cuda[:N] and mps devices are supported")


def existing_ancestor(path: Path) -> Path:
    """The nearest folder of `path` (itself included) that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def name_max(folder: Path) -> int:
    """Longest file name (bytes) the file system of `folder` allows (255 where it cannot be asked)."""
    try:
        return int(os.pathconf(str(folder), "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def check_writable_folder(folder: Path | str, what: str, named: Optional[Path | str] = None) -> Path:
    """`folder` (or, when it does not exist yet, the folder it would be created in) accepts new files.
    `named`: what the message names (default: `folder`)."""
    folder = Path(folder)
    named = folder if named is None else named
    base = existing_ancestor(folder)
    if not base.is_dir():
        raise CheckError(f"{what} {named}: {base} is a file, not a folder")
    try:  # an anonymous file: nothing appears in the folder, even when the probe is interrupted
        with tempfile.TemporaryFile(dir=str(base)):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CheckError(f"{what} {named}: cannot write in {base} ({reason}); choose a folder you can write to") from None
    return folder


def check_destination(path: Path | str, what: str, companions: Sequence[str] = (), reserve: int = TEMP_NAME_RESERVE
                      ) -> Path:
    """A file that will be written at `path`: a name the file system accepts (with `reserve` characters for
    its temporary file, and `companions`, the names of files written beside it), not a folder, and a folder
    (or the nearest existing parent, since missing folders are created) that accepts new files."""
    path = Path(path)
    _check_name_lengths(path, what, companions, reserve, "file name")
    try:
        is_folder = path.is_dir()
    except OSError as exc:
        raise CheckError(f"{what} {path}: {exc.strerror or exc}") from None
    if is_folder:
        raise CheckError(f"{what} {path} is a folder; give a file name")
    check_writable_folder(path.parent, what, named=path)
    return path


def check_destination_folder(path: Path | str, what: str, companions: Sequence[str] = ()) -> Path:
    """A folder that will be written at `path` (created, or replaced when it exists): not a file, a name the
    file system accepts (with `companions`, the names of folders written beside it), in a folder that accepts
    new entries."""
    path = Path(path)
    _check_name_lengths(path, what, companions, 0, "folder name")
    if path.exists() and not path.is_dir():
        raise CheckError(f"{what} {path} is a file; give a folder")
    check_writable_folder(path.parent, what, named=path)
    return path


def _check_name_lengths(path: Path, what: str, companions: Sequence[str], reserve: int, noun: str) -> None:
    limit = name_max(existing_ancestor(path.parent))
    for name in (path.name, *companions):
        if len(name.encode("utf-8", "surrogateescape")) + reserve > limit:
            kind = f" (with {reserve} for the temporary file)" if reserve else ""
            raise CheckError(f"{what}: the {noun} {_short(name)} is {len(name)} characters; the file system "
                             f"allows {limit} bytes per name{kind}: use a shorter name")


def existing_files(paths: Iterable[Path | str]) -> list:
    return [Path(p) for p in paths if Path(p).exists()]


def next_free_path(path: Path | str, companions_of=lambda p: (), taken: Optional[set] = None) -> Path:
    """`path` if neither it nor its companions exist, else the first free `<stem>_2<suffix>`, `_3`, ...

    `companions_of(candidate)` gives the other files a run writes beside `candidate` (they must be free too)."""
    path = Path(path)
    candidate, number = path, 1
    while existing_files([candidate, *companions_of(candidate)]) or (taken and candidate in taken):
        number += 1
        candidate = path.with_name(f"{path.stem}_{number}{path.suffix}")
    return candidate


def _short(name: str) -> str:
    return repr(name if len(name) <= 40 else name[:20] + "…" + name[-12:])
