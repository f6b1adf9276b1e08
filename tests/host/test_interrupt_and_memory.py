"""Cancelling a MOVA run with ``POST /interrupt`` and the server's memory over many prompts (real ComfyUI 0.3.75).

The interrupt test renders a clip big enough that one step of the tiny checkpoint takes a moment (so the
interrupt lands mid-run), interrupts after the first progress message and checks the run ends within one
more step, writes nothing, and releases the model (the sampler's ``pipeline.release_all()``, seen in the
server log as ``released audio_dit`` / ``released dual_tower_bridge``, modules that a finished run keeps).
The memory test queues 20 cheap prompts in a row and compares the server's RSS before and after. The unload
test runs a workflow, sends ``POST /free {"unload_models": true}`` (the frontend's "Unload models") and checks
ComfyUI's model management released MOVA's modules (the server log names them and the megabytes), then that
the next run rebuilds them and succeeds.
"""
import json
import re
import time

import pytest

from host_fixtures import ARTIFACTS
from host_workflows import TINY, load_api, node_of, output_files, patch_for_speed, video_files
from mova_model.media.av_io import probe_media

INTERRUPT_STEPS = 30
# Big enough that one step of the tiny DiTs takes a noticeable time on 2 CPU cores.
INTERRUPT_SIZE = {"width": 128, "height": 128, "frames": 33}
RSS_PROMPTS = 20
RSS_GROWTH_LIMIT = 0.05


def _log_since(comfy, offset: int) -> str:
    return comfy.server.log_text()[offset:]


def test_interrupt_stops_within_a_step_and_releases_the_model(comfy, mova_checkpoint):
    wf = patch_for_speed(load_api("i2va"), mova_checkpoint, steps=INTERRUPT_STEPS, seed=1234,
                         prefix="mova_test/interrupted", **INTERRUPT_SIZE)
    sampler, mux = node_of(wf, "MovaJointSampler"), node_of(wf, "MovaMux")
    before_files = output_files(comfy)
    rss_before = comfy.rss_bytes()
    log_offset = len(comfy.server.log_text())
    stamps = []
    result = comfy.run(wf, timeout=300, interrupt_after_progress=1,
                       on_event=lambda e: stamps.append((time.monotonic(), e.get("type"))))
    assert result.status == "interrupted", f"{result.status}: {result.error}\n{comfy.server.log_tail(30)}"
    progress = [e["data"] for e in result.events if e["type"] == "progress" and str(e["data"].get("node")) == sampler]
    assert progress and progress[0]["value"] == 1 and progress[0]["max"] == INTERRUPT_STEPS
    # The interrupt went out on the first progress message: at most one more step may report.
    assert len(progress) <= 2, [p["value"] for p in progress]
    assert mux not in result.executed_nodes()
    interrupted = [e for e in result.events if e["type"] == "execution_interrupted"]
    assert interrupted and str(interrupted[0]["data"]["node_id"]) == sampler
    assert output_files(comfy) == before_files  # no mp4, no partial or temporary file
    assert result.outputs == []

    log = _log_since(comfy, log_offset)
    # Modules a finished run keeps built are dropped by release_all() after the interrupt.
    assert "released audio_dit" in log and "released dual_tower_bridge" in log, log[-3000:]

    # The server is healthy afterwards: a normal run succeeds and rebuilds what was released.
    log_offset = len(comfy.server.log_text())
    follow = patch_for_speed(load_api("i2va"), mova_checkpoint, seed=4321, prefix="mova_test/after_interrupt")
    after = comfy.run(follow, timeout=300)
    assert after.status == "success", after.error
    assert "built audio_dit" in _log_since(comfy, log_offset)
    (video,) = [p for p in after.outputs if p.suffix == ".mp4"]
    assert probe_media(video).frames == TINY["frames"]
    rss_after = comfy.rss_bytes()
    (ARTIFACTS / "host").mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "host" / "interrupt.json").write_text(json.dumps({
        "progress_before_end": [p["value"] for p in progress], "steps": INTERRUPT_STEPS,
        "rss_before_bytes": rss_before, "rss_after_followup_bytes": rss_after,
        "seconds": round(result.seconds, 2), "event_times": [(round(t - stamps[0][0], 3), k) for t, k in stamps
                                                             if k != "binary"],
    }, indent=1))  # fmt: skip


