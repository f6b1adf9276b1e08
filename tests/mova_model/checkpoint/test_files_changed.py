"""Weight files changed on disk between two runs (issue 9, item 2).

The weights stay memory-mapped after a run; a shard truncated afterwards (a re-download, `cp` over it, a full
disk) used to kill the next run with SIGBUS (exit 135) at the first touch of a page past the new end. The
pipeline now checks before each run (and before building each component) that the files are the ones it
validated (size, mtime, inode, header) and otherwise drops the modules built from them and validates again.
The end-to-end check runs in a child interpreter: before the fix it is the child that dies.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from mova_model.checkpoint.folder import MovaCheckpoint
from mova_model.checkpoint.weights import CheckpointError, SafetensorsStore

SIGBUS_EXIT = 128 + 7

CHILD = textwrap.dedent(r"""
    import json, os, pathlib, sys
    import torch
    from mova_model.checkpoint.weights import CheckpointError
    from mova_model.sampling.pipeline import MovaPipeline

    folder = pathlib.Path(sys.argv[1])
    pipe = MovaPipeline.from_pretrained(folder)
    cond = pipe.prepare_conditioning("a dog barks", "", None, width=32, height=32, num_frames=5, video_fps=8.0)
    first = pipe.sample(cond, seed=3, steps=3)  # video_dit_2 is built at the switch and stays built
    shard = next((folder / "video_dit_2").glob("*.safetensors"))
    data = shard.read_bytes()
    os.truncate(shard, len(data) // 2)  # what `truncate -s 50%` does
    report = {"errors": []}
    for _ in range(2):  # the second run after the change is refused too, not only the first
        try:
            pipe.sample(cond, seed=3, steps=3)
            report["errors"].append(None)
        except CheckpointError as exc:
            report["errors"].append(str(exc))
    shard.write_bytes(data)  # restored
    again = pipe.sample(cond, seed=3, steps=3)
    report["restored_equal"] = bool(torch.equal(first.video, again.video) and torch.equal(first.audio, again.audio))
    print("REPORT " + json.dumps(report))
""")


def _copy(tiny_checkpoint_dir, tmp_path):
    dest = tmp_path / "MOVA-copy"
    shutil.copytree(tiny_checkpoint_dir, dest)
    return dest


def test_truncated_shard_between_runs_is_a_checkpoint_error_not_sigbus(tiny_checkpoint_dir, tmp_path, repo_root):
    folder = _copy(tiny_checkpoint_dir, tmp_path)
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    result = subprocess.run([sys.executable, "-c", CHILD, str(folder)], cwd=repo_root, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != SIGBUS_EXIT, "the run after the truncation died with SIGBUS:\n" + result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    (line,) = [l for l in result.stdout.splitlines() if l.startswith("REPORT ")]
    report = json.loads(line[len("REPORT "):])
    for message in report["errors"]:
        assert message is not None, "a run on a truncated shard did not fail"
        assert "not a usable MOVA checkpoint" in message and "changed on disk" in message, message
        assert "video_dit_2" in message and "truncated" in message, message
    assert report["restored_equal"], "after restoring the file the run must give the first run's latents"


def test_rewrite_keeping_size_and_mtime_is_seen_through_the_header(tiny_checkpoint_dir, tmp_path):
    folder = _copy(tiny_checkpoint_dir, tmp_path)
    store = SafetensorsStore(folder / "audio_dit", "audio_dit")
    shard = store.files[0]
    stat = shard.stat()
    data = bytearray(shard.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = bytes(data[8:8 + header_len])
    assert b'"F32"' in header or b'"BF16"' in header
    swapped = header.replace(b'"F32"', b'"I32"', 1) if b'"F32"' in header else header.replace(b'"BF16"', b'"F16"', 1)
    data[8:8 + header_len] = swapped  # same size
    with open(shard, "r+b") as handle:  # same inode
        handle.write(data)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime
    assert shard.stat().st_size == stat.st_size and shard.stat().st_mtime_ns == stat.st_mtime_ns
    assert store.changed_files() == [shard.name]


def test_build_after_a_change_rechecks_and_names_the_file(tiny_checkpoint_dir, tmp_path):
    folder = _copy(tiny_checkpoint_dir, tmp_path)
    checkpoint = MovaCheckpoint.open(folder, validate=True)
    shard = next((folder / "dual_tower_bridge").glob("*.safetensors"))
    os.truncate(shard, shard.stat().st_size - 100)
    assert checkpoint.changed_components() == ["dual_tower_bridge"]
    with pytest.raises(CheckpointError) as err:
        checkpoint.build("dual_tower_bridge")
    message = str(err.value)
    assert "changed on disk" in message and shard.name in message, message
    with pytest.raises(CheckpointError):  # still refused while the file stays broken
        checkpoint.recheck()
    assert checkpoint.build("audio_dit") is not None  # other components are unaffected
