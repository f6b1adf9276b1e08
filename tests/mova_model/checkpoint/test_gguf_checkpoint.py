"""GGUF component folders: same latents as safetensors holding the dequantized values (several types in one file,
5-D patch embeddings stored reshaped and as-is), streamed = resident, memory-mapped reading, `describe --check`,
files changed between runs, and one readable message (nothing built) for each kind of bad file."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from gguf_helpers import K_QUANTS, PYTHON_QUANTIZED, gguf_types, write_gguf_pair
from mova_model.checkpoint.describe import describe
from mova_model.checkpoint.folder import MovaCheckpoint, checkpoint_problems
from mova_model.checkpoint.gguf_store import GGUFStore
from mova_model.checkpoint.gguf_write import GGUFTensor, write_gguf_file
from mova_model.checkpoint.tiny import TinySpec, write_tiny_checkpoint
from mova_model.checkpoint.weights import CheckpointError
from mova_model.memory.layout import BlockLayout
from mova_model.memory.quantize import quantize_checkpoint
from mova_model.sampling.pipeline import MovaPipeline

CLIP = dict(width=32, height=32, num_frames=5, video_fps=8.0)


@pytest.fixture(scope="module")
def gguf_pair(tmp_path_factory):
    return write_gguf_pair(tmp_path_factory.mktemp("gguf_pair"))


@pytest.fixture(scope="module")
def q8_checkpoint(tmp_path_factory):
    """A tiny checkpoint (64-wide towers) whose four DiT components are Q8_0 GGUF files made by `quantize`."""
    root = tmp_path_factory.mktemp("gguf_q8")
    source = write_tiny_checkpoint(root / "source", spec=TinySpec(video_dim=64, audio_dim=64))
    return quantize_checkpoint(source, root / "q8", format_name="gguf", gguf_type="Q8_0") and root / "q8"


def _sample(folder: Path, steps: int = 3, **kw):
    pipe = MovaPipeline.from_pretrained(folder)
    cond = pipe.prepare_conditioning("a man says hello in the kitchen", "static", None, **CLIP)
    return pipe, cond, pipe.sample(cond, seed=7, steps=steps, **kw)


def test_gguf_checkpoint_gives_the_latents_of_its_dequantized_safetensors_twin(gguf_pair):
    gguf_dir, twin = gguf_pair
    types = gguf_types(gguf_dir, "video_dit")
    assert set(K_QUANTS + PYTHON_QUANTIZED) <= set(types) and "F32" in types  # every type in one file
    _, _, got = _sample(gguf_dir)
    _, _, expected = _sample(twin)
    assert torch.equal(got.video, expected.video) and torch.equal(got.audio, expected.audio)


def test_layers_keep_their_blocks_and_other_quantized_tensors_are_expanded(gguf_pair):
    gguf_dir, _ = gguf_pair
    checkpoint = MovaCheckpoint.open(gguf_dir, validate=True)
    store = checkpoint.store("video_dit")
    assert isinstance(store, GGUFStore) and store.architecture == "wan"
    module = checkpoint.build("video_dit")
    patch = module.patch_embedding  # 5-D conv weight stored as Q4_K rows of 256 with comfy.gguf.orig_shape
    assert patch.gguf_type == "Q4_K" and patch.gguf_shape == tuple(store.info("patch_embedding.weight").shape)
    assert len(patch.gguf_shape) == 5 and patch.weight.dtype == torch.uint8
    assert store.info("blocks.0.modulation").dtype == "Q8_0"
    assert module.blocks[0].modulation.dtype == torch.float32  # a table, not a layer: expanded once at build
    quantized = [m for m in module.modules() if getattr(m, "gguf_type", None)]
    assert len(quantized) == len([k for k, t in store.quantized_keys().items() if k != "blocks.0.modulation"])
    second = checkpoint.store("video_dit_2")  # its 5-D patch embedding is stored as-is (F32, no orig_shape)
    assert second.info("patch_embedding.weight").dtype == "F32" and len(second.info("patch_embedding.weight").shape) == 5


def test_tensors_are_memory_mapped_from_the_file(gguf_pair):
    store = GGUFStore(gguf_pair[0] / "video_dit", "video_dit").check()
    mapped = store._reader.data
    begin, end = mapped.ctypes.data, mapped.ctypes.data + mapped.nbytes
    tensors = store.load()
    assert all(begin <= t.data_ptr() and t.data_ptr() + t.numel() * t.element_size() <= end for t in tensors.values())
    pipe = MovaPipeline.from_pretrained(gguf_pair[0])
    module = pipe.cache.get("video_dit")  # built for CPU compute: the quantized blocks stay in the file's pages
    mapped = pipe.checkpoint.store("video_dit")._reader.data
    begin, end = mapped.ctypes.data, mapped.ctypes.data + mapped.nbytes
    blocks = [m.weight for m in module.modules() if getattr(m, "gguf_type", None)]
    assert blocks and all(begin <= w.data_ptr() < end for w in blocks)


def test_streamed_gguf_run_equals_resident_and_moves_the_quantized_bytes(gguf_pair):
    import dataclasses

    gguf_dir, twin = gguf_pair
    pipe, cond, resident = _sample(gguf_dir, steps=2)
    plan = pipe.memory_plan(cond.width, cond.height, cond.num_frames, cond.video_fps, steps=2, vram_bytes=64e9)
    assert plan.inputs.stored == "gguf" and plan.inputs.weights.startswith("gguf:")
    modules = [dataclasses.replace(m, resident=(i % 2 == 0)) for i, m in enumerate(plan.modules)]
    streamed_plan = dataclasses.replace(plan, mode="streamed", fits=True, modules=modules, prefetch_depth=1)
    streamed = pipe.sample(cond, seed=7, steps=2, plan=streamed_plan)
    assert torch.equal(resident.video, streamed.video) and torch.equal(resident.audio, streamed.audio)
    block = MovaCheckpoint.open(gguf_dir).build("video_dit").blocks[1]
    twin_block = MovaCheckpoint.open(twin).build("video_dit", dtype=torch.bfloat16).blocks[1]
    assert BlockLayout(block, "gguf").nbytes < BlockLayout(twin_block, "bf16").nbytes / 2


def test_describe_check_reads_gguf_types(q8_checkpoint):
    lines, problems = describe(q8_checkpoint, check=True)
    assert problems == []
    rows = {line.split("\t")[1]: line.split("\t")[3] for line in lines if line.startswith("video_dit\t")}
    assert rows["blocks.0.self_attn.q.weight"] == "Q8_0" and rows["blocks.0.norm3.weight"] == "F32"
    assert rows["patch_embedding.weight"] == "F32"


def _rewrite(folder: Path, component: str, edit=None, architecture: str = "wan") -> Path:
    """Write the component's GGUF again, with `edit(list of GGUFTensor)` applied."""
    path = folder / component / f"{component}.gguf"
    store = GGUFStore(folder / component, component).check()
    loaded = store.load()
    entries = []
    for key, info in store.tensors.items():
        data = loaded[key]
        data = data.view(torch.uint8) if info.dtype == "BF16" else data
        entries.append(GGUFTensor(key, info.dtype, tuple(info.shape), lambda d=data: d.numpy().copy()))
    if edit is not None:
        entries = edit(entries)
    fresh = path.with_suffix(".new")
    write_gguf_file(fresh, entries, architecture)
    del store, loaded
    os.replace(fresh, path)
    return path


