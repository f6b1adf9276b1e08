"""The pack's root __init__.py imports without ComfyUI and then offers no entry point."""
import subprocess
import sys
import tomllib

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location(
    "mova_pack_probe", sys.argv[1] + "/__init__.py", submodule_search_locations=[sys.argv[1]])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
print(module.__version__, hasattr(module, "comfy_entrypoint"), "comfy_api" in sys.modules)
"""


def test_root_package_imports_without_comfyui():
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO_ROOT)], capture_output=True, text=True, check=True, cwd="/"
    ).stdout.split()
    with open(REPO_ROOT / "pyproject.toml", "rb") as fh:
        version = tomllib.load(fh)["project"]["version"]
    assert out == [version, "False", "False"]
