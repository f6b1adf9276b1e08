"""`python -m mova_model quantize SRC DST --format gguf --type T`: a complete checkpoint folder, the community's
keep-high-precision list, F16 for rows the block size does not divide, progress, atomic output."""

import os

import pytest
import torch

from mova_model.checkpoint.gguf_store import GGUFStore
from mova_model.checkpoint.weights import SafetensorsStore
from mova_model.memory import quantize as quantize_module
from mova_model.memory.gguf_quantize import gguf_tensor_type, keeps_precision
from mova_model.memory.quantize import quantize_checkpoint, quantize_cli
from mova_model.sampling.pipeline import MovaPipeline

DITS = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")
CLIP = dict(width=32, height=32, num_frames=5, video_fps=8.0)


@pytest.fixture(scope="module")
def q8_folder(tiny_checkpoint_dir, tmp_path_factory):
    dst = tmp_path_factory.mktemp("q8") / "MOVA-tiny-Q8_0"
    code = quantize_cli([str(tiny_checkpoint_dir), str(dst), "--format", "gguf", "--type", "q8_0"])
    assert code == 0
    return dst


def test_the_folder_is_complete_with_one_gguf_per_dit(q8_folder, tiny_checkpoint_dir, capfd):
    for component in DITS:
        names = sorted(p.name for p in (q8_folder / component).iterdir())
        assert names == sorted(["config.json", f"{component}.gguf"])
        store = GGUFStore(q8_folder / component, component).check()
        source = SafetensorsStore(tiny_checkpoint_dir / component, component)
        assert set(store.tensors) == set(source.tensors)  # the state-dict keys, unchanged
        assert all(store.info(k).shape == source.info(k).shape for k in source.tensors)
    assert GGUFStore(q8_folder / "video_dit", "video_dit").architecture == "wan"
    for component in ("text_encoder", "video_vae", "audio_vae", "tokenizer", "scheduler"):
        for path in (tiny_checkpoint_dir / component).iterdir():
            copy = q8_folder / component / path.name
            assert copy.read_bytes() == path.read_bytes()
    weights = next((tiny_checkpoint_dir / "text_encoder").glob("*.safetensors"))
    assert os.stat(weights).st_ino == os.stat(q8_folder / "text_encoder" / weights.name).st_ino  # linked
    assert not (q8_folder.parent / (q8_folder.name + ".partial")).exists()


def test_keep_list_and_f16_for_rows_the_block_does_not_divide(q8_folder):
    store = GGUFStore(q8_folder / "video_dit", "video_dit")
    types = {k: info.dtype for k, info in store.tensors.items()}
    assert types["blocks.0.ffn.2.weight"] == "Q8_0"  # [48, 96]: rows of 96 are 3 blocks
    assert types["blocks.0.self_attn.q.weight"] == "F16"  # [48, 48]: 48 is no whole number of 32-weight blocks
    for key in ("blocks.0.modulation", "blocks.0.norm3.weight", "blocks.0.self_attn.q.bias", "patch_embedding.weight",
                "text_embedding.0.weight", "time_embedding.0.weight", "time_projection.1.weight", "head.head.weight",
                "blocks.0.self_attn.norm_q.weight"):
        assert types[key] == "F32", key  # kept as stored (the tiny checkpoint stores float32)
    assert gguf_tensor_type("blocks.3.ffn.0.weight", (13824, 5120), torch.bfloat16, "Q4_0") == "Q4_0"
    assert gguf_tensor_type("head.head.weight", (64, 5120), torch.bfloat16, "Q4_0") == "BF16"
    assert keeps_precision("audio_to_video_conditioners.0.inner.norm_q.weight", (5120,))
    assert not keeps_precision("audio_to_video_conditioners.0.inner.q.weight", (5120, 5120))


