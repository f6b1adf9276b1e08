"""Ways a user could crash or stall the server (issue 9, items 2-4), through a real ComfyUI 0.3.75 server.

- a checkpoint shard truncated between two queued runs: a readable error in the UI, the server alive, and the
  next run fine once the file is restored (it used to die with SIGBUS, the queue lost);
- a `config.json` whose layer count does not match its tensors: refused by the Loader in well under a second
  (it used to build a million-block skeleton: 15 GB in 5 minutes, deaf to /interrupt);
- a clip too large for the host's RAM: refused by the Conditioner with the memory plan's message before any
  VAE work (it used to allocate until torch's raw "DefaultCPUAllocator" error, or run the machine out of RAM).
"""
import json
import os
import shutil
import time

import pytest

from host_workflows import load_api, node_of, output_files, patch_for_speed

READABLE_ERRORS = ("InputError", "ValueError", "CheckpointError")
RAW_TORCH_WORDS = ("Traceback", "DefaultCPUAllocator", "can't allocate", "torch.", "CUDA", "out of memory")


@pytest.fixture()
def checkpoint_copy(comfy, mova_checkpoint):
    """A private copy of the tiny checkpoint under models/mova (removed afterwards): -> (name, folder)."""
    made = []

    def make(name: str):
        dest = comfy.server.models_dir / "mova" / name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(comfy.server.models_dir / "mova" / mova_checkpoint, dest)
        made.append(dest)
        return name, dest

    yield make
    for dest in made:
        shutil.rmtree(dest, ignore_errors=True)


def _readable_failure(comfy, result) -> str:
    assert result.status == "error", f"expected an error, got {result.status}: {result.error}"
    assert comfy.server.alive(), "the server died:\n" + comfy.server.log_tail(40)
    exc_type = result.error_details.get("exception_type", "")
    assert exc_type.rsplit(".", 1)[-1] in READABLE_ERRORS, (exc_type, result.error)
    message = result.error or ""
    assert message and not any(word in message for word in RAW_TORCH_WORDS), message
    return message


def test_shard_truncated_between_two_runs_is_a_readable_error_and_the_server_lives(comfy, checkpoint_copy):
    name, folder = checkpoint_copy("mova-changing")
    first = comfy.run(patch_for_speed(load_api("i2va"), name, seed=11, prefix="mova_test/changing"), timeout=300)
    assert first.status == "success", first.error

    shard = max((folder / "video_dit_2").glob("*.safetensors"), key=lambda p: p.stat().st_size)
    data = shard.read_bytes()
    os.truncate(shard, len(data) // 2)  # `truncate -s 50%`: a re-download or a full disk
    before = output_files(comfy)
    wf = patch_for_speed(load_api("i2va"), name, seed=12, prefix="mova_test/changing")
    result = comfy.run(wf, timeout=300)
    message = _readable_failure(comfy, result)
    assert "not a usable MOVA checkpoint" in message and "changed on disk" in message, message
    assert "video_dit_2" in message and shard.name in message and "truncated" in message, message
    assert output_files(comfy) == before, "a failed run wrote files"

    shard.write_bytes(data)  # restored: the next run works with the same (cached) Loader output
    after = comfy.run(patch_for_speed(load_api("i2va"), name, seed=13, prefix="mova_test/changing"), timeout=300)
    assert after.status == "success", after.error
    assert [p for p in after.outputs if p.suffix == ".mp4"]


def test_config_with_a_million_layers_is_refused_by_the_loader_in_well_under_a_second(comfy, checkpoint_copy):
    name, folder = checkpoint_copy("mova-million-layers")
    config = folder / "video_dit" / "config.json"
    data = json.loads(config.read_text())
    data["num_layers"] = 1_000_000
    config.write_text(json.dumps(data))
    wf = patch_for_speed(load_api("i2va"), name, seed=21, prefix="mova_test/million")
    loader = node_of(wf, "MovaLoader")
    stamps = {}

    def on_event(event):
        data = event.get("data") or {}
        if event["type"] == "executing" and str(data.get("node")) == loader:
            stamps.setdefault("loader", time.monotonic())
        elif event["type"] == "execution_error":
            stamps["error"] = time.monotonic()

    rss_before = comfy.rss_bytes()
    result = comfy.run(wf, timeout=120, on_event=on_event)
    message = _readable_failure(comfy, result)
    assert str(result.error_details["node_id"]) == loader
    assert "video_dit / num_layers" in message and "1000000" in message and "found 3" in message, message
    seconds = stamps["error"] - stamps["loader"]
    assert seconds < 1.0, f"the Loader took {seconds:.2f} s to refuse the config"
    assert comfy.rss_bytes() - rss_before < 200 * 2**20, "the server grew while checking the config"


def test_a_clip_too_large_for_host_ram_is_refused_by_the_conditioner_with_the_plan(comfy, mova_checkpoint):
    wf = patch_for_speed(load_api("i2va"), mova_checkpoint, width=4096, height=4096, frames=1025, seed=31,
                         prefix="mova_test/too_large")
    conditioner = node_of(wf, "MovaTextImageConditioner")
    before = output_files(comfy)
    rss_before = comfy.rss_bytes()
    result = comfy.run(wf, timeout=120)
    message = _readable_failure(comfy, result)
    assert str(result.error_details["node_id"]) == conditioner
    assert "does not fit in the memory available" in message and "4096x4096, 1025 frames" in message, message
    assert "GB available" in message and "needs" in message and "what would fit:" in message, message
    assert output_files(comfy) == before
    assert comfy.rss_bytes() - rss_before < 500 * 2**20, "the server grew before refusing the clip"


def test_interrupt_during_the_conditioners_vae_encode_stops_between_chunks(comfy, mova_checkpoint):
    """256x256x97 is 25 encoder chunks of the tiny VAE (about a minute on 2 busy cores): the interrupt sent
    while the Conditioner encodes must end the run within a few chunks, not after the whole clip."""
    wf = patch_for_speed(load_api("i2va"), mova_checkpoint, width=256, height=256, frames=97, seed=41,
                         prefix="mova_test/vae_interrupt")
    conditioner = node_of(wf, "MovaTextImageConditioner")
    log_offset = len(comfy.server.log_text())
    stamps = {}

    def on_event(event):
        data = event.get("data") or {}
        if event["type"] == "executing" and str(data.get("node")) == conditioner and "start" not in stamps:
            stamps["start"] = time.monotonic()
            # the VAE encode starts once the prompts are encoded (the text encoder is released right after)
            deadline = time.monotonic() + 60
            while "released text_encoder" not in comfy.server.log_text()[log_offset:] and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)
            stamps["interrupt"] = time.monotonic()
            comfy.interrupt()
        elif event["type"] in ("execution_interrupted", "execution_success", "execution_error"):
            stamps["end"] = time.monotonic()

    before = output_files(comfy)
    result = comfy.run(wf, timeout=300, on_event=on_event)
    assert result.status == "interrupted", f"{result.status}: {result.error}"
    interrupted = [e for e in result.events if e["type"] == "execution_interrupted"]
    assert str(interrupted[0]["data"]["node_id"]) == conditioner
    assert "released text_encoder" in comfy.server.log_text()[log_offset:]
    print(f"\ninterrupt -> end of run: {stamps['end'] - stamps['interrupt']:.2f} s")
    assert stamps["end"] - stamps["interrupt"] < 15.0, stamps
    assert output_files(comfy) == before
    assert comfy.server.alive()
