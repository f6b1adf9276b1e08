"""The shipped MOVA workflows in the real ComfyUI frontend (headless Chromium, tests/browser/driver.mjs).

Every workflow in workflows/api (and every UI-format copy in workflows/, when there are any) loads with no
missing node type and no node drawn as errored; the patched tiny versions run when queued from the page
(``app.queuePrompt``, the Run button's code path) and write their mp4. Screenshots and driver reports go to
tests/artifacts/browser/.
"""
import pytest

from host_fixtures import REPO_ROOT
from host_workflows import (API_DIR, LONG, SHIPPED, TINY, load_api, node_of, output_files, patch_for_speed, upload_media,
                            video_files)
from mova_model.media.av_io import probe_media

# Workflow files of this pack's generation graphs (the prompt_* ones belong to the prompt nodes' tests).
API_FILES = sorted(p for p in API_DIR.glob("mova_*.json") if "prompt" not in p.name)
UI_FILES = sorted(p for p in (REPO_ROOT / "workflows").glob("*.json") if "prompt" not in p.name)


@pytest.fixture(scope="module")
def media(comfy, tmp_path_factory):
    """The inputs the shipped workflows name (first frame, voice WAV, clip mp4) uploaded to input/."""
    return upload_media(comfy, tmp_path_factory.mktemp("media"))


def test_every_shipped_generation_workflow_is_covered():
    assert {p.name for p in API_FILES} == {f"mova_{name}_api.json" for name in SHIPPED + LONG}


@pytest.mark.parametrize("path", API_FILES + UI_FILES, ids=lambda p: p.relative_to(REPO_ROOT / "workflows").as_posix())
def test_shipped_workflow_loads_without_missing_or_red_nodes(frontend, media, path):
    name = "load_" + path.stem
    report = frontend.check(path, name, timeout=90)
    assert report["missing_node_types"] == [], report
    assert report["errored_nodes"] == [], report
    assert report["page_errors"] == [], report
    expected = len(load_api(path.stem.removeprefix("mova_").removesuffix("_api"))) if path.parent == API_DIR else None
    if expected is not None:
        assert report["node_count"] == expected, report
    assert report["exit_code"] == 0, report


@pytest.mark.parametrize("name", SHIPPED)
def test_tiny_workflow_runs_when_queued_from_the_page(comfy, mova_checkpoint, frontend, media, name):
    # A seed no host test uses, so nothing is served from ComfyUI's cache.
    wf = patch_for_speed(load_api(name), mova_checkpoint, seed=5150 + SHIPPED.index(name),
                         prefix=f"mova_test/browser_{name}")
    before = video_files(output_files(comfy))
    report = frontend.check(wf, f"queued_{name}", queue=True, timeout=240)
    assert report["missing_node_types"] == [] and report["errored_nodes"] == [], report
    queue = report["queue"]
    assert queue["status"] == "success", report
    assert queue["progress_events"] >= TINY["steps"], report
    assert node_of(wf, "MovaMux") in queue["executed_nodes"], report
    assert report["exit_code"] == 0, report
    new = sorted(video_files(output_files(comfy)) - before)
    assert len(new) == 1 and new[0].name.startswith(f"browser_{name}"), new
    info = probe_media(comfy.server.base / "output" / new[0])
    assert info.frames == TINY["frames"] and (info.width, info.height) == (TINY["width"], TINY["height"])
    assert info.audio_codec == "aac"
