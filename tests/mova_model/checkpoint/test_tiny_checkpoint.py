"""The tiny random-weight checkpoint: official layout, validation, CLI describe --check, determinism."""

import json
import subprocess
import sys

import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from mova_model.checkpoint.folder import MovaCheckpoint
from mova_model.checkpoint.configs import MovaConfigs
from mova_model.checkpoint.tiny import TinySpec, tiny_checkpoint_cli, write_tiny_checkpoint

COMPONENTS = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge", "audio_vae", "video_vae", "text_encoder")


def _tensors(folder):
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            out.update({k: handle.get_tensor(k) for k in handle.keys()})
    return out


def test_written_checkpoint_validates(tiny_checkpoint_dir):
    checkpoint = MovaCheckpoint.open(tiny_checkpoint_dir)
    assert checkpoint.validate() is checkpoint
    assert checkpoint.problems() == []
    assert MovaCheckpoint.open(tiny_checkpoint_dir, validate=True).root == tiny_checkpoint_dir


def test_describe_check_exits_zero(tiny_checkpoint_dir, repo_root):
    result = subprocess.run([sys.executable, "-m", "mova_model", "describe", str(tiny_checkpoint_dir), "--check"],
                            cwd=str(repo_root), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "video_dit" in result.stdout


def test_describe_check_fails_on_a_broken_copy(tiny_checkpoint_dir, tmp_path, repo_root):
    """The check above can fail: a copy with one weight dropped is reported with a non-zero exit."""
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint_dir, broken)
    state = _tensors(broken / "audio_dit")
    state.pop(sorted(state)[0])
    from safetensors.torch import save_file
    save_file(state, str(broken / "audio_dit" / "diffusion_pytorch_model.safetensors"))
    result = subprocess.run([sys.executable, "-m", "mova_model", "describe", str(broken), "--check"],
                            cwd=str(repo_root), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0


def test_official_layout_and_sizes(tiny_checkpoint_dir):
    spec = TinySpec()
    root = tiny_checkpoint_dir
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "MOVA" and index["boundary_ratio"] == spec.boundary_ratio
    assert index["video_dit"] == ["mova.diffusion.models.wan_video_dit", "WanModel"]
    assert sorted((root / "video_dit").glob("diffusion_pytorch_model-0000*-of-00002.safetensors"))
    weight_map = json.loads((root / "video_dit" / "diffusion_pytorch_model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(weight_map.values())) == 2
    assert (root / "text_encoder" / "model.safetensors").is_file()
    assert "encoder.embed_tokens.weight" not in _tensors(root / "text_encoder")
    configs = MovaConfigs.from_folder(root)
    assert (configs.video_dit.dim, configs.video_dit.num_layers, configs.video_dit.in_dim) == (48, 3, 12)
    assert (configs.audio_dit.dim, configs.audio_dit.in_dim) == (32, 8)
    assert configs.audio_vae.sample_rate == 16000 and configs.audio_vae.hop_length == 160
    assert configs.video_vae.z_dim == 4
    assert configs.boundary_timestep == 900.0


def test_tokenizer_appends_eos(tiny_checkpoint_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint_dir / "tokenizer"))
    ids = tokenizer("hello dog")["input_ids"]
    assert ids[-1] == 1 and 2 not in ids and len(ids) == 3


def test_same_seed_same_weights_other_seed_different(tiny_checkpoint_dir, tmp_path):
    assert tiny_checkpoint_cli([str(tmp_path / "same"), "--seed", "0"]) == 0
    write_tiny_checkpoint(tmp_path / "other", seed=1)
    for component in ("video_dit", "audio_vae"):
        reference = _tensors(tiny_checkpoint_dir / component)
        same = _tensors(tmp_path / "same" / component)
        other = _tensors(tmp_path / "other" / component)
        assert reference.keys() == same.keys() == other.keys()
        assert all(torch.equal(reference[k], same[k]) for k in reference)
        assert any(not torch.equal(reference[k], other[k]) for k in reference)
    MovaCheckpoint.open(tmp_path / "other", validate=True)
