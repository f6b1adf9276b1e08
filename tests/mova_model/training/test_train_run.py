"""Training runs on the tiny checkpoint: the validation loss falls, the LoRA loads and changes sampling,
strength 0 is the base, an interrupted + resumed run equals an uninterrupted one, bad input writes nothing."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mova_model.network.lora import LoraPatch, load_lora
from mova_model.sampling.guidance import GuidanceConfig
from mova_model.sampling.pipeline import MovaPipeline
from mova_model.training.files import read_lora_metadata, state_path_for
from mova_model.training.trainer import LoraTrainer, TrainingError, train_lora

from training_clips import small_settings, write_clip

ONE_PASS = GuidanceConfig(text_scale=1.0, bridge_scale=1.0)


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def full_run(tiny_checkpoint_dir, clip_dataset, encode_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "lora.safetensors"
    result = train_lora(tiny_checkpoint_dir, clip_dataset, out, small_settings(official_pair=True), cache_dir=encode_cache)
    return result


def test_validation_loss_falls_on_one_clip(tiny_checkpoint_dir, tmp_path, encode_cache):
    data = tmp_path / "one"
    data.mkdir()
    write_clip(data / "only.mp4", seed=3)
    result = train_lora(tiny_checkpoint_dir, data, tmp_path / "one.safetensors",
                        small_settings(steps=8, experts="high"), cache_dir=encode_cache)
    assert result.val_loss_after < result.val_loss_before * 0.97, (result.val_loss_before, result.val_loss_after)


def test_trained_lora_file_loads_and_changes_sampling(full_run, tiny_pipe, tiny_cond):
    meta = read_lora_metadata(full_run.lora_path)
    assert meta["rank"] == "4" and meta["steps"] == "4" and meta["dataset_size"] == "2" and meta["experts"] == "both"
    weights = load_lora(full_run.lora_path)
    assert set(weights.pairs) == {"video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge"}
    assert all(torch.count_nonzero(b) for pairs in weights.pairs.values() for _, b in pairs.values())
    official = load_lora(full_run.lora_path.with_name("lora_official"))
    assert official.rank == 4 and official.num_tensors() == weights.num_tensors()
    base = tiny_pipe.sample(tiny_cond, seed=5, steps=2, guidance=ONE_PASS)
    lora = tiny_pipe.with_lora(LoraPatch(weights, 1.0)).sample(tiny_cond, seed=5, steps=2, guidance=ONE_PASS)
    zero = tiny_pipe.with_lora(LoraPatch(weights, 0.0)).sample(tiny_cond, seed=5, steps=2, guidance=ONE_PASS)
    assert not torch.equal(base.video, lora.video) and not torch.equal(base.audio, lora.audio)
    assert torch.equal(base.video, zero.video) and torch.equal(base.audio, zero.audio)


def test_interrupt_keeps_the_last_step_and_resume_equals_an_uninterrupted_run(full_run, tiny_checkpoint_dir,
                                                                               clip_dataset, encode_cache, tmp_path):
    out = tmp_path / "lora.safetensors"

    def stop_after_two(progress):
        if progress.phase == "train" and progress.step == 2 and progress.loss is not None:
            raise Stop()

    with pytest.raises(Stop):
        LoraTrainer(tiny_checkpoint_dir, clip_dataset, out, small_settings(official_pair=True), cache_dir=encode_cache,
                    progress=stop_after_two).run()
    assert read_lora_metadata(out)["steps"] == "2"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    resumed = train_lora(tiny_checkpoint_dir, clip_dataset, out, small_settings(official_pair=True),
                         cache_dir=encode_cache, resume=state_path_for(out))
    assert resumed.steps == 4 and [s for s, _ in resumed.losses] == [1, 2, 3, 4]
    a, b = load_file(str(full_run.lora_path)), load_file(str(out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.losses == full_run.losses
    with pytest.raises(TrainingError, match="rank was 4"):
        train_lora(tiny_checkpoint_dir, clip_dataset, tmp_path / "x.safetensors", small_settings(rank=8, steps=6),
                   cache_dir=encode_cache, resume=state_path_for(out))


@pytest.mark.parametrize("change, message", [
    (dict(settings=dict(width=50)), "multiples of 16"),
    (dict(settings=dict(frames=10)), "4k\\+1"),
    (dict(settings=dict(steps=0)), "steps must be at least 1"),
    (dict(settings=dict(experts="middle")), "experts must be one of"),
    (dict(settings=dict(targets="no_such_layer")), "match no Linear"),
    (dict(out="lora.pt"), "must end in .safetensors"),
    (dict(dataset="missing"), "folder not found"),
    (dict(dataset="empty"), "no usable clip"),
    (dict(dataset="bad"), "silent.mp4: no audio track"),
    (dict(checkpoint="missing"), "checkpoint .*folder not found"),
    (dict(init_lora="nope.safetensors"), "continue-from LoRA"),
    (dict(resume="nope.state.safetensors"), "not found"),
])
def test_bad_input_gives_a_message_and_writes_nothing(change, message, tiny_checkpoint_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    write_clip(tmp_path / "bad" / "silent.mp4", audio_rate=None)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    kwargs = {k: str(tmp_path / v) for k, v in change.items() if k in ("init_lora", "resume")}
    dataset = tmp_path / change.get("dataset", "bad")
    if "dataset" not in change:
        dataset = tmp_path / "good"
        dataset.mkdir()
        write_clip(dataset / "ok.mp4")
    with pytest.raises(TrainingError, match=message):
        train_lora(tmp_path / change["checkpoint"] if "checkpoint" in change else tiny_checkpoint_dir, dataset,
                   out_dir / change.get("out", "lora.safetensors"), small_settings(**change.get("settings", {})),
                   cache_dir=tmp_path / "cache", **kwargs)
    assert list(out_dir.iterdir()) == []


def test_cli_prints_the_result_line_last(tiny_checkpoint_dir, clip_dataset, encode_cache, tmp_path, repo_root):
    out = tmp_path / "cli.safetensors"
    proc = subprocess.run([sys.executable, "-m", "mova_model", "train", str(tiny_checkpoint_dir), str(clip_dataset),
                           "--out", str(out), "--steps", "2", "--size", "48x32", "--frames", "9", "--fps", "8",
                           "--rank", "2", "--alpha", "2", "--lr", "1e-2", "--experts", "low", "--val-items", "1",
                           "--cache-dir", str(encode_cache), "--export-format", "comfy"],
                          capture_output=True, text=True, cwd=repo_root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    *before, last = proc.stdout.strip().splitlines()
    assert last.startswith("trained: steps=2 val_loss_before=") and last.endswith(f"lora={out}")
    trained = load_lora(out)
    assert trained.rank == 2
    # --export-format comfy: the trained (low-noise) expert in ComfyUI-native naming beside it, metadata kept
    exported = tmp_path / "cli_low_noise.safetensors"
    assert before[-1] == f"exported: {exported}" and not (tmp_path / "cli_high_noise.safetensors").exists()
    comfy = MovaPipeline.from_pretrained(tiny_checkpoint_dir).load_lora(exported, expert="low")
    assert comfy.format == "ComfyUI native (prefix 'diffusion_model.')" and comfy.metadata["steps"] == "2"
    assert comfy.metadata["rank"] == "2" and comfy.metadata["mova_component"] == "video_dit_2"
    for path, (down, up) in trained.pairs["video_dit_2"].items():
        assert torch.equal(comfy.pairs["video_dit_2"][path][0], down) and torch.equal(comfy.pairs["video_dit_2"][path][1], up)
        assert comfy.layer_scale("video_dit_2", path) == trained.base_scaling
    bad = subprocess.run([sys.executable, "-m", "mova_model", "train", str(tiny_checkpoint_dir), str(clip_dataset),
                          "--out", str(tmp_path / "x.safetensors"), "--size", "50x32"], capture_output=True, text=True,
                         cwd=repo_root, timeout=300)
    assert bad.returncode == 2 and "multiples of 16" in bad.stderr and not (tmp_path / "x.safetensors").exists()


def test_continue_from_a_trained_lora_starts_where_it_ended(full_run, tiny_checkpoint_dir, clip_dataset, encode_cache,
                                                            tmp_path):
    result = train_lora(tiny_checkpoint_dir, clip_dataset, tmp_path / "more.safetensors", small_settings(steps=1),
                        cache_dir=encode_cache, init_lora=full_run.lora_path)
    assert result.val_loss_before == full_run.val_loss_after  # same validation set, same weights


def test_accumulation_alternates_experts_per_micro_step(tiny_checkpoint_dir, clip_dataset, encode_cache, tmp_path):
    out = tmp_path / "acc.safetensors"
    train_lora(tiny_checkpoint_dir, clip_dataset, out, small_settings(steps=1, accumulation=2), cache_dir=encode_cache)
    weights = load_lora(out)
    for expert in ("video_dit", "video_dit_2"):  # micro-steps 0 and 1 of the one optimizer step: both trained
        assert all(torch.count_nonzero(b) for _, b in weights.pairs[expert].values()), expert