def _cheap(checkpoint: str, seed: int) -> dict:
    return patch_for_speed(load_api("i2va"), checkpoint, width=64, height=64, frames=5, steps=1, seed=seed,
                           prefix="mova_test/rss")


def _wait_for(comfy, prompt_ids, timeout: float) -> dict:
    """Poll ``/history`` until every prompt has finished; -> prompt id -> history entry."""
    done, deadline = {}, time.monotonic() + timeout
    while len(done) < len(prompt_ids):
        if time.monotonic() > deadline:
            comfy.interrupt()
            pytest.fail(f"only {len(done)} of {len(prompt_ids)} prompts finished within {timeout:.0f}s")
        for pid in prompt_ids:
            if pid not in done:
                entry = comfy.history(pid)
                if entry.get("status", {}).get("completed") or entry.get("status", {}).get("status_str") == "error":
                    done[pid] = entry
        time.sleep(0.25)
    return done


def _settled_rss(comfy) -> int:
    time.sleep(1.0)
    return comfy.rss_bytes()


def test_twenty_prompts_do_not_grow_server_memory(comfy, mova_checkpoint):
    for seed in (900, 901):  # warm-up: modules built, allocator and caches at steady state
        warm = comfy.run(_cheap(mova_checkpoint, seed), timeout=300)
        assert warm.status == "success", warm.error
    rss_start = _settled_rss(comfy)
    before_videos = video_files(output_files(comfy))
    t0 = time.monotonic()
    prompt_ids = [comfy.queue_prompt(_cheap(mova_checkpoint, 1000 + i)) for i in range(RSS_PROMPTS)]
    entries = _wait_for(comfy, prompt_ids, timeout=300)
    seconds = time.monotonic() - t0
    failed = {pid: e.get("status") for pid, e in entries.items() if e.get("status", {}).get("status_str") != "success"}
    assert not failed, failed
    assert len(video_files(output_files(comfy)) - before_videos) == RSS_PROMPTS  # every prompt really ran
    rss_end = _settled_rss(comfy)
    growth = (rss_end - rss_start) / rss_start
    figures = {"prompts": RSS_PROMPTS, "rss_start_bytes": rss_start, "rss_end_bytes": rss_end,
               "rss_start_mib": round(rss_start / 2**20, 1), "rss_end_mib": round(rss_end / 2**20, 1),
               "growth_fraction": round(growth, 4), "limit_fraction": RSS_GROWTH_LIMIT, "seconds": round(seconds, 1)}
    (ARTIFACTS / "host").mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "host" / "rss.json").write_text(json.dumps(figures, indent=1))
    print(f"\nRSS over {RSS_PROMPTS} prompts: {figures}")
    assert growth < RSS_GROWTH_LIMIT, figures


def test_free_unload_models_releases_mova_and_the_next_run_rebuilds_it(comfy, mova_checkpoint):
    first = comfy.run(_cheap(mova_checkpoint, 2001), timeout=300)
    assert first.status == "success", first.error
    offset = len(comfy.server.log_text())
    status, _ = comfy.post_json("/free", {"unload_models": True})
    assert status == 200
    deadline, log = time.monotonic() + 30, ""
    while "MOVA: unloaded by ComfyUI" not in log and time.monotonic() < deadline:
        time.sleep(0.2)
        log = _log_since(comfy, offset)
    unloaded = re.search(r"MOVA: unloaded by ComfyUI \(([\d.]+) MB released on (\w+)", log)
    assert unloaded, log[-3000:]
    released = re.search(r"the host asked for memory back: released ([\w, ]+) \(", log)
    names = set(released.group(1).split(", "))
    # what a finished run keeps built includes the audio VAE (its last phase); what else depends on how much a
    # run keeps between phases
    assert "audio_vae" in names, names
    assert float(unloaded.group(1)) > 0

    offset = len(comfy.server.log_text())
    second = comfy.run(_cheap(mova_checkpoint, 2002), timeout=300)
    assert second.status == "success", second.error
    rebuilt = _log_since(comfy, offset)
    assert "built audio_dit" in rebuilt and "built video_vae" in rebuilt
    assert video_files(second.outputs)
    (ARTIFACTS / "host").mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "host" / "unload.json").write_text(json.dumps({
        "released_modules": sorted(names), "released_mb": float(unloaded.group(1)), "device": unloaded.group(2),
    }, indent=1))
