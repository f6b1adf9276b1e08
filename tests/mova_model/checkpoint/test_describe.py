"""Tests of `mova_model.checkpoint.describe`: full-scale MOVA-360p / MOVA-720p layouts from configs alone must equal the
reference manifests (keys, shapes, dtype convention, parameter counts), and `--check` must list problems."""

import json
import shutil
from pathlib import Path

import pytest

from mova_model.checkpoint.folder import WEIGHT_COMPONENTS
from mova_model.checkpoint.describe import describe, main_describe

VARIANTS = ("MOVA-360p", "MOVA-720p")


def _manifest(shared_dir: Path, variant: str, component: str):
    rows = []
    for line in (shared_dir / "spec" / "manifests" / variant / f"{component}.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            rows.append(tuple(line.split("\t")))
    return rows


@pytest.fixture(scope="module")
def described(shared_dir):
    out = {}
    for variant in VARIANTS:
        lines, problems = describe(shared_dir / "spec" / "configs" / variant)
        assert problems == []
        out[variant] = lines
    return out


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("component", WEIGHT_COMPONENTS)
def test_tensor_lines_equal_the_manifest(shared_dir, described, variant, component):
    lines = [tuple(line.split("\t")) for line in described[variant] if not line.startswith("#")]
    mine = [row[1:] for row in lines if row[0] == component]
    expected = _manifest(shared_dir, variant, component)
    assert len(mine) == len(expected)
    assert dict((k, (s, d)) for k, s, d in mine) == dict((k, (s, d)) for k, s, d in expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_counts_equal_the_summary(shared_dir, described, variant):
    summary = json.loads((shared_dir / "spec" / "manifests" / "summary.json").read_text())[variant]
    counts = {}
    for line in described[variant]:
        parts = line[2:].split("\t")
        if line.startswith("# ") and parts[0] in WEIGHT_COMPONENTS:
            counts[parts[0]] = {"tensors": int(parts[1]), "params": int(parts[2]), "sd_elements": int(parts[3])}
    assert counts == summary
    text = "\n".join(described[variant])
    # paper: 32B total (two video experts + audio DiT + bridge), 18B active (one video expert)
    assert "# backbone total (video_dit + video_dit_2 + audio_dit + dual_tower_bridge)\t32656733440\t(32.66B)" in text
    assert "# active per step (one video expert + audio_dit + dual_tower_bridge)\t18367832256\t(18.37B)" in text
    assert "# all components\t38836075444\t(38.84B)" in text


def test_cli_on_configs_only(shared_dir, capsys):
    assert main_describe([str(shared_dir / "spec" / "configs" / "MOVA-360p")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "video_dit\tpatch_embedding.weight\t[5120, 36, 1, 2, 2]\tBF16" in out
    assert "text_encoder\tshared.weight\t[256384, 4096]\tBF16" in out


def test_check_reports_the_configs_only_folder_as_incomplete(shared_dir, capsys):
    assert main_describe([str(shared_dir / "spec" / "configs" / "MOVA-360p"), "--check"]) == 1
    err = capsys.readouterr().err
    assert "tokenizer: component folder is missing" in err
    assert "video_dit: no *.safetensors weight file in the folder" in err  # weights checked too


def test_check_on_the_parity_checkpoint_reads_header_dtypes(shared_dir, capsys):
    lines, problems = describe(shared_dir / "parity" / "checkpoint", check=True)
    assert problems == []
    assert "video_dit\tpatch_embedding.weight\t[72, 12, 1, 2, 2]\tF32" in lines
    assert "text_encoder\tencoder.embed_tokens.weight\t[220, 32]\tF32" in lines  # tied, stored as shared.weight
    assert "audio_vae\tdecoder.model.0.weight\t[16, 8, 7]\tF32" in lines  # stored as weight_g/weight_v
    assert main_describe([str(shared_dir / "parity" / "checkpoint"), "--check", "--summary"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "# component\ttensors\tparams\tsd_elements" and all(line.startswith("#") for line in out)


def test_check_lists_every_problem_and_exits_1(shared_dir, tmp_path, capsys):
    src = shared_dir / "parity" / "checkpoint"
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    for folder in [dst, *dst.iterdir()]:
        folder.chmod(0o755)
    (dst / "audio_dit" / "diffusion_pytorch_model.safetensors").unlink()
    assert main_describe([str(dst), "--check"]) == 1
    err = capsys.readouterr().err
    assert "PROBLEM audio_dit: no *.safetensors weight file in the folder" in err
    assert err.strip().endswith(f"1 problem(s) in {dst}")


def test_not_a_checkpoint(tmp_path):
    lines, problems = describe(tmp_path)
    assert lines == [] and "not a MOVA checkpoint" in str(problems[0])
    assert main_describe([str(tmp_path)]) == 1
