"""A GGUF checkpoint through the real ComfyUI 0.3.75 server: made with `python -m mova_model quantize --format
gguf`, listed by the Loader like any folder, its plan output naming the GGUF components and types, and the
shipped I2VA workflow writing its mp4 from it."""
import subprocess

import pytest

from host_fixtures import REPO_ROOT
from host_workflows import TINY, load_api, node_of, nodes_of, patch_for_speed, text_of
from mova_model.media.av_io import probe_media

GGUF_NAME = "mova-tiny-gguf-q8"


@pytest.fixture(scope="module")
def gguf_checkpoint(comfy, mova_checkpoint) -> str:
    models = comfy.server.models_dir / "mova"
    if not (models / GGUF_NAME / "model_index.json").is_file():
        proc = subprocess.run([str(comfy.server.python), "-m", "mova_model", "quantize", str(models / mova_checkpoint),
                               str(models / GGUF_NAME), "--format", "gguf", "--type", "Q8_0"],
                              cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return GGUF_NAME


def test_i2va_runs_on_a_gguf_checkpoint(comfy, gguf_checkpoint):
    options = comfy.object_info("MovaLoader")["MovaLoader"]["input"]["required"]["checkpoint"]
    choices = options[0] if isinstance(options[0], list) else options[1].get("options", [])
    assert gguf_checkpoint in choices
    wf = patch_for_speed(load_api("i2va"), gguf_checkpoint, prefix="mova_test/gguf_i2va")
    result = comfy.run(wf, timeout=300)
    assert result.status == "success", f"{result.error}\n{comfy.server.log_tail(30)}"
    (video,) = [p for p in result.outputs if p.suffix == ".mp4"]
    info = probe_media(video)
    assert info.frames == TINY["frames"] and (info.width, info.height) == (TINY["width"], TINY["height"])
    assert info.audio_codec is not None and info.audio_seconds > 0
    loader = node_of(wf, "MovaLoader")
    plan = next(nid for nid in nodes_of(wf, "PreviewAny") if wf[nid]["inputs"]["source"][0] == loader)
    text = text_of(result, plan)
    for component in ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge"):
        assert f"{component}: GGUF" in text, text
    assert "Q8_0" in text and "F32" in text
