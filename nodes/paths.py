"""The ``mova`` model folder: where MOVA checkpoints live inside a ComfyUI install.

A MOVA checkpoint is a folder in the official layout (``model_index.json`` plus one
sub-folder per component), so the ``mova`` folder lists directories, not files:
``<ComfyUI models dir>/mova/<checkpoint name>/model_index.json``.
"""
import logging
import os

import folder_paths

FOLDER_NAME = "mova"
INDEX_FILE = "model_index.json"

logger = logging.getLogger(__name__)


def register_model_folder() -> str:
    """Register ``models/mova`` with ComfyUI's ``folder_paths`` (idempotent).

    Also honours ``mova:`` entries of ``extra_model_paths.yaml`` (ComfyUI adds those to the
    same folder name). Returns the default folder path. No file-extension filter applies:
    entries are checkpoint folders.
    """
    default = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    folder_paths.add_model_folder_path(FOLDER_NAME, default, is_default=True)
    return default


def checkpoint_folders() -> list[str]:
    """Names of the checkpoint folders (those holding a ``model_index.json``), sorted.

    Looks at every path registered for ``mova``; the first path wins on duplicate names.
    """
    names = []
    for root in folder_paths.get_folder_paths(FOLDER_NAME):
        if not os.path.isdir(root):
            continue
        for entry in sorted(os.listdir(root)):
            if os.path.isfile(os.path.join(root, entry, INDEX_FILE)) and entry not in names:
                names.append(entry)
    return sorted(names)


def checkpoint_path(name: str) -> str:
    """Absolute path of the checkpoint folder ``name``; ``ValueError`` when it is not found."""
    if not name or os.path.basename(name) != name or name in (".", ".."):
        raise ValueError(f"not a checkpoint folder name: {name!r}")
    for root in folder_paths.get_folder_paths(FOLDER_NAME):
        candidate = os.path.join(root, name)
        if os.path.isfile(os.path.join(candidate, INDEX_FILE)):
            return candidate
    searched = ", ".join(folder_paths.get_folder_paths(FOLDER_NAME))
    raise ValueError(f"MOVA checkpoint {name!r} not found (looked for {name}/{INDEX_FILE} in: {searched})")


NODES = []
