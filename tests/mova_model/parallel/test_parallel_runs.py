"""CFG-parallel and Ulysses runs on CPU with gloo (127.0.0.1), each rank a process started as torchrun would.

Reference = the same script in one process without `--parallel` (one thread everywhere). CFG-parallel must be
bit-identical (each branch is computed by the same code on the same inputs, only on another rank); Ulysses
changes matmul shapes and adds a masked softmax for padded streams, so it is compared with a tolerance
(measured: max |diff| 7e-6..1e-5 on latents of magnitude ~4 after 2 steps, fp32).
"""
import torch
import pytest
from safetensors.torch import load_file

from parallel_launch import launch
from mova_model.checkpoint.tiny import TinySpec, write_tiny_checkpoint

STEPS = 2
ULYSSES_TOL = dict(rtol=1e-4, atol=1e-4)
SIX_HEADS = TinySpec(video_heads=6, audio_dim=48, audio_heads=6, bridge_head_dim=8)
"""Every attention of this tiny model has 6 heads, so Ulysses 2 and 3 are allowed. Its test clip has 8 video
tokens and 63 audio tokens: Ulysses 2 pads the audio stream, Ulysses 3 pads the video stream."""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    return {"tiny": write_tiny_checkpoint(root / "tiny"), "six": write_tiny_checkpoint(root / "six", spec=SIX_HEADS),
            "out": root}


def run(checkpoints, name, world, split, guidance="text", extra=()):
    out = checkpoints["out"] / f"{name}.safetensors"
    results = launch(world, [checkpoints["tiny" if "six" not in name else "six"], out, "--split", split,
                             "--guidance", guidance, "--steps", STEPS, *extra])
    codes = [code for code, _ in results]
    assert codes == [0] * world, "\n".join(err[-3000:] for _, err in results)
    return load_file(str(out))


def assert_equal(a, b):
    for key in ("video", "audio"):
        assert torch.equal(a[key], b[key]), f"{key}: max diff {(a[key] - b[key]).abs().max().item()}"


def test_cfg_parallel_2_ranks_equals_one_process(checkpoints):
    ref = run(checkpoints, "ref_text", 1, "none")
    assert_equal(run(checkpoints, "cfg2_text", 2, "cfg"), ref)


def test_cfg_parallel_3_ranks_dual_cfg_equals_one_process(checkpoints):
    ref = run(checkpoints, "ref_dual", 1, "none", "dual")
    assert_equal(run(checkpoints, "cfg3_dual", 3, "cfg", "dual"), ref)


@pytest.fixture(scope="module")
def six_ref(checkpoints):
    return run(checkpoints, "six_ref", 1, "none")


@pytest.mark.parametrize("world", [2, 3])
def test_ulysses_within_fp32_tolerance_with_padding(checkpoints, six_ref, world):
    got = run(checkpoints, f"six_u{world}", world, "ulysses")
    for key in ("video", "audio"):
        torch.testing.assert_close(got[key], six_ref[key], **ULYSSES_TOL)
        assert not torch.equal(got[key], torch.zeros_like(got[key]))


def test_cfg_times_ulysses_4_ranks(checkpoints, six_ref):
    got = run(checkpoints, "six_cfg2u2", 4, "cfg+ulysses")
    for key in ("video", "audio"):
        torch.testing.assert_close(got[key], six_ref[key], **ULYSSES_TOL)


def test_ulysses_with_collectives_waited_as_on_gpus(checkpoints, six_ref):
    """Host-ahead waiting (untimed waits, one settle per step: what NCCL ranks do) gives the same latents."""
    got = run(checkpoints, "six_u2_ahead", 2, "ulysses", extra=["--host-ahead"])
    for key in ("video", "audio"):
        torch.testing.assert_close(got[key], six_ref[key], **ULYSSES_TOL)


@pytest.mark.parametrize("hang, split, ahead", [(False, "cfg", False), (True, "cfg", False), (False, "ulysses", True)],
                         ids=["killed", "hung", "killed-host-ahead"])
def test_lost_rank_gives_a_clear_error_on_rank_0_within_the_timeout(checkpoints, hang, split, ahead):
    timeout = 8.0
    out = checkpoints["out"] / f"lost_{hang}_{split}.safetensors"
    extra = ["--timeout", timeout, "--kill-at-step", 0, "--steps", 3] + (["--hang"] if hang else []) \
        + (["--host-ahead"] if ahead else [])
    ckpt = checkpoints["six" if split == "ulysses" else "tiny"]
    results = launch(2, [ckpt, out, "--split", split, *extra], deadline_s=120 + 3 * timeout)
    assert results[0][0] == 3, results[0][1][-3000:]
    seconds, message = (out.parent / (out.name + ".error")).read_text().split("\n", 1)
    assert float(seconds) < timeout + 5.0
    group = "CFG-parallel" if split == "cfg" else "sequence-parallel"
    assert f"rank 0 got no answer from the {group} group" in message
    assert "at step 2" in message and "another rank died, hung or was stopped" in message
    assert not out.exists()
