"""Every CLI with a table of bad arguments (issue 17, items 6 and 12): one `error:` line, exit status 2, no file
created or changed, and refused before anything is loaded (each case well under a second in-process). The
commands: generate, train, and the tools describe, plan (and plan --train), quantize, tiny-checkpoint and
lora-convert.

The table runs in-process through `python -m mova_model`'s `main()` (a subprocess per case would cost ~3 s
of imports each); a few cases also run as real subprocesses, where stderr must be that one line.
"""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mova_model.__main__ import main
from read_only import read_only_folder
from training_clips import write_clip

LONG_NAME = "n" * 300
NO_CUDA = not torch.cuda.is_available()

GENERATE = ["--prompt", "a dog barks", "--size", "32x32", "--frames", "9", "--fps", "8", "--steps", "2"]
GENERATE_BAD = [
    (["--fps", "inf"], "fps must be a finite number"),
    (["--fps", "nan"], "fps"),
    (["--fps", "0"], "greater than 0"),
    (["--fps", "121"], "at most 120"),
    (["--cfg", "nan"], "--cfg must be"),
    (["--cfg", "inf"], "--cfg must be"),
    (["--cfg", "-1"], "--cfg must be"),
    (["--seed", str(2**64)], "--seed must be at least 0 and at most 18446744073709551615"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**64 - 1), "--prompt", "a car", "--overlap", "5"], "last segment's seed"),
    (["--device", "banana"], "not a torch device"),
    (["--device", "cuda:99"], "cuda:99"),
    pytest.param(["--device", "cuda"], "no CUDA GPU", marks=pytest.mark.skipif(not NO_CUDA, reason="CUDA exists")),
    (["--frames", "100001"], "frames must be at most 1025"),
    (["--frames", "1029"], "frames must be at most 1025"),
    (["--size", "8192x352"], "width must be at most 4096"),
    (["--size", "640x"], "--size must look like"),
    (["--steps", "0"], "at least 1"),
    (["--steps", "100000"], "--steps must be at least 1 and at most 1000"),
    (["--steps", "abc"], "invalid int value"),
    (["--bogus"], "unrecognized arguments"),
    (["--prompt", " "], "every prompt must contain text"),
    (["--image", "{tmp}/missing.png"], "does not exist"),
    (["--out", "/proc/mova.mp4"], "cannot write in /proc"),
    (["--out", "{readonly}/clip.mp4"], "cannot write in"),
    (["--out", "{tmp}/" + LONG_NAME + ".mp4"], "file name"),
    (["--out", "{tmp}"], "--out must end in .mp4"),
    (["--out", "{tmp}/folder.mp4"], "is a folder"),
    (["--save-latents", "/proc/mova.safetensors"], "--save-latents /proc/mova.safetensors: cannot write"),
    (["--save-latents", "{readonly}/l.safetensors"], "cannot write in"),
    (["--parallel", "cfg", "--parallel-timeout", "0"], "--parallel-timeout must be"),
    (["--lora", "{tmp}/missing.safetensors"], "missing.safetensors"),
    (["--solver", "banana"], "--solver"),
    (["--sigmas", "1,0.5"], "--sigmas"),
    (["--sigmas", "0.5,0.8,0"], "--sigmas"),
    (["--shift", "nan"], "--shift"),
    (["--denoise", "2"], "--denoise"),
    (["--denoise", "nan"], "--denoise"),
    (["--denoise", "0.5"], "--init-video"),
    (["--init-video", "{tmp}/missing.mp4", "--denoise", "0.5"], "does not exist"),
    (["--lora", "{tmp}/existing.safetensors,expert=middle"], "expert"),
    (["--lora", "{tmp}/existing.safetensors,strength=nan"], "strength"),
]

