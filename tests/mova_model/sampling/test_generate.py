"""The generate CLI: one segment per prompt, the mp4 path as the last stdout line, bad settings write nothing."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from mova_model.__main__ import main
from mova_model.media.av_io import probe_media, read_video_frames

BASE = ["--size", "32x32", "--frames", "9", "--fps", "8", "--steps", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def first_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "first.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def run(capsys, *argv):
    code = main(["generate", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_single_segment_writes_mp4_and_latents(tiny_checkpoint_dir, first_png, tmp_path, capsys):
    out, lat = tmp_path / "clip.mp4", tmp_path / "clip.safetensors"
    code, stdout, _ = run(capsys, tiny_checkpoint_dir, "--prompt", "a man says hello", "--image", first_png, *BASE,
                          "--out", out, "--save-latents", lat)
    assert code == 0
    assert stdout.strip().splitlines()[-1] == str(out)
    info = probe_media(out)
    assert info.frames == 9 and info.audio_rate == 16000
    with safe_open(str(lat), "pt") as f:
        assert f.metadata()["num_frames"] == "9"
        assert list(f.get_tensor("video").shape) == [1, 4, 3, 4, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "clip.safetensors"]


def test_same_seed_same_clip(tiny_checkpoint_dir, tmp_path, capsys):
    paths = []
    for name in ("a.mp4", "b.mp4"):
        code, _, _ = run(capsys, tiny_checkpoint_dir, "--prompt", "rain on a roof", *BASE, "--out", tmp_path / name)
        assert code == 0
        paths.append(tmp_path / name)
    assert np.array_equal(read_video_frames(paths[0])[0], read_video_frames(paths[1])[0])


@pytest.mark.parametrize("extra, message", [
    (["--size", "30x32"], "multiple of 16"),
    (["--frames", "8"], "4k+1"),
    (["--overlap", "5"], "two or more --prompt"),
    (["--prompt", "second", "--overlap", "9"], "shorter than the segment"),
    (["--prompt", "second", "--overlap", "4"], "4m+1"),
    (["--prompt", "second"], "4m+1"),
    (["--image", "missing.png"], "does not exist"),
    (["--steps", "0"], "at least 1"),
])
def test_bad_settings_are_explained_and_write_nothing(tiny_checkpoint_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "out" / "clip.mp4"
    code, stdout, stderr = run(capsys, tiny_checkpoint_dir, "--prompt", "a dog barks", *BASE, *extra, "--out", out,
                               "--save-latents", tmp_path / "out" / "l.safetensors")
    assert code == 2
    assert message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_bad_output_name(tiny_checkpoint_dir, tmp_path, capsys):
    code, _, stderr = run(capsys, tiny_checkpoint_dir, "--prompt", "x", *BASE, "--out", tmp_path / "clip.avi")
    assert code == 2 and ".mp4" in stderr and not list(tmp_path.iterdir())


def test_three_prompts_join_to_n_f_minus_overlaps(tiny_checkpoint_dir, first_png, tmp_path, capsys):
    out, lat = tmp_path / "long.mp4", tmp_path / "long.safetensors"
    code, stdout, _ = run(capsys, tiny_checkpoint_dir, "--prompt", "a dog barks", "--prompt", "a car passes",
                          "--prompt", "rain falls", "--image", first_png, "--last-image", first_png, *BASE,
                          "--overlap", "5", "--out", out, "--save-latents", lat)
    assert code == 0 and stdout.strip().splitlines()[-1] == str(out)
    info = probe_media(out)
    assert info.frames == 3 * 9 - 2 * 5
    with safe_open(str(lat), "pt") as f:
        meta = f.metadata()
        assert meta["num_frames"] == "17"
        seams = json.loads(meta["segments"])
        assert [s["frame"] for s in seams] == [4, 8] and [s["seed"] for s in seams] == [4, 5]
        assert f.get_tensor("audio").shape[-1] == (int(16000 * 17 / 8) - 1) // 160 + 1


@pytest.mark.parametrize("sig, words", [(signal.SIGTERM, "terminated (SIGTERM)"), (signal.SIGINT, "interrupted (Ctrl-C)")])
def test_sigterm_and_ctrl_c_end_with_one_line_and_leave_no_file(tiny_checkpoint_dir, tmp_path, repo_root, sig, words):
    """As a user (or a job scheduler) stops it: exit 128+signal, one line, no traceback, nothing in the output
    folder (issue 17, item 11; SIGTERM used to kill the process where it stood)."""
    out = tmp_path / "out" / "clip.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "mova_model", "generate", str(tiny_checkpoint_dir), "--prompt",
                             "a dog barks", *BASE[:-4], "--steps", "1000", "--out", str(out),
                             "--save-latents", str(tmp_path / "out" / "clip.safetensors")],
                            cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = b""
    deadline = time.monotonic() + 300
    while b"built video_dit " not in err:  # sampling has started
        assert proc.poll() is None and time.monotonic() < deadline, err.decode(errors="replace")[-2000:]
        err += proc.stderr.read1(4096)
    time.sleep(0.5)
    proc.send_signal(sig)
    rest, more = proc.communicate(timeout=120)
    err += more
    lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
    assert proc.returncode == 128 + sig, lines[-5:]
    assert lines[-1] == f"{words}; no partial file was left", lines[-5:]
    assert not any("Traceback" in line for line in lines) and rest == b""
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
