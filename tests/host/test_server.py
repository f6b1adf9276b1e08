"""The pack loads into a real ComfyUI 0.3.75 and its diagnostic node runs over HTTP."""
import tomllib

import comfy_host

from host_fixtures import REPO_ROOT


def pack_version() -> str:
    with open(REPO_ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]["version"]


def test_pack_imported_without_failure(comfy):
    log = comfy.server.log_text()
    assert comfy_host.pack_import_failures(log, ["comfyui-mova"]) == []
    assert "custom_nodes/comfyui-mova" in log  # listed in ComfyUI's import-time table


def test_object_info_lists_mova_version(comfy):
    info = comfy.object_info("MovaVersion")["MovaVersion"]
    assert info["category"] == "MOVA/utils"
    assert info["output"] == ["STRING"]
    assert info["display_name"] == "MOVA Version"
    assert "MovaVersion" in comfy.object_info()


def test_mova_model_folder_registered(comfy):
    assert "mova" in comfy.get_json("/models")
    assert isinstance(comfy.get_json("/models/mova"), list)


def test_version_workflow_runs(comfy):
    workflow = {
        "1": {"class_type": "MovaVersion", "inputs": {}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    result = comfy.run(workflow, timeout=60)
    assert result.status == "success", result.error
    assert set(result.executed_nodes()) >= {"2"}
    text = "\n".join(result.ui_outputs("2")["text"])
    torch_version = comfy.system_stats()["system"]["pytorch_version"]
    assert f"ComfyUI-MOVA {pack_version()}" in text
    assert f"torch {torch_version}" in text
    assert comfy.rss_bytes() > 50 * 2**20  # a live server process with torch loaded


def test_unknown_node_is_rejected(comfy):
    result = comfy.run({"1": {"class_type": "NoSuchMovaNode", "inputs": {}}}, timeout=30)
    assert result.status == "rejected"
    assert "NoSuchMovaNode" in result.error


def test_uploaded_image_loads(comfy):
    name = comfy.images["first_frame"]
    assert name in comfy.object_info("LoadImage")["LoadImage"]["input"]["required"]["image"][0]
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "mova_harness"}},
    }
    result = comfy.run(workflow, timeout=60)
    assert result.status == "success", result.error
    assert len(result.outputs) == 1 and result.outputs[0].suffix == ".png"
    from PIL import Image

    with Image.open(result.outputs[0]) as img:
        assert img.size == (64, 48)