def _bad_copy(q8_checkpoint, tmp_path) -> Path:
    folder = tmp_path / "bad"
    shutil.copytree(q8_checkpoint, folder)
    return folder


def _rename(entries):
    for entry in entries:
        if entry.name == "blocks.0.self_attn.q.weight":
            entry.name = "blocks.0.self_attn.query.weight"
    return entries


def _reshape(entries):
    for entry in entries:
        if entry.name == "blocks.1.norm3.weight":  # F32 [64] stored as [32]
            values = entry.make()[:32]
            entry.shape, entry.make = (32,), (lambda v=values: v)
    return entries


def _unsupported(folder: Path):
    path = folder / "video_dit" / "video_dit.gguf"
    store = GGUFStore(folder / "video_dit", "video_dit").check()
    loaded = store.load()
    writer = gguf.GGUFWriter(path=None, arch="wan")
    for key, info in store.tensors.items():
        data = loaded[key].numpy().copy()
        if key == "blocks.0.ffn.0.weight":  # Q8_0 bytes relabelled as IQ4_NL (another 32-weight type)
            blocks = np.zeros((info.numel // 32, 18), dtype=np.uint8)
            writer.add_tensor(key, blocks.reshape(info.shape[0], -1), raw_dtype=gguf.GGMLQuantizationType.IQ4_NL)
        else:
            writer.add_tensor(key, data, raw_dtype=gguf.GGMLQuantizationType[info.dtype])
    del store, loaded
    fresh = path.with_suffix(".new")
    writer.write_header_to_file(path=fresh)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(fresh, path)


def _truncate(folder: Path):
    path = folder / "video_dit" / "video_dit.gguf"
    os.truncate(path, path.stat().st_size * 2 // 3)


def _foreign(folder: Path):
    path = folder / "video_dit" / "video_dit.gguf"
    flux = [GGUFTensor("double_blocks.0.img_attn.qkv.weight", "F16", (96, 32), lambda: np.zeros((96, 32), np.float16)),
            GGUFTensor("img_in.weight", "F32", (32, 64), lambda: np.zeros((32, 64), np.float32))]
    write_gguf_file(path, flux, "flux")


def _not_gguf(folder: Path):
    (folder / "video_dit" / "video_dit.gguf").write_bytes(b"PK\x03\x04" + bytes(4096))


def _two_files(folder: Path):
    shutil.copy(folder / "video_dit" / "video_dit.gguf", folder / "video_dit" / "video_dit-00002-of-00002.gguf")


BAD_FILES = {
    "wrong key": (lambda f: _rewrite(f, "video_dit", _rename), ["blocks.0.self_attn.query.weight", "unexpected",
                                                                "blocks.0.self_attn.q.weight", "missing"]),
    "wrong shape": (lambda f: _rewrite(f, "video_dit", _reshape), ["blocks.1.norm3.weight", "wrong shape", "[64]", "[32]"]),
    "unsupported type": (_unsupported, ["blocks.0.ffn.0.weight", "unsupported GGUF tensor type", "IQ4_NL", "Q4_K"]),
    "truncated": (_truncate, ["corrupt or truncated GGUF file", "video_dit.gguf"]),
    "another architecture": (_foreign, ["another model", "'flux'", "'wan'"]),
    "not a GGUF": (_not_gguf, ["not a GGUF file", "video_dit.gguf"]),
    "two GGUF files": (_two_files, ["exactly one .gguf file", "video_dit-00002-of-00002.gguf"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_gguf_file_gives_one_readable_message_and_builds_nothing(case, q8_checkpoint, tmp_path, monkeypatch):
    folder = _bad_copy(q8_checkpoint, tmp_path)
    damage, words = BAD_FILES[case]
    damage(folder)
    loads = []
    monkeypatch.setattr(GGUFStore, "load", lambda self, keys=None: loads.append(self.component))
    with pytest.raises(CheckpointError) as info:
        MovaPipeline.from_pretrained(folder)
    message = str(info.value)
    assert "video_dit" in message and all(word in message for word in words), message
    assert "Traceback" not in message and len(message.splitlines()) <= 4
    assert all(p.component == "video_dit" for p in checkpoint_problems(folder))
    checkpoint = MovaCheckpoint(folder, MovaCheckpoint.open(q8_checkpoint).configs)
    with pytest.raises(CheckpointError):
        checkpoint.build("video_dit")
    assert loads == []  # no weight was read


def test_a_gguf_beside_safetensors_is_refused(q8_checkpoint, tiny_checkpoint_dir, tmp_path):
    folder = _bad_copy(q8_checkpoint, tmp_path)
    for shard in (tiny_checkpoint_dir / "audio_dit").glob("*.safetensors"):
        shutil.copy(shard, folder / "audio_dit" / shard.name)
    problems = checkpoint_problems(folder)
    assert len(problems) == 1 and "both GGUF and safetensors" in str(problems[0]) and problems[0].component == "audio_dit"


def test_orig_shape_must_hold_the_tensors_elements(q8_checkpoint, tmp_path):
    folder = _bad_copy(q8_checkpoint, tmp_path)
    path = folder / "video_dit" / "video_dit.gguf"
    store = GGUFStore(folder / "video_dit", "video_dit").check()
    loaded = store.load()
    writer = gguf.GGUFWriter(path=None, arch="wan")
    for key, info in store.tensors.items():
        writer.add_tensor(key, loaded[key].numpy().copy(), raw_dtype=gguf.GGMLQuantizationType[info.dtype])
    writer.add_array("comfy.gguf.orig_shape.patch_embedding.weight", [64, 3, 1, 2, 2])
    del store, loaded
    writer.write_header_to_file(path=path.with_suffix(".new"))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(path.with_suffix(".new"), path)
    problems = checkpoint_problems(folder)
    assert len(problems) == 1 and "orig_shape" in str(problems[0]) and "patch_embedding.weight" in str(problems[0])


CHILD = textwrap.dedent(r"""
    import json, os, pathlib, sys
    import torch
    from mova_model.checkpoint.weights import CheckpointError
    from mova_model.sampling.pipeline import MovaPipeline

    folder = pathlib.Path(sys.argv[1])
    pipe = MovaPipeline.from_pretrained(folder)
    cond = pipe.prepare_conditioning("a dog barks", "", None, width=32, height=32, num_frames=5, video_fps=8.0)
    first = pipe.sample(cond, seed=3, steps=3)
    path = folder / "video_dit_2" / "video_dit_2.gguf"
    data = path.read_bytes()
    os.truncate(path, len(data) // 2)
    report = {"errors": []}
    for _ in range(2):
        try:
            pipe.sample(cond, seed=3, steps=3)
            report["errors"].append(None)
        except CheckpointError as exc:
            report["errors"].append(str(exc))
    path.write_bytes(data)
    again = pipe.sample(cond, seed=3, steps=3)
    report["restored_equal"] = bool(torch.equal(first.video, again.video) and torch.equal(first.audio, again.audio))
    print("REPORT " + json.dumps(report))
""")


def test_gguf_file_changed_between_runs_is_checked_again(q8_checkpoint, tmp_path, repo_root):
    folder = _bad_copy(q8_checkpoint, tmp_path)
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    result = subprocess.run([sys.executable, "-c", CHILD, str(folder)], cwd=repo_root, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("REPORT "))[7:])
    assert all(e and "video_dit_2" in e and "truncated" in e for e in report["errors"]), report
    assert report["restored_equal"]


LLAMA_NAMES = (("shared.", "token_embd."), ("encoder.final_layer_norm.", "enc.output_norm."),
               ("layer.0.SelfAttention.relative_attention_bias.", "attn_rel_b."),
               ("layer.0.SelfAttention.q.", "attn_q."), ("layer.0.SelfAttention.k.", "attn_k."),
               ("layer.0.SelfAttention.v.", "attn_v."), ("layer.0.SelfAttention.o.", "attn_o."),
               ("layer.0.layer_norm.", "attn_norm."), ("layer.1.DenseReluDense.wi_0.", "ffn_gate."),
               ("layer.1.DenseReluDense.wi_1.", "ffn_up."), ("layer.1.DenseReluDense.wo.", "ffn_down."),
               ("layer.1.layer_norm.", "ffn_norm."), ("encoder.block.", "enc.blk."))


def test_umt5_gguf_with_llama_cpp_names_encodes_like_its_twin(tmp_path):
    """A text encoder GGUF as llama.cpp names T5 tensors (city96's UMT5 files), matrices and embedding in Q8_0."""
    from safetensors.torch import save_file

    from mova_model.memory.gguf_quantize import encode
    from mova_model.network.gguf_dequant import dequantize
    from mova_model.checkpoint.weights import SafetensorsStore

    source = write_tiny_checkpoint(tmp_path / "source")
    store = SafetensorsStore(source / "text_encoder", "text_encoder").check()
    entries, values = [], {}
    for key in sorted(store.tensors):
        tensor = store.get_tensor(key)
        qtype = "Q8_0" if tensor.dim() == 2 and "relative_attention_bias" not in key else "F32"
        data = encode(tensor, qtype)
        values[key] = (dequantize(torch.from_numpy(data.reshape(-1).copy()), qtype, tensor.shape) if qtype == "Q8_0"
                       else torch.from_numpy(data.copy()))
        name = key
        for official, llama in LLAMA_NAMES:
            name = name.replace(official, llama)
        entries.append(GGUFTensor(name, qtype, tuple(tensor.shape), lambda d=data: d))
    gguf_dir, twin = tmp_path / "gguf", tmp_path / "twin"
    shutil.copytree(source, gguf_dir)
    shutil.copytree(source, twin)
    for path in (gguf_dir / "text_encoder").glob("*.safetensors"):
        path.unlink()
    write_gguf_file(gguf_dir / "text_encoder" / "umt5.gguf", entries, "t5encoder")
    save_file(values, str(twin / "text_encoder" / "model.safetensors"))
    assert any(e.name.startswith("enc.blk.0.attn_q") for e in entries)
    prompts = ["a man says hello in the kitchen", "static"]
    got = MovaPipeline.from_pretrained(gguf_dir).encode_prompts(prompts)
    expected = MovaPipeline.from_pretrained(twin).encode_prompts(prompts)
    assert torch.equal(got, expected)
    built = MovaCheckpoint.open(gguf_dir).build("text_encoder")
    assert any(getattr(m, "gguf_type", None) == "Q8_0" for m in built.modules())


def test_wan_lora_with_deltas_on_gguf_layers_equals_it_on_the_dequantized_twin(gguf_pair, tmp_path):
    """LoRA pairs (a conv pair on the patch embedding included) and `.diff` deltas are checked against a GGUF
    layer's logical shape, not its uint8 block shape, and give the twin's latents."""
    from mova_model.network.lora import LoraPatch
    from wan_lora_files import DIFF_ONLY_TARGET, expert_state, random_wan_lora, shapes_of, write

    gguf_dir, twin = gguf_pair
    lora = random_wan_lora(shapes_of(expert_state(twin, "video_dit")), seed=4)
    assert DIFF_ONLY_TARGET in lora.deltas and "patch_embedding" in lora.pairs
    write(lora, tmp_path / "wan.safetensors", "comfy_lora_AB")
    results = []
    for folder in (gguf_dir, twin):
        pipe = MovaPipeline.from_pretrained(folder)
        patched = pipe.with_lora(LoraPatch(pipe.load_lora(tmp_path / "wan.safetensors", expert="high"), 0.7))
        cond = patched.prepare_conditioning("a man says hello in the kitchen", "static", None, **CLIP)
        results.append(patched.sample(cond, seed=7, steps=2))
    assert torch.equal(results[0].video, results[1].video) and torch.equal(results[0].audio, results[1].audio)