TRAIN = ["--steps", "2", "--size", "48x32", "--frames", "9", "--fps", "8", "--rank", "2", "--alpha", "2"]
TRAIN_BAD = [
    (["--device", "banana"], "not a torch device"),
    (["--device", "cuda:99"], "cuda:99"),
    pytest.param(["--device", "cuda"], "no CUDA GPU", marks=pytest.mark.skipif(not NO_CUDA, reason="CUDA exists")),
    (["--lr", "1e6"], "learning rate must be at least 1e-07 and at most 1"),
    (["--lr", "nan"], "learning rate"),
    (["--lr", "0"], "learning rate"),
    (["--steps", "0"], "steps must be at least 1"),
    (["--steps", "2000000"], "steps must be at least 1 and at most 1000000"),
    (["--rank", "0"], "rank must be"),
    (["--rank", "1000"], "rank must be"),
    (["--alpha", "nan"], "alpha must be"),
    (["--seed", "-1"], "seed must be"),
    (["--seed", str(2**32)], "seed must be at least 0 and at most 4294967295"),
    (["--caption-dropout", "1"], "caption dropout"),
    (["--loss-weights", "nan", "1"], "loss weights"),
    (["--vram-budget", "0"], "VRAM budget"),
    (["--vram-budget", "inf"], "VRAM budget"),
    (["--fps", "inf"], "fps must be"),
    (["--frames", "100001"], "frames must be at least 1 and at most 1025"),
    (["--size", "50x32"], "multiples of 16"),
    (["--size", "big"], "size must be WIDTHxHEIGHT"),
    (["--warmup-steps", "-1"], "warm-up steps"),
    (["--accumulation", "0"], "gradient accumulation"),
    (["--val-items", "0"], "val_items"),
    (["--experts", "middle"], "invalid choice"),
    (["--steps", "abc"], "invalid int value"),
    (["--out", "/proc/mova.safetensors"], "output /proc/mova.safetensors: cannot write in /proc"),
    (["--out", "{readonly}/lora.safetensors"], "cannot write in"),
    (["--out", "{tmp}/" + LONG_NAME + ".safetensors"], "file name"),
    (["--out", "{tmp}/existing.safetensors"], "already exists and is not replaced unless asked"),
    (["--out", "{tmp}/missing/lora.safetensors"], "does not exist"),
    (["--out", "{tmp}/lora.pt"], "must end in .safetensors"),
    (["--export-format", "comfy", "--out", "{tmp}/exp.safetensors"], "exp_high_noise.safetensors already exists"),
    (["--export-format", "banana"], "invalid choice"),
    (["--cache-dir", "/proc/mova_cache"], "cache folder /proc/mova_cache: cannot write"),
    (["--cache-dir", "{readonly}/cache"], "cannot write in"),
    (["--dataset", "{tmp}/nowhere"], "folder not found"),
    (["--dataset", "{tmp}/latin1"], "caption clip.txt is not UTF-8 text (byte 0xe9 at offset 3)"),
    (["--resume", "{tmp}/nope.train-state"], "not found"),
    (["--init-lora", "{tmp}/nope.safetensors"], "continue-from LoRA"),
    (["--checkpoint", "{tmp}/no_checkpoint"], "checkpoint"),
]


