"""In-process access to the pack's node modules with ComfyUI 0.3.75's own modules importable (no server).

ComfyUI is imported as the host README describes (its folder on `sys.path`, argument parsing off, `--cpu`).
The pack is imported as a package named `comfyui_mova` from the repository root, the way ComfyUI imports a
custom-node folder, so the nodes' relative imports (`from ..mova_model ...`) resolve as in production.
"""
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "comfyui_mova"


def _import_comfy() -> None:
    comfy_dir = Path(os.environ.get("MOVA_HOST_VENV") or sys.prefix) / "comfyui"
    if not (comfy_dir / "main.py").is_file():
        message = f"ComfyUI not installed in {comfy_dir} (run scripts/install_host.sh)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    if str(comfy_dir) not in sys.path:
        sys.path.append(str(comfy_dir))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = True


def load_node_module(name: str):
    """`comfyui_mova.nodes.<name>`, importing ComfyUI and the pack first."""
    _import_comfy()
    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_NAME, REPO_ROOT / "__init__.py",
                                                      submodule_search_locations=[str(REPO_ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{PACK_NAME}.nodes.{name}")


@pytest.fixture(scope="session")
def node_module():
    """`node_module("prompt")` -> the imported `comfyui_mova.nodes.prompt` module."""
    return load_node_module


@pytest.fixture(scope="module")
def handle(node_module, tmp_path_factory):
    """A MOVA model handle on a tiny checkpoint, as the Loader hands it on (one per test module)."""
    from mova_model.checkpoint.tiny import write_tiny_checkpoint

    node_module("types")  # imports the pack as ComfyUI does; the nodes see `comfyui_mova.mova_model` classes
    MovaPipeline = importlib.import_module(f"{PACK_NAME}.mova_model.sampling.pipeline").MovaPipeline
    folder = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_mova") / "MOVA-tiny")
    return node_module("types").MovaModelHandle(MovaPipeline.from_pretrained(folder), "tiny")


@pytest.fixture()
def hidden_inputs(node_module, monkeypatch):
    """Outside the executor a V3 node's hidden inputs are unset; give the sampling nodes a node id of None."""
    from types import SimpleNamespace

    for module, name in (("sampler", "MovaJointSampler"), ("extend", "MovaExtend")):
        monkeypatch.setattr(getattr(node_module(module), name), "hidden", SimpleNamespace(unique_id=None), raising=False)
