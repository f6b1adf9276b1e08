"""`torchrun --nproc-per-node 2 -m mova_model generate ... --parallel ...` against one process (gloo, CPU).

--save-latents of a CFG-parallel run must equal the one-process latents bit for bit; Ulysses within the fp32
tolerance of test_parallel_runs.py; a degree the model does not allow is refused by rank 0 with the allowed list.
(The mp4 bytes are not compared: the mp4 writer is not byte-reproducible between two one-process runs either.)
"""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mova_model.checkpoint.tiny import TinySpec, write_tiny_checkpoint
from parallel_launch import REPO, free_port

CLIP = ["--prompt", "a dog barks", "--size", "32x32", "--frames", "5", "--fps", "8", "--steps", "2", "--seed", "5"]


def generate(checkpoint, out_dir, name, ranks=0, extra=()):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    args = [str(checkpoint), *CLIP, "--out", str(out_dir / f"{name}.mp4"),
            "--save-latents", str(out_dir / f"{name}.safetensors"), *extra]
    if ranks:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-addr",
               "127.0.0.1", "--master-port", str(free_port()), "-m", "mova_model", "generate", *args]
    else:
        cmd = [sys.executable, "-m", "mova_model", "generate", *args]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen_parallel")
    return root, write_tiny_checkpoint(root / "tiny"), write_tiny_checkpoint(
        root / "six", spec=TinySpec(video_heads=6, audio_dim=48, audio_heads=6, bridge_head_dim=8))


def test_torchrun_cfg_parallel_latents_equal_one_process(tiny):
    root, checkpoint, _ = tiny
    one = generate(checkpoint, root, "one")
    two = generate(checkpoint, root, "two", ranks=2, extra=["--parallel", "cfg"])
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.strip().splitlines()[-1].endswith("two.mp4")
    a, b = load_file(str(root / "one.safetensors")), load_file(str(root / "two.safetensors"))
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["audio"], b["audio"])
    assert (root / "two.mp4").stat().st_size > 0


def test_torchrun_ulysses_within_tolerance(tiny):
    root, _, six = tiny
    one = generate(six, root, "six_one")
    two = generate(six, root, "six_two", ranks=2, extra=["--parallel", "ulysses"])
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
    a, b = load_file(str(root / "six_one.safetensors")), load_file(str(root / "six_two.safetensors"))
    for key in ("video", "audio"):
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-4)


def test_torchrun_refuses_a_degree_the_heads_do_not_allow(tiny):
    root, checkpoint, _ = tiny
    run = generate(checkpoint, root, "bad", ranks=2, extra=["--parallel", "ulysses", "--parallel-timeout", "30"])
    assert run.returncode != 0
    assert "Ulysses degree 2 does not divide the head counts" in run.stderr and "allowed degrees: 1" in run.stderr
    assert not (root / "bad.mp4").exists()


def test_torchrun_cfg_parallel_unipc_restyle_equals_one_process(tiny):
    """The solver states and the restyle start are the same on every rank: CFG-parallel stays bit-equal."""
    import numpy as np

    from mova_model.media.av_io import write_mp4

    root, checkpoint, _ = tiny
    clip = write_mp4(root / "init.mp4", np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), 8.0,
                     torch.sin(torch.linspace(0, 300, 8000)).reshape(1, -1) * 0.3, 16000)
    extra = ["--solver", "unipc", "--init-video", str(clip), "--denoise", "0.7"]
    one = generate(checkpoint, root, "restyle_one", extra=extra)
    two = generate(checkpoint, root, "restyle_two", ranks=2, extra=[*extra, "--parallel", "cfg"])
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(str(root / "restyle_one.safetensors")), load_file(str(root / "restyle_two.safetensors"))
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["audio"], b["audio"])
    plain = generate(checkpoint, root, "restyle_plain")
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert not torch.equal(a["video"], load_file(str(root / "restyle_plain.safetensors"))["video"])
