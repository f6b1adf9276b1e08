"""A config.json that does not match its tensors (issue 9, item 3).

`"num_layers": 1000000` used to make the validator build a million-block skeleton on the meta device (15 GB in
5 minutes in the server). Now the numbers the headers show are compared first (milliseconds, the message names
the key and both values), every architecture number has sane bounds, and a skeleton build stops once it is
larger than the stored tensors could fill. The 1000000-layer case runs in a child interpreter with a time
limit, since before the fix it never ends.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from dit_fixtures import read_manifest
from mova_model.checkpoint.config_checks import (SkeletonTooLarge, bound_problems, config_problems, config_values,
                                                 skeleton_limit)
from mova_model.checkpoint.configs import CONFIG_FILES
from mova_model.checkpoint.folder import WEIGHT_COMPONENTS, MovaCheckpoint, build_meta_module, layout_of_module
from mova_model.checkpoint.weights import CheckpointError, TensorInfo

FAST_SECONDS = 1.0

CHILD = textwrap.dedent(r"""
    import json, sys, time
    from mova_model.checkpoint.folder import MovaCheckpoint
    from mova_model.checkpoint.weights import CheckpointError
    MovaCheckpoint.open(sys.argv[1], validate=True)  # imports and the good components' layouts warm
    t0 = time.monotonic()
    try:
        MovaCheckpoint.open(sys.argv[2], validate=True)
        message = None
    except CheckpointError as exc:
        message = str(exc)
    print("REPORT " + json.dumps({"seconds": time.monotonic() - t0, "message": message}))
""")


def _edited_copy(tiny_checkpoint_dir, tmp_path, component, **changes) -> Path:
    dest = tmp_path / f"MOVA-{component}"
    shutil.copytree(tiny_checkpoint_dir, dest)
    path = dest / component / CONFIG_FILES[component][0]
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return dest


def test_a_million_layers_fails_in_well_under_a_second_naming_both_values(tiny_checkpoint_dir, tmp_path, repo_root):
    bad = _edited_copy(tiny_checkpoint_dir, tmp_path, "video_dit", num_layers=1_000_000)
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    try:
        result = subprocess.run([sys.executable, "-c", CHILD, str(tiny_checkpoint_dir), str(bad)], cwd=repo_root,
                                env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("validating a 1000000-layer config did not finish within 180 s")
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [l for l in result.stdout.splitlines() if l.startswith("REPORT ")]
    report = json.loads(line[len("REPORT "):])
    message = report["message"]
    assert message is not None, "a 1000000-layer config was accepted"
    assert "video_dit / num_layers" in message and "1000000" in message and "found 3" in message, message
    assert report["seconds"] < FAST_SECONDS, report


@pytest.mark.parametrize("component, changes, words", [
    ("video_dit_2", {"dim": 64, "num_heads": 2}, ["dim", "64", "found 48"]),
    ("audio_dit", {"ffn_dim": 10**9}, ["ffn_dim", "1000000000", "found 64"]),
    ("text_encoder", {"vocab_size": 1000}, ["vocab_size", "1000", "found 227"]),
    ("text_encoder", {"num_layers": 40}, ["num_layers", "40", "found 2"]),
    ("video_vae", {"base_dim": 10**6}, ["base_dim", "1000000", "found 8"]),
    ("dual_tower_bridge", {"visual_layers": 10**6}, ["visual_layers", "1000000", "1..1024"]),
    ("dual_tower_bridge", {"interaction_strategy": "shallow_focus"}, ["visual_layers/audio_layers", "found 2"]),
], ids=["dim", "ffn", "vocab", "te-layers", "vae-base-dim", "bridge-bound", "bridge-count"])
def test_config_numbers_are_checked_against_the_headers(tiny_checkpoint_dir, tmp_path, component, changes, words):
    bad = _edited_copy(tiny_checkpoint_dir, tmp_path, component, **changes)
    with pytest.raises(CheckpointError) as err:
        MovaCheckpoint.open(bad, validate=True)
    message = str(err.value)
    assert f"{component} / " in message, message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("component, changes", [
    ("video_vae", {"num_res_blocks": 60}),
    ("audio_vae", {"encoder_rates": [2] * 15}),
], ids=["vae-res-blocks", "dac-rates"])
def test_a_skeleton_larger_than_the_files_is_never_built(tiny_checkpoint_dir, tmp_path, component, changes):
    """Numbers the headers cannot show directly: the build stops once the skeleton outgrows the tensors."""
    bad = _edited_copy(tiny_checkpoint_dir, tmp_path, component, **changes)
    checkpoint = MovaCheckpoint.open(bad)
    assert not checkpoint.cheap_problems(component)
    with pytest.raises(SkeletonTooLarge):
        with skeleton_limit(component, checkpoint.store(component)):
            build_meta_module(component, checkpoint.config(component))
    with pytest.raises(CheckpointError) as err:
        checkpoint.validate()
    assert "larger than the weight files can fill" in str(err.value) and component in str(err.value)


def test_bounds_name_the_key_and_the_allowed_range():
    problems = bound_problems("video_dit", {"num_layers": 5000, "dim": 48, "patch_size": [1, 2, 2], "num_heads": True})
    assert [p.key for p in problems] == ["num_heads", "num_layers"]
    assert problems[1].expected == "an integer in 1..1024" and problems[1].found == "5000"


def _manifest_store(path: Path) -> SimpleNamespace:
    shapes = read_manifest(path)
    return SimpleNamespace(tensors={k: TensorInfo(k, "BF16", tuple(s), path, (0, 0)) for k, s in shapes.items()})


@pytest.mark.parametrize("component", WEIGHT_COMPONENTS)
def test_released_architecture_passes_every_check(shared_dir, component):
    """The checks must not refuse the real MOVA-360p: its configs against its tensor manifests, the skeleton
    built under the same limit (the weight-norm DAC layout too)."""
    from mova_model.checkpoint.configs import MovaConfigs

    configs = MovaConfigs.from_folder(shared_dir / "spec/configs/MOVA-360p")
    config = getattr(configs, component)
    manifests = [shared_dir / f"spec/manifests/MOVA-360p/{component}.tsv"]
    manifests += sorted((shared_dir / "spec/manifests/MOVA-360p").glob(f"{component}.ALT-*.tsv"))
    for manifest in manifests:
        store = _manifest_store(manifest)
        assert config_problems(component, config_values(config), store) == [], manifest.name
        with skeleton_limit(component, store):
            layout = layout_of_module(component, build_meta_module(component, config))
        assert len(layout.tensors) <= len(store.tensors) + 1  # tied text-encoder key


@pytest.mark.parametrize("check", [False, True], ids=["describe", "describe-check"])
def test_describe_reports_a_million_layers_instead_of_building_them(tiny_checkpoint_dir, tmp_path, repo_root, check):
    bad = _edited_copy(tiny_checkpoint_dir, tmp_path, "video_dit", num_layers=1_000_000)
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    command = [sys.executable, "-m", "mova_model", "describe", str(bad), "--summary"] + (["--check"] if check else [])
    try:
        result = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("describe on a 1000000-layer config did not finish within 180 s")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "video_dit / num_layers" in result.stderr and "1000000" in result.stderr, result.stderr[-2000:]