# The tools: (command, arguments, what the error line says). `{tiny}`: the tiny checkpoint folder.
PLAN = ["--vram", "12", "--ram", "32"]
TOOLS_BAD = [
    ("describe", ["{tmp}/nowhere"], "is not a folder (nothing there)"),
    ("describe", ["{tmp}/existing.safetensors"], "is not a folder (a file)"),
    ("describe", ["{tiny}", "--bogus"], "unrecognized arguments"),
    ("plan", ["--vram", "nan", "--ram", "32"], "--vram (GB) must be more than 0"),
    ("plan", ["--vram", "inf", "--ram", "32"], "--vram (GB) must be"),
    ("plan", ["--vram", "12", "--ram", "0"], "--ram (GB) must be more than 0"),
    ("plan", ["--vram", "12"], "required"),
    ("plan", [*PLAN, "--frames", "100001"], "--frames must be at least 1 and at most 1025"),
    ("plan", [*PLAN, "--frames", "100"], "4k+1"),
    ("plan", [*PLAN, "--size", "640x"], "--size must look like"),
    ("plan", [*PLAN, "--size", "8192x352"], "width must be at least 16 and at most 4096"),
    ("plan", [*PLAN, "--fps", "inf"], "--fps must be"),
    ("plan", [*PLAN, "--pcie", "nan"], "--pcie"),
    ("plan", [*PLAN, "--prefetch", "-1"], "--prefetch must be"),
    ("plan", [*PLAN, "--cfg-passes", "4"], "invalid choice"),
    ("plan", [*PLAN, "--weights", "gguf:IQ2_XS"], "the GGUF type must be one of"),
    ("plan", [*PLAN, "--checkpoint", "{tmp}/nowhere"], "--checkpoint {tmp}/nowhere: not a folder"),
    ("plan", ["--train", *PLAN, "--rank", "0"], "--rank must be at least 1"),
    ("plan", ["--train", "--vram", "nan", "--ram", "32"], "--vram (GB) must be"),
    ("plan", ["--train", *PLAN, "--frames", "100001"], "at most 1025"),
    ("plan", ["--train", *PLAN, "--experts", "middle"], "invalid choice"),
    ("plan", ["--train", *PLAN, "--checkpoint", "{tmp}/existing.safetensors"], "not a folder"),
    ("quantize", ["{tmp}/nowhere", "{tmp}/q"], "is not a folder"),
    ("quantize", ["{tiny}", "{tiny}"], "DST must differ from SRC"),
    ("quantize", ["{tiny}", "/proc/q"], "cannot write in /proc"),
    ("quantize", ["{tiny}", "{readonly}/q"], "cannot write in"),
    ("quantize", ["{tiny}", "{tmp}/existing.safetensors", "--overwrite"], "is a file"),
    ("quantize", ["{tiny}", "{tmp}/folder.mp4"], "exists (pass --overwrite to replace it)"),
    ("quantize", ["{tiny}", "{tmp}/" + LONG_NAME], "folder name"),
    ("quantize", ["{tiny}", "{tmp}/q", "--components", "banana"], "--components banana: no such component folder"),
    ("quantize", ["{tiny}", "{tmp}/q", "--format", "gguf", "--type", "Q4_K"], "llama.cpp"),
    ("quantize", ["{tiny}", "{tmp}/q", "--format", "banana"], "invalid choice"),
    ("tiny-checkpoint", ["/proc/tiny"], "cannot write in /proc"),
    ("tiny-checkpoint", ["{tmp}/existing.safetensors"], "is a file"),
    ("tiny-checkpoint", ["{tmp}/tiny", "--seed", "-1"], "--seed must be at least 0"),
    ("lora-convert", ["{tmp}/missing.safetensors", "{tmp}/o.safetensors", "--to", "comfy"], "file not found"),
    ("lora-convert", ["{tmp}/existing.safetensors", "{tmp}/o.safetensors", "--to", "comfy"],
     "not a readable safetensors file"),
    ("lora-convert", ["{tmp}/existing.safetensors", "{tmp}/o.safetensors", "--to", "banana"], "invalid choice"),
]

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep_data")
    write_clip(folder / "clip.mp4")
    return folder


