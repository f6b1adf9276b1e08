"""The real frontend (1.32.9, as pinned by ComfyUI 0.3.75) shows and runs our node."""
import json

import pytest

WORKFLOW = {
    "1": {"class_type": "MovaVersion", "inputs": {}},
    "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
}


@pytest.fixture(scope="module")
def loaded(frontend, tmp_path_factory):
    """The API workflow loaded into the page once; also exported by the frontend as UI format."""
    ui_path = tmp_path_factory.mktemp("ui") / "mova_version_ui.json"
    report = frontend.check(WORKFLOW, "mova_version_loaded", export_ui=ui_path)
    return report, ui_path


def test_api_workflow_loads_without_missing_or_red_nodes(loaded):
    report, _ = loaded
    assert report["missing_node_types"] == [], report
    assert report["errored_nodes"] == [], report
    assert report["node_count"] == 2
    assert report["frontend_version"]
    assert report["exit_code"] == 0, report


def test_frontend_exports_ui_format(loaded):
    _, ui_path = loaded
    ui = json.loads(ui_path.read_text())
    assert sorted(n["type"] for n in ui["nodes"]) == ["MovaVersion", "PreviewAny"]
    assert len(ui["links"]) == 1


def test_ui_workflow_queued_from_page_runs(frontend, loaded):
    _, ui_path = loaded
    report = frontend.check(ui_path, "mova_version_queued", queue=True)
    assert report["format"] == "ui"
    assert report["queue"]["status"] == "success", report
    assert "2" in report["queue"]["executed_nodes"]
    assert report["exit_code"] == 0


def test_missing_node_type_is_reported(frontend):
    broken = dict(WORKFLOW, **{"3": {"class_type": "NoSuchMovaNode", "inputs": {}}})
    report = frontend.check(broken, "missing_node_reported")
    assert report["missing_node_types"] == ["NoSuchMovaNode"]
    assert report["exit_code"] == 3
