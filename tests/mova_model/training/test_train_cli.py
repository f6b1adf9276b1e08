"""The train CLI as a user runs it (a subprocess): SIGTERM and Ctrl-C save the last completed step and end with
one line, `--resume` continues into the same --out, written files get mode 0644 like ComfyUI's outputs, a
read-only dataset folder caches its clips in the user's cache folder, and a 10 MB caption costs no memory
(issue 17, items 2, 3, 6, 9, 11)."""

import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from mova_model.training.files import read_lora_metadata, state_path_for
from read_only import try_read_only_folder
from training_clips import write_clip, write_dataset

GEOMETRY = ["--size", "48x32", "--frames", "9", "--fps", "8", "--rank", "2", "--alpha", "2", "--lr", "1e-3",
            "--val-items", "1", "--experts", "low", "--no-audio-dit", "--no-bridge"]


def _umask_022():
    os.umask(0o022)


class Training:
    """`python -m mova_model train ...` running, its stderr collected as it comes (tqdm writes `\\r` updates)."""

    def __init__(self, repo_root, argv, env=None):
        self.proc = subprocess.Popen([sys.executable, "-m", "mova_model", "train", *map(str, argv)], cwd=repo_root,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_umask_022,
                                     env=dict(os.environ, **(env or {})))
        self.err = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for chunk in iter(lambda: self.proc.stderr.read1(4096), b""):
            self.err += chunk

    def wait_for_step(self, at_least: int, timeout: float = 400.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [int(m) for m in re.findall(rb"\| *(\d+)/\d+ \[", self.err)]
            if done and max(done) >= at_least:
                return max(done)
            assert self.proc.poll() is None, self.err.decode(errors="replace")[-2000:]
            time.sleep(0.05)
        raise AssertionError("no training step reported in time:\n" + self.err.decode(errors="replace")[-2000:])

    def finish(self, timeout: float = 120.0):
        out = self.proc.stdout.read()
        self.proc.wait(timeout)
        self.reader.join(10)
        lines = [line.strip() for line in re.split(r"[\r\n]", self.err.decode(errors="replace")) if line.strip()]
        return self.proc.returncode, out.decode(), lines


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_sigterm_and_ctrl_c_save_the_last_step_with_one_line_and_resume_continues(
        tiny_checkpoint_dir, tmp_path, repo_root):
    data = write_dataset(tmp_path / "clips", count=2)
    out = tmp_path / "lora.safetensors"
    xdg = tmp_path / "xdg"
    argv = [tiny_checkpoint_dir, data, "--out", out, "--steps", "40", *GEOMETRY]
    with try_read_only_folder(data) as read_only:  # no `.mova_cache` there: the user's cache folder is used
        run = Training(repo_root, argv, env={"XDG_CACHE_HOME": str(xdg)})
        run.wait_for_step(1)
        run.proc.send_signal(signal.SIGTERM)
        code, stdout, lines = run.finish()
    assert code == 128 + signal.SIGTERM, lines[-5:]
    assert not [line for line in lines if "Traceback" in line], lines
    saved = int(read_lora_metadata(out)["steps"])
    assert 1 <= saved < 40
    assert lines[-1] == (f"terminated (SIGTERM): saved step {saved} of 40 to {out}; continue with --resume "
                         f"{state_path_for(out)}"), lines[-3:]
    assert stdout == ""
    cache = sorted((xdg / "mova" / "training" if read_only else data / ".mova_cache").iterdir())
    assert len(cache) == 2 and (not read_only or not (data / ".mova_cache").exists())
    for path in (out, state_path_for(out), *cache):  # like ComfyUI's own outputs, not mkstemp's 0600
        assert mode(path) == 0o644, (path, oct(mode(path)))

    # the same --out with --resume of its own state: accepted, continues; Ctrl-C saves again
    run = Training(repo_root, [*argv, "--resume", state_path_for(out)], env={"XDG_CACHE_HOME": str(xdg)})
    run.wait_for_step(saved + 1)
    run.proc.send_signal(signal.SIGINT)
    code, stdout, lines = run.finish()
    assert code == 128 + signal.SIGINT, lines[-5:]
    assert not [line for line in lines if "Traceback" in line], lines
    again = int(read_lora_metadata(out)["steps"])
    assert again > saved and int(read_lora_metadata(state_path_for(out))["step"]) == again
    assert lines[-1].startswith(f"interrupted (Ctrl-C): saved step {again} of 40 to {out}"), lines[-3:]


def test_a_10_mb_caption_costs_no_memory(tiny_checkpoint_dir, tmp_path, repo_root):
    data = tmp_path / "clips"
    data.mkdir()
    write_clip(data / "clip.mp4", caption=None)
    sentence = "Rain falls on a tin roof while a dog barks twice. "
    (data / "clip.txt").write_text((sentence * (10_000_000 // len(sentence) + 1))[:10_000_000])
    with open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mova_model", "train", str(tiny_checkpoint_dir), str(data),
                                 "--out", str(tmp_path / "l.safetensors"), "--steps", "1", "--no-cache", *GEOMETRY],
                                cwd=repo_root, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak resident memory
        proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = (tmp_path / "stderr").read_text(errors="replace")
    assert proc.returncode == 0, stderr[-2000:]
    peak_gb = usage.ru_maxrss * 1024 / 1e9
    print(f"\npeak RSS with a 10 MB caption: {peak_gb:.2f} GB")
    assert "caption clip.txt is 10,000,000 bytes; only its first 32,768 characters are read" in stderr
    assert peak_gb < 1.0, f"peak RSS {peak_gb:.2f} GB: the caption was tokenized whole (about 0.5 GB without it)"


def test_a_non_finite_loss_is_one_line_naming_the_step_and_the_learning_rate(tiny_checkpoint_dir, clip_dataset,
                                                                             encode_cache, tmp_path, monkeypatch,
                                                                             capsys):
    """Issue 17, item 6: a diverging run (here the second step's loss made NaN) used to end in a traceback."""
    import dataclasses

    from mova_model.__main__ import main
    from mova_model.training.models import TrainingModels

    original, calls = TrainingModels.step, []

    def diverging(self, *args, grad=True, **kwargs):
        result = original(self, *args, grad=grad, **kwargs)
        if grad:
            calls.append(1)
            if len(calls) == 2:
                return dataclasses.replace(result, loss=result.loss * float("nan"))
        return result

    monkeypatch.setattr(TrainingModels, "step", diverging)
    out = tmp_path / "lora.safetensors"
    code = main(["train", str(tiny_checkpoint_dir), str(clip_dataset), "--out", str(out), "--steps", "4",
                 "--cache-dir", str(encode_cache), "--warmup-steps", "0", *GEOMETRY])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert re.fullmatch(r"error: step 2: the loss is not finite \(nan\) at learning rate 0\.000\d+; lower the learning "
                        r"rate \(or raise the warm-up steps\) and train again; the LoRA of step 1 is saved in "
                        + re.escape(str(out)), errors[0]), errors[0]
    assert read_lora_metadata(out)["steps"] == "1"
