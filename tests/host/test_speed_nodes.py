"""Speed options through a real ComfyUI 0.3.75 server: the MOVA Step Cache node feeds the sampler (threshold 0
gives the same audio as no cache; a high threshold makes the sampler report skipped passes), the Loader shows
the speed switches, and an attention backend whose package is missing fails with a message naming it."""
import re

import numpy as np
import pytest

from host_workflows import load_api, node_of, patch_for_speed

STEPS = 8


def _audio_of(result):
    import av

    (video,) = [p for p in result.outputs if p.suffix == ".mp4"]
    with av.open(str(video)) as container:
        return np.concatenate([f.to_ndarray().ravel() for f in container.decode(container.streams.audio[0])])


def _choices(spec) -> list:
    return spec[0] if isinstance(spec[0], list) else spec[1].get("options", [])


def _with_cache(checkpoint, prefix, threshold=None):
    wf = patch_for_speed(load_api("t2va"), checkpoint, seed=21, steps=STEPS, prefix=prefix)
    if threshold is not None:
        wf["50"] = {"class_type": "MovaStepCache", "inputs": {"threshold": threshold, "start_percent": 0.0}}
        wf[node_of(wf, "MovaJointSampler")]["inputs"]["step_cache"] = ["50", 0]
    return wf


def test_object_info_shows_the_speed_inputs(comfy):
    info = comfy.object_info()
    cache = info["MovaStepCache"]
    assert cache["output"] == ["MOVA_STEP_CACHE"] and cache["category"] == "MOVA/sampling"
    assert set(cache["input"]["required"]) == {"threshold", "start_percent"}
    assert info["MovaJointSampler"]["input"]["optional"]["step_cache"][0] == "MOVA_STEP_CACHE"
    loader = info["MovaLoader"]["input"]["optional"]
    assert _choices(loader["attention"]) == ["sdpa", "flash", "sage", "auto"]
    assert _choices(loader["batch_guidance"]) == ["off", "auto", "on"]
    assert {"compile_blocks", "fp8_matmul"} <= set(loader)


def test_step_cache_node_runs_and_the_sampler_reports_skips(comfy, mova_checkpoint):
    base = comfy.run(_with_cache(mova_checkpoint, "mova_test/cache_none"), timeout=300)
    zero = comfy.run(_with_cache(mova_checkpoint, "mova_test/cache_zero", 0.0), timeout=300)
    high = comfy.run(_with_cache(mova_checkpoint, "mova_test/cache_high", 1.0), timeout=300)
    assert base.status == zero.status == high.status == "success", (base.error, zero.error, high.error)
    assert np.array_equal(_audio_of(zero), _audio_of(base))  # threshold 0 = no cache
    reports = re.findall(r"step cache skipped (\d+) of (\d+) passes", comfy.server.log_text())
    assert reports, "the sampler did not report the skipped passes"
    skipped, total = (int(v) for v in reports[-1])
    assert total == 2 * STEPS and 0 <= skipped <= 2 * (STEPS - 2)
    if skipped:
        assert not np.array_equal(_audio_of(high), _audio_of(base))


def test_missing_attention_package_is_named(comfy, mova_checkpoint):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed on this host: nothing to report")
    wf = _with_cache(mova_checkpoint, "mova_test/flash_missing")
    wf[node_of(wf, "MovaLoader")]["inputs"]["attention"] = "flash"
    result = comfy.run(wf, timeout=120)
    assert result.status == "error"
    assert result.error_details.get("exception_type", "").endswith("AttentionBackendError"), result.error
    assert "pip install flash-attn" in result.error and "'sdpa'" in result.error, result.error
    assert "Traceback" not in result.error