def test_quantized_checkpoint_samples_close_to_the_original(q8_folder, tiny_checkpoint_dir):
    # own pipelines: the session's tiny_pipe / tiny_cond are left to the tests that count what they build
    original = MovaPipeline.from_pretrained(tiny_checkpoint_dir)
    cond = original.prepare_conditioning("a man says hello in the kitchen", "static, blurry", None, **CLIP)
    reference = original.sample(cond, seed=3, steps=2)
    got = MovaPipeline.from_pretrained(q8_folder).sample(cond, seed=3, steps=2)
    relative = float((got.video - reference.video).norm() / reference.video.norm())
    assert 0 < relative < 0.02, relative


def test_progress_is_shown_and_types_reported(tiny_checkpoint_dir, tmp_path, capsys):
    code = quantize_cli([str(tiny_checkpoint_dir), str(tmp_path / "bf16"), "--format", "gguf", "--type", "BF16",
                         "--components", "audio_dit"])
    out, err = capsys.readouterr()
    assert code == 0 and "GGUF BF16:" in err and "100.0 %" in err
    assert "audio_dit" in out and "BF16" in out
    assert not list((tmp_path / "bf16" / "video_dit").glob("*.gguf"))  # not chosen: kept as safetensors


@pytest.mark.parametrize("args, words", [
    (["--type", "Q4_K"], ["Q4_K", "llama.cpp", "README"]),
    (["--type", "IQ2_XS"], ["IQ2_XS", "Q8_0"]),
])
def test_refused_types_say_what_is_allowed(tiny_checkpoint_dir, tmp_path, capsys, args, words):
    code = quantize_cli([str(tiny_checkpoint_dir), str(tmp_path / "out"), "--format", "gguf", *args])
    err = capsys.readouterr().err
    assert code == 2 and all(w in err for w in words), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_gguf_source_is_refused(q8_folder, tmp_path, capsys):
    code = quantize_cli([str(q8_folder), str(tmp_path / "again"), "--format", "gguf"])
    assert code == 2 and "already holds a GGUF file" in capsys.readouterr().err


def test_failure_midway_leaves_no_output(tiny_checkpoint_dir, tmp_path, monkeypatch):
    from mova_model.memory import gguf_quantize

    calls = []
    real = gguf_quantize.write_gguf_component

    def failing(store, dst, component, target, progress=None):
        calls.append(component)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(store, dst, component, target, progress)

    monkeypatch.setattr(gguf_quantize, "write_gguf_component", failing)
    with pytest.raises(OSError, match="disk full"):
        quantize_checkpoint(tiny_checkpoint_dir, tmp_path / "out", format_name="gguf", gguf_type="Q8_0")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    assert quantize_module.quantize_checkpoint is quantize_checkpoint
    # with --overwrite, the folder being replaced stays whole until the new copy is complete
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("the user's earlier copy")
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        quantize_checkpoint(tiny_checkpoint_dir, tmp_path / "out", overwrite=True, format_name="gguf",
                            gguf_type="Q8_0")
    assert (tmp_path / "out" / "mine.txt").read_text() == "the user's earlier copy"
    monkeypatch.setattr(gguf_quantize, "write_gguf_component", real)
    quantize_checkpoint(tiny_checkpoint_dir, tmp_path / "out", overwrite=True, format_name="gguf", gguf_type="Q8_0")
    assert not (tmp_path / "out" / "mine.txt").exists() and (tmp_path / "out" / "video_dit" / "video_dit.gguf").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_torch_q8_0_is_the_gguf_package_quantizer_bit_for_bit():
    import gguf
    import numpy as np

    from mova_model.memory.gguf_quantize import quantize_q8_0

    x = np.random.default_rng(0).standard_normal((70, 1024)).astype(np.float32)
    x[0, :32] = 0  # an all-zero block
    x[1, :64] = np.linspace(-2.54, 2.54, 64)  # codes at exact halves
    x[2, :32] = 1e-30  # tiny
    for values in (x, torch.from_numpy(x).to(torch.bfloat16).float().numpy()):
        expected = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
        assert np.array_equal(quantize_q8_0(torch.from_numpy(values)).numpy(), expected)