@pytest.fixture()
def place(tmp_path, dataset, tiny_checkpoint_dir, monkeypatch):
    """The tree a case may touch: tmp_path (a read-only folder, an existing LoRA, a folder named like an mp4,
    a clip with a Latin-1 caption) and the dataset; -> fill(text) for the `{tmp}` / `{readonly}` holes."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "readonly").mkdir()
    (tmp_path / "folder.mp4").mkdir()
    (tmp_path / "existing.safetensors").write_bytes(b"the user's own LoRA")
    (tmp_path / "exp_high_noise.safetensors").write_bytes(b"an exported expert file of the user's")
    (tmp_path / "latin1").mkdir()
    write_clip(tmp_path / "latin1" / "clip.mp4", caption=None)
    (tmp_path / "latin1" / "clip.txt").write_bytes("café au lait".encode("latin-1"))
    def fill(text: str) -> str:
        if "{readonly}" in text:  # only these cases need (and may skip for want of) a read-only folder
            stack.enter_context(read_only_folder(tmp_path / "readonly"))
        return text.replace("{tmp}", str(tmp_path)).replace("{readonly}", str(tmp_path / "readonly"))

    with contextlib.ExitStack() as stack:
        yield fill


def snapshot(*roots: Path) -> dict:
    return {p: p.read_bytes() for root in roots for p in sorted(Path(root).rglob("*")) if p.is_file()}


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


def run_case(capsys, command, argv, trees):
    before = snapshot(*trees)
    started = time.monotonic()
    code = main([command, *argv])
    seconds = time.monotonic() - started
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert snapshot(*trees) == before, "a refused command created or changed a file"
    return one_error_line(stderr), seconds


def with_overrides(base: list, extra: list) -> list:
    """`base` with the options in `extra` replacing its own (one value each) and the rest appended."""
    argv, extra = list(base), list(extra)
    for i, item in enumerate(extra):
        if item in ("--out", "--size", "--frames", "--fps", "--steps") and item in argv:
            j = argv.index(item)
            argv[j + 1] = extra[i + 1]
            extra[i] = extra[i + 1] = None
    return argv + [x for x in extra if x is not None]


@pytest.mark.parametrize("extra, message", GENERATE_BAD)
def test_generate_refuses_bad_arguments_with_one_error_line(extra, message, place, tmp_path, tiny_checkpoint_dir,
                                                            capsys):
    argv = with_overrides([str(tiny_checkpoint_dir), *GENERATE, "--out", str(tmp_path / "out" / "clip.mp4")],
                          [place(x) for x in extra])
    line, seconds = run_case(capsys, "generate", argv, [tmp_path, tiny_checkpoint_dir])
    assert message in line, line
    assert seconds < 5.0, f"refused after {seconds:.1f} s: too late (before any loading, it takes milliseconds)"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", TRAIN_BAD)
def test_train_refuses_bad_arguments_with_one_error_line(extra, message, place, tmp_path, dataset,
                                                         tiny_checkpoint_dir, capsys):
    positional = {"--checkpoint": str(tiny_checkpoint_dir), "--dataset": str(dataset)}
    extra = [place(x) for x in extra]
    for key in list(positional):
        if key in extra:
            i = extra.index(key)
            positional[key] = extra[i + 1]
            del extra[i:i + 2]
    argv = with_overrides([positional["--checkpoint"], positional["--dataset"], *TRAIN,
                           "--out", str(tmp_path / "lora.safetensors")], extra)
    line, seconds = run_case(capsys, "train", argv, [tmp_path, dataset, tiny_checkpoint_dir])
    assert message in line, line
    assert seconds < 5.0, f"refused after {seconds:.1f} s: too late (before any loading, it takes milliseconds)"


@pytest.mark.parametrize("command, argv, message", TOOLS_BAD)
def test_tools_refuse_bad_arguments_with_one_error_line(command, argv, message, place, tmp_path, tiny_checkpoint_dir,
                                                        capsys):
    fill = lambda text: place(text).replace("{tiny}", str(tiny_checkpoint_dir))  # noqa: E731
    line, seconds = run_case(capsys, command, [fill(x) for x in argv], [tmp_path, tiny_checkpoint_dir])
    assert fill(message) in line, line
    assert seconds < 5.0, f"refused after {seconds:.1f} s: too late (before any work, it takes milliseconds)"

@pytest.mark.parametrize("command, extra, message", [
    ("generate", ["--fps", "inf"], "fps must be a finite number"),
    ("train", ["--device", "banana"], "not a torch device"),
    ("train", ["--out", "{tmp}/existing.safetensors"], "already exists"),
    ("plan", ["--vram", "nan", "--ram", "32"], "--vram (GB) must be"),
    ("quantize", ["{tiny}", "/proc/q"], "cannot write in /proc"),
])
def test_as_a_subprocess_stderr_is_exactly_the_error_line(command, extra, message, place, tmp_path, dataset,
                                                          tiny_checkpoint_dir, repo_root):
    if command == "generate":
        argv = with_overrides([str(tiny_checkpoint_dir), *GENERATE, "--out", str(tmp_path / "out" / "c.mp4")],
                              [place(x) for x in extra])
    elif command != "train":  # a tool: its whole argument list
        argv = [place(x).replace("{tiny}", str(tiny_checkpoint_dir)) for x in extra]
    else:
        argv = with_overrides([str(tiny_checkpoint_dir), str(dataset), *TRAIN, "--out", str(tmp_path / "l.safetensors")],
                              [place(x) for x in extra])
    before = snapshot(tmp_path, dataset)
    proc = subprocess.run([sys.executable, "-m", "mova_model", command, *argv], capture_output=True, text=True,
                          cwd=repo_root, timeout=120, env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg")))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert proc.stdout == ""
    assert snapshot(tmp_path, dataset) == before
