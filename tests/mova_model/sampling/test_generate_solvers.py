"""The generate CLI's sampler choice and restyle options: --solver / --shift / --sigmas change the run, --init-video
with --denoise restyles a clip (0 keeps it), and every bad value is one `error:` line with exit status 2."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mova_model.__main__ import main
from mova_model.media.av_io import write_mp4

BASE = ["--size", "32x32", "--frames", "5", "--fps", "8", "--steps", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def clip_mp4(tmp_path_factory):
    """9 frames at 8 fps of 48x40 (cropped and resized to 32x32) with a tone, as the user's clip."""
    path = tmp_path_factory.mktemp("init") / "clip.mp4"
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (9, 40, 48, 3), dtype=np.uint8)
    tone = torch.sin(torch.linspace(0, 700, 24000)).reshape(1, -1) * 0.3
    return write_mp4(path, frames, 8.0, tone, 24000)


@pytest.fixture(scope="module")
def silent_mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("init") / "silent.mp4"
    return write_mp4(path, np.full((5, 32, 32, 3), 90, np.uint8), 8.0)


def run(capsys, checkpoint, tmp_path, name, *extra):
    out, lat = tmp_path / f"{name}.mp4", tmp_path / f"{name}.safetensors"
    code = main(["generate", str(checkpoint), "--prompt", "a dog barks", *BASE, *map(str, extra), "--out", str(out),
                 "--save-latents", str(lat)])
    err = capsys.readouterr().err
    return code, err, (load_file(str(lat)) if code == 0 else None)


def test_solver_shift_and_sigmas_change_the_run(tiny_checkpoint_dir, tmp_path, capsys):
    runs = {}
    for name, extra in (("euler", []), ("unipc", ["--solver", "unipc"]), ("dpm", ["--solver", "dpm++"]),
                        ("shift", ["--solver", "unipc", "--shift", "2"]),
                        ("sigmas", ["--solver", "unipc", "--sigmas", "1,0.95,0.5,0"])):
        code, err, latents = run(capsys, tiny_checkpoint_dir, tmp_path, name, *extra)
        assert code == 0, err[-2000:]
        runs[name] = latents["video"]
    assert len({tuple(v.flatten().tolist()) for v in runs.values()}) == len(runs)  # five different runs


def test_init_video_denoise_0_keeps_the_clip_and_below_1_restyles_it(tiny_checkpoint_dir, clip_mp4, tmp_path, capsys):
    code, err, kept = run(capsys, tiny_checkpoint_dir, tmp_path, "kept", "--init-video", clip_mp4, "--denoise", "0")
    assert code == 0, err[-2000:]
    code, err, restyled = run(capsys, tiny_checkpoint_dir, tmp_path, "restyled", "--init-video", clip_mp4,
                              "--denoise", "0.6", "--audio-denoise", "0", "--solver", "dpm++")
    assert code == 0, err[-2000:]
    assert torch.equal(restyled["audio"], kept["audio"])  # the sound kept, the picture reworked
    assert not torch.equal(restyled["video"], kept["video"])
    code, err, plain = run(capsys, tiny_checkpoint_dir, tmp_path, "plain")
    code, err, full = run(capsys, tiny_checkpoint_dir, tmp_path, "full", "--init-video", clip_mp4, "--denoise", "1")
    assert torch.equal(full["video"], plain["video"]) and torch.equal(full["audio"], plain["audio"])


def test_a_clip_without_sound_gets_new_sound(tiny_checkpoint_dir, silent_mp4, tmp_path, capsys):
    code, err, _ = run(capsys, tiny_checkpoint_dir, tmp_path, "silent", "--init-video", silent_mp4, "--denoise", "0.5")
    assert code == 0, err[-2000:]


@pytest.mark.parametrize("extra, message", [
    (["--solver", "heun"], "--solver: solver = 'heun' is not known; choose one of: euler, unipc, dpm++"),
    (["--sigmas", "1,0.5,0.7,0"], "--sigmas: sigmas must be strictly decreasing"),
    (["--sigmas", "1,0.5"], "--sigmas: sigmas must end at 0"),
    (["--sigmas", "1,x,0"], "--sigmas: sigmas must be numbers separated by commas"),
    (["--shift", "0"], "--shift: shift must be a number greater than 0"),
    (["--denoise", "1.5"], "--denoise must be between 0 and 1"),
    (["--denoise", "0.5"], "give it with --init-video"),
    (["--init-video", "INIT", "--audio-denoise", "-1"], "--audio-denoise must be between 0 and 1"),
    (["--init-video", "INIT", "--frames", "13"], "has 9 frames at 8 fps (1.12 s), too short for --frames 13 at --fps 8; "
                                                 "use --frames 9 or fewer"),
    (["--init-video", "INIT", "--prompt", "two", "--overlap", "1"], "--init-video restyles one clip: give one --prompt"),
    (["--init-video", "missing.mp4"], "--init-video: file 'missing.mp4' does not exist"),
    (["--init-video", "SILENT", "--audio-denoise", "0"], "has no sound to keep or rework"),
])
def test_bad_settings_are_one_error_line(tiny_checkpoint_dir, clip_mp4, silent_mp4, tmp_path, capsys, extra, message):
    extra = [str(clip_mp4) if e == "INIT" else str(silent_mp4) if e == "SILENT" else e for e in extra]
    out = tmp_path / "out"
    code = main(["generate", str(tiny_checkpoint_dir), "--prompt", "a dog barks", *BASE, *extra,
                 "--out", str(out / "clip.mp4")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], err[-2000:]
    assert "Traceback" not in err and not out.exists()
