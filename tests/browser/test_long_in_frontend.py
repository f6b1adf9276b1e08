"""The long-clip and keyframe workflows in the real ComfyUI frontend: MOVA Extend and the conditioner's
last-frame input draw without errors, and the three-segment workflow (patched to the tiny checkpoint) runs when
queued from the page and writes a clip of exactly N·F − (N−1)·K frames. (Loading every shipped API/UI file is
covered by test_workflows_in_frontend.py.)"""
from host_workflows import TINY, load_api, nodes_of, output_files, patch_for_speed, upload_media, video_files
from mova_model.media.av_io import probe_media

OVERLAP = 5


def test_three_segment_workflow_runs_when_queued_from_the_page(comfy, mova_checkpoint, frontend, tmp_path_factory):
    upload_media(comfy, tmp_path_factory.mktemp("media"))
    wf = patch_for_speed(load_api("long24"), mova_checkpoint, seed=6160, prefix="mova_test/browser_long24")
    for i, nid in enumerate(nodes_of(wf, "MovaExtend")):
        wf[nid]["inputs"].update(overlap=OVERLAP, steps=TINY["steps"], seed=6161 + i)
    before = video_files(output_files(comfy))
    report = frontend.check(wf, "queued_long24", queue=True, timeout=400)
    assert report["missing_node_types"] == [] and report["errored_nodes"] == [], report
    assert report["queue"]["status"] == "success", report
    assert report["exit_code"] == 0, report
    new = sorted(video_files(output_files(comfy)) - before)
    assert len(new) == 1 and new[0].name.startswith("browser_long24"), new
    info = probe_media(comfy.server.base / "output" / new[0])
    assert info.frames == 3 * TINY["frames"] - 2 * OVERLAP and info.audio_codec == "aac"
