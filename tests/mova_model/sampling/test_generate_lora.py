"""`generate --lora PATH[,strength=S][,expert=high|low|both][,allow_partial=1]` (repeatable): the same latents as
the patched pipeline in-process; bad specs and refused files are explained and write nothing."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from mova_model.__main__ import main
from mova_model.network.lora import LoraPatch
from mova_model.sampling.generate import GenerateRequest, generate
from wan_lora_files import expert_state, random_wan_lora, shapes_of, write

BASE = ["--prompt", "a bell rings", "--size", "32x32", "--frames", "5", "--fps", "8", "--steps", "2", "--seed", "4",
        "--cfg", "1.0"]


@pytest.fixture(scope="module")
def wan_files(tiny_checkpoint_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    shapes = shapes_of(expert_state(tiny_checkpoint_dir, "video_dit"))
    write(random_wan_lora(shapes, seed=7), folder / "high.safetensors", "kohya")
    write(random_wan_lora(shapes, seed=8), folder / "low.safetensors", "diffusers")
    tensors = load_file(str(folder / "high.safetensors"))
    tensors["lora_unet_blocks_0_cross_attn_v_img.lora_down.weight"] = torch.zeros(4, 48)
    save_file(tensors, str(folder / "i2v.safetensors"))
    return folder


def _latents(capsys, tmp_path, checkpoint, name, *extra):
    out, lat = tmp_path / f"{name}.mp4", tmp_path / f"{name}.safetensors"
    code = main(["generate", str(checkpoint), *BASE, "--out", str(out), "--save-latents", str(lat), *map(str, extra)])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    return load_file(str(lat))["video"]


def test_lora_options_match_the_patched_pipeline(tiny_checkpoint_dir, tiny_pipe, wan_files, tmp_path, capsys):
    base = _latents(capsys, tmp_path, tiny_checkpoint_dir, "base")
    zero = _latents(capsys, tmp_path, tiny_checkpoint_dir, "zero", "--lora", f"{wan_files / 'high.safetensors'},strength=0")
    assert torch.equal(zero, base)
    pair = _latents(capsys, tmp_path, tiny_checkpoint_dir, "pair",
                    "--lora", f"{wan_files / 'high.safetensors'},expert=high,strength=0.5",
                    "--lora", f"{wan_files / 'low.safetensors'},expert=low")
    pipe = tiny_pipe.with_lora(LoraPatch(tiny_pipe.load_lora(wan_files / "high.safetensors", expert="high"), 0.5))
    pipe = pipe.with_lora(LoraPatch(tiny_pipe.load_lora(wan_files / "low.safetensors", expert="low")))
    request = GenerateRequest(prompts=["a bell rings"], width=32, height=32, frames=5, fps=8.0, steps=2, seed=4,
                              out=tmp_path / "unused.mp4", cfg=1.0)
    assert torch.equal(pair, generate(pipe, request).video.float())
    assert not torch.allclose(pair, base, atol=1e-3)
    partial = _latents(capsys, tmp_path, tiny_checkpoint_dir, "partial",
                       "--lora", f"{wan_files / 'i2v.safetensors'},expert=high,strength=0.5,allow_partial=1")
    high = _latents(capsys, tmp_path, tiny_checkpoint_dir, "high", "--lora", f"{wan_files / 'high.safetensors'},expert=high,strength=0.5")
    assert torch.equal(partial, high)


@pytest.mark.parametrize("spec, message", [
    ("missing.safetensors", "does not exist"),
    ("{high},weight=2", "options are strength=S, expert=high|low|both"),
    ("{high},expert=middle", "expert must be one of both, high, low"),
    ("{high},strength=x", "strength must be a number"),
    ("{i2v}", "Wan 2.1 image-to-video"),
])
def test_bad_lora_specs_are_explained_and_write_nothing(tiny_checkpoint_dir, wan_files, tmp_path, capsys, spec, message):
    spec = spec.format(high=wan_files / "high.safetensors", i2v=wan_files / "i2v.safetensors")
    code = main(["generate", str(tiny_checkpoint_dir), *BASE, "--out", str(tmp_path / "x.mp4"), "--lora", spec])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not list(tmp_path.iterdir())
