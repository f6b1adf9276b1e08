"""CFG-parallel generation on a GGUF checkpoint: `torchrun --nproc-per-node 2 ... --parallel cfg` (gloo, CPU)
gives the one-process latents bit for bit; each rank reads the same GGUF files and dequantizes per layer."""
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from mova_model.checkpoint.tiny import TinySpec, write_tiny_checkpoint
from mova_model.memory.quantize import quantize_checkpoint
from parallel_launch import REPO, free_port

CLIP = ["--prompt", "a dog barks", "--size", "32x32", "--frames", "5", "--fps", "8", "--steps", "2", "--seed", "5"]


def _generate(checkpoint, out_dir, name, ranks=0, extra=()):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    args = [str(checkpoint), *CLIP, "--out", str(out_dir / f"{name}.mp4"),
            "--save-latents", str(out_dir / f"{name}.safetensors"), *extra]
    launcher = (["-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-addr", "127.0.0.1",
                 "--master-port", str(free_port())] if ranks else [])
    return subprocess.run([sys.executable, *launcher, "-m", "mova_model", "generate", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_cfg_parallel_on_a_gguf_checkpoint_equals_one_process(tmp_path):
    source = write_tiny_checkpoint(tmp_path / "tiny", spec=TinySpec(video_dim=64, audio_dim=64))
    checkpoint = tmp_path / "q8"
    quantize_checkpoint(source, checkpoint, format_name="gguf", gguf_type="Q8_0")
    one = _generate(checkpoint, tmp_path, "one")
    two = _generate(checkpoint, tmp_path, "two", ranks=2, extra=["--parallel", "cfg"])
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(str(tmp_path / "one.safetensors")), load_file(str(tmp_path / "two.safetensors"))
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["audio"], b["audio"])
