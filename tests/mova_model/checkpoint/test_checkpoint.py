"""Tests of `mova_model.checkpoint.folder` on the tiny parity checkpoint and on broken copies of it.

Each broken-checkpoint test copies `shared/parity/checkpoint` into `tmp_path`, breaks one thing, and checks
that opening/validating raises one `CheckpointError` naming the component, the key, expected vs found and
the file.
"""

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mova_model.checkpoint.folder import (COMPONENT_BUILDERS, WEIGHT_COMPONENTS, CheckpointError, MovaCheckpoint,
                                   checkpoint_problems)
from mova_model.checkpoint.configs import VideoDiTConfig
from mova_model.network.ops import FP8_DTYPE, Operations, init_random_

VIDEO_SHARD_1 = "diffusion_pytorch_model-00001-of-00003.safetensors"


@pytest.fixture(scope="session")
def parity_checkpoint(shared_dir) -> Path:
    return shared_dir / "parity" / "checkpoint"


@pytest.fixture()
def ckpt(parity_checkpoint, tmp_path) -> Path:
    """A writable copy of the parity checkpoint."""
    dst = tmp_path / "MOVA-tiny"
    for src in sorted(parity_checkpoint.rglob("*")):
        target = dst / src.relative_to(parity_checkpoint)
        if src.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
    return dst


def rewrite(path: Path, edit) -> None:
    """Rewrite a safetensors file with `edit(tensors) -> tensors` applied."""
    tensors = {k: v.clone() for k, v in load_file(str(path)).items()}
    tensors = edit(tensors)
    path.unlink()
    save_file(tensors, str(path), metadata={"format": "pt"})


def validation_error(folder: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        MovaCheckpoint.open(folder).validate()
    return str(info.value)


def single_file(folder: Path) -> Path:
    (path,) = sorted(folder.glob("*.safetensors"))
    return path


# --- the sound checkpoint -----------------------------------------------------------------------------

def test_parity_checkpoint_validates_and_matches_its_headers(parity_checkpoint):
    checkpoint = MovaCheckpoint.open(parity_checkpoint, validate=True)
    assert checkpoint.problems() == []
    video = checkpoint.store("video_dit")
    assert len(video.files) == 3 and video.info("blocks.0.self_attn.q.weight").file.name == VIDEO_SHARD_1
    assert set(checkpoint.expected_tensors("video_dit")) == set(video.keys())
    shape, dtype = checkpoint.expected_tensors("video_dit")["patch_embedding.weight"]
    assert shape == (72, 12, 1, 2, 2) and dtype == torch.float32
    # the parity text encoder stores only shared.weight; encoder.embed_tokens.weight is tied to it
    assert "encoder.embed_tokens.weight" in checkpoint.expected_tensors("text_encoder")
    assert "encoder.embed_tokens.weight" not in checkpoint.store("text_encoder")
    # the parity DAC stores the weight-norm layout
    assert any(k.endswith(".weight_g") for k in checkpoint.store("audio_vae").keys())


def test_builders_table_covers_every_weight_component():
    assert set(COMPONENT_BUILDERS) == set(WEIGHT_COMPONENTS) == {
        "text_encoder", "video_vae", "audio_vae", "video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge"}


@pytest.mark.parametrize("component", WEIGHT_COMPONENTS)
def test_build_assigns_the_stored_weights(parity_checkpoint, component):
    checkpoint = MovaCheckpoint.open(parity_checkpoint)
    module = checkpoint.build(component)
    stored = checkpoint.store(component).load()
    state = module.state_dict()
    assert set(state) == set(checkpoint.expected_tensors(component))
    for key, value in stored.items():
        if key in state:
            assert torch.equal(state[key], value), key
    assert not module.training and not any(p.requires_grad for p in module.parameters())
    assert not any(t.is_meta for t in list(module.parameters()) + list(module.buffers()))
    assert all(p.dtype == torch.float32 for p in module.parameters())  # kept as stored (F32)


def test_build_casts_only_when_asked(parity_checkpoint):
    checkpoint = MovaCheckpoint.open(parity_checkpoint)
    module = checkpoint.build("audio_dit", dtype=torch.bfloat16)
    assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    stored = checkpoint.store("audio_dit").get_tensor("head.head.weight")
    assert torch.equal(module.state_dict()["head.head.weight"], stored.to(torch.bfloat16))


def test_text_encoder_build_keeps_the_tie(parity_checkpoint):
    module = MovaCheckpoint.open(parity_checkpoint).build("text_encoder")
    assert module.shared.weight is module.encoder.embed_tokens.weight


def test_weight_norm_dac_is_fused_and_plain_layout_validates_too(ckpt):
    from mova_model.network.audio_vae import fuse_weight_norm

    fused = MovaCheckpoint.open(ckpt).build("audio_vae").state_dict()
    path = single_file(ckpt / "audio_vae")
    rewrite(path, fuse_weight_norm)
    assert not any(k.endswith("weight_g") for k in load_file(str(path)))
    plain = MovaCheckpoint.open(ckpt, validate=True).build("audio_vae").state_dict()
    assert set(plain) == set(fused)
    for key in plain:
        assert torch.equal(plain[key], fused[key]), key


def test_text_encoder_with_embed_tokens_stored_validates(ckpt):
    path = single_file(ckpt / "text_encoder")
    rewrite(path, lambda t: {**t, "encoder.embed_tokens.weight": t["shared.weight"].clone()})
    MovaCheckpoint.open(ckpt, validate=True)
    rewrite(path, lambda t: {k: v for k, v in t.items() if k != "shared.weight"})
    module = MovaCheckpoint.open(ckpt, validate=True).build("text_encoder")
    assert module.shared.weight is module.encoder.embed_tokens.weight


def test_bf16_weights_are_accepted_and_kept(ckpt):
    path = single_file(ckpt / "audio_dit")
    rewrite(path, lambda t: {k: v.to(torch.bfloat16) for k, v in t.items()})
    checkpoint = MovaCheckpoint.open(ckpt, validate=True)
    assert {p.dtype for p in checkpoint.build("audio_dit").parameters()} == {torch.bfloat16}
    assert {p.dtype for p in checkpoint.build("audio_dit", dtype=torch.float32).parameters()} == {torch.float32}


def test_sharded_folder_without_index_validates(ckpt):
    (ckpt / "video_dit" / "diffusion_pytorch_model.safetensors.index.json").unlink()
    MovaCheckpoint.open(ckpt, validate=True).build("video_dit")


def test_fp8_weight_with_scale_becomes_the_layer_weight_scale(ckpt):
    key = "blocks.0.self_attn.q.weight"
    path = single_file(ckpt / "audio_dit")
    original = load_file(str(path))[key]
    scale = original.abs().max() / 448.0

    def quantize(t):
        t[key] = (original / scale).to(FP8_DTYPE)
        t[key + "_scale"] = scale.reshape(())
        return t

    rewrite(path, quantize)
    module = MovaCheckpoint.open(ckpt, validate=True).build("audio_dit", dtype=torch.bfloat16)
    layer = module.get_submodule("blocks.0.self_attn.q")
    assert layer.weight.dtype == FP8_DTYPE and layer.weight_scale.dtype == torch.float32
    assert torch.equal(layer.weight_scale, scale.reshape(()))
    x = torch.randn(2, original.shape[1])
    reference = torch.nn.functional.linear(x, original, layer.bias.float())
    assert torch.allclose(layer(x), reference, atol=0.1 * reference.abs().max().item())
    assert key + "_scale" in module.state_dict()


def test_validation_reads_only_headers(parity_checkpoint, monkeypatch):
    import safetensors
    import safetensors.torch

    def refuse(*args, **kwargs):
        raise AssertionError("a weight file was opened for reading tensors during validation")

    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    MovaCheckpoint.open(parity_checkpoint, validate=True)


# --- broken checkpoints: one error each -----------------------------------------------------------------

def test_missing_tensor(ckpt):
    key = "blocks.1.self_attn.q.weight"
    rewrite(single_file(ckpt / "video_dit_2"), lambda t: {k: v for k, v in t.items() if k != key})
    message = validation_error(ckpt)
    assert f"video_dit_2 / {key}: missing tensor (expected [72, 72], found absent)" in message
    assert str(ckpt / "video_dit_2") in message


def test_unexpected_tensor(ckpt):
    path = single_file(ckpt / "audio_dit")
    rewrite(path, lambda t: {**t, "blocks.0.adapter.weight": torch.zeros(4, 4)})
    message = validation_error(ckpt)
    assert "audio_dit / blocks.0.adapter.weight: unexpected tensor" in message
    assert "(expected absent, found [4, 4] F32)" in message and str(path) in message


def test_wrong_shape(ckpt):
    key = "audio_to_video_conditioners.0.inner.q.weight"
    path = single_file(ckpt / "dual_tower_bridge")
    shape = list(load_file(str(path))[key].shape)
    rewrite(path, lambda t: {**t, key: torch.zeros(shape[0], shape[1] + 1)})
    message = validation_error(ckpt)
    assert f"dual_tower_bridge / {key}: wrong shape (expected [{shape[0]}, {shape[1]}], found [{shape[0]}, {shape[1] + 1}])" in message
    assert str(path) in message


def test_truncated_shard(ckpt):
    path = ckpt / "video_dit" / VIDEO_SHARD_1
    path.write_bytes(path.read_bytes()[:-1000])
    message = validation_error(ckpt)
    assert "video_dit / " in message and "past the end of the file" in message and str(path) in message
    assert "expected data up to byte" in message
    with pytest.raises(CheckpointError):
        MovaCheckpoint.open(ckpt).build("video_dit")


def test_file_size_not_matching_last_offset(ckpt):
    path = single_file(ckpt / "video_vae")
    size = path.stat().st_size
    path.write_bytes(path.read_bytes() + b"\0" * 64)
    message = validation_error(ckpt)
    assert "video_vae: file size does not match the header's last data offset" in message
    assert f"(expected {size} bytes, found {size + 64} bytes) [{path}]" in message


def test_corrupt_header_json(ckpt):
    path = single_file(ckpt / "audio_vae")
    data = bytearray(path.read_bytes())
    data[10:20] = b"\xff" * 10
    path.write_bytes(bytes(data))
    message = validation_error(ckpt)
    assert "audio_vae: corrupt safetensors header: not valid JSON" in message and str(path) in message


def test_header_length_beyond_file_size(ckpt):
    path = single_file(ckpt / "text_encoder")
    path.write_bytes(struct.pack("<Q", 1 << 40) + path.read_bytes()[8:])
    message = validation_error(ckpt)
    assert "text_encoder: corrupt or truncated safetensors file: the header length runs past the end" in message
    assert f"found {1 << 40} bytes" in message and str(path) in message


def test_folder_without_model_index(ckpt):
    (ckpt / "model_index.json").unlink()
    message = validation_error(ckpt)
    assert "model_index.json: missing: this folder is not a MOVA checkpoint" in message
    assert str(ckpt / "model_index.json") in message


def test_component_folder_instead_of_checkpoint(ckpt):
    message = validation_error(ckpt / "video_dit")
    assert "looks like one component folder" in message


def test_folder_of_another_model(ckpt):
    (ckpt / "model_index.json").write_text(json.dumps({
        "_class_name": "WanImageToVideoPipeline", "transformer": ["diffusers", "WanTransformer3DModel"]}))
    message = validation_error(ckpt)
    assert "'WanImageToVideoPipeline', not 'MOVA'" in message and "not a MOVA checkpoint" in message
    assert str(ckpt / "model_index.json") in message


def test_missing_component_folder(ckpt):
    shutil.rmtree(ckpt / "audio_dit")
    shutil.rmtree(ckpt / "tokenizer")
    message = validation_error(ckpt)
    assert "audio_dit: component folder is missing (expected folder audio_dit/, found nothing)" in message
    assert "tokenizer: component folder is missing" in message and str(ckpt / "audio_dit") in message


def test_tokenizer_without_files(ckpt):
    for name in ("tokenizer.json", "spiece.model"):
        (ckpt / "tokenizer" / name).unlink()
    message = validation_error(ckpt)
    assert "tokenizer: no tokenizer file (expected tokenizer.json or spiece.model" in message


def test_config_of_another_class(ckpt):
    path = ckpt / "video_vae" / "config.json"
    config = json.loads(path.read_text())
    config["_class_name"] = "AutoencoderKL"
    path.write_text(json.dumps(config))
    message = validation_error(ckpt)
    assert "video_vae:" in message and "'AutoencoderKL'" in message and str(path) in message


def test_model_index_entry_of_another_class(ckpt):
    path = ckpt / "model_index.json"
    index = json.loads(path.read_text())
    index["audio_vae"] = ["diffusers", "AutoencoderOobleck"]
    path.write_text(json.dumps(index))
    message = validation_error(ckpt)
    assert "audio_vae: model_index.json entry names another class (expected DAC, found AutoencoderOobleck)" in message


def test_video_dit_with_another_models_shapes(ckpt):
    folder = ckpt / "video_dit"
    config = VideoDiTConfig.from_file(folder / "config.json")
    other = VideoDiTConfig.from_dict({**config.to_dict(), "dim": 96, "num_heads": 4, "ffn_dim": 160})
    module = init_random_(COMPONENT_BUILDERS["video_dit"](other, Operations(device="meta")), torch.Generator().manual_seed(0))
    for path in folder.glob("*.safetensors*"):
        path.unlink()
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "diffusion_pytorch_model.safetensors"))
    message = validation_error(ckpt)
    # the widths the headers show are compared with config.json before any skeleton is built
    assert "video_dit / dim: config.json dim does not match the weight files" in message, message
    assert "(expected 72 (config.json), found 96 (weights))" in message, message
    assert "video_dit / ffn_dim" in message and "found 160 (weights)" in message, message


def test_video_dit_with_another_models_tensor_names(ckpt):
    """Widths and layer counts agree, the keys do not: the full comparison says the weights are another model's."""
    path = next((ckpt / "video_dit").glob("*.safetensors"))
    folder = ckpt / "video_dit"
    tensors = {}
    for shard in folder.glob("*.safetensors"):
        tensors.update(load_file(str(shard)))
        shard.unlink()
    for index in folder.glob("*.index.json"):
        index.unlink()
    renamed = {k.replace("self_attn", "attn1").replace("cross_attn", "attn2"): v.contiguous() for k, v in tensors.items()}
    save_file(renamed, str(path))
    message = validation_error(ckpt)
    assert "these weights belong to another model" in message, message
    assert "and " in message.splitlines()[-1] and "more" in message.splitlines()[-1]  # capped list


def test_incomplete_weight_norm_pair(ckpt):
    path = single_file(ckpt / "audio_vae")
    rewrite(path, lambda t: {k: v for k, v in t.items() if k != "decoder.model.0.weight_g"})
    message = validation_error(ckpt)
    assert "audio_vae / decoder.model.0.weight_g: weight-norm pair is incomplete: missing tensor (expected [16, 1, 1], found absent)" in message


def test_fp8_weight_without_scale_and_fp8_norm(ckpt):
    path = single_file(ckpt / "audio_dit")

    def quantize(t):
        t["blocks.0.ffn.0.weight"] = t["blocks.0.ffn.0.weight"].to(FP8_DTYPE)
        t["blocks.0.norm3.weight"] = t["blocks.0.norm3.weight"].to(FP8_DTYPE)
        return t

    rewrite(path, quantize)
    message = validation_error(ckpt)
    assert "audio_dit / blocks.0.ffn.0.weight: F8_E4M3 weight without its scale tensor 'blocks.0.ffn.0.weight_scale'" in message
    assert "audio_dit / blocks.0.norm3.weight: unsupported dtype (expected BF16, F16 or F32, found F8_E4M3)" in message


def test_index_disagreeing_with_shards(ckpt):
    index_path = ckpt / "video_dit" / "diffusion_pytorch_model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    key = "blocks.0.self_attn.q.weight"
    index["weight_map"][key] = "diffusion_pytorch_model-00003-of-00003.safetensors"
    index_path.write_text(json.dumps(index))
    message = validation_error(ckpt)
    assert f"video_dit / {key}: index and headers disagree on the file holding the key" in message
    assert f"(expected diffusion_pytorch_model-00003-of-00003.safetensors, found {VIDEO_SHARD_1})" in message


def test_all_problems_are_listed_together(ckpt):
    shutil.rmtree(ckpt / "audio_dit")
    (ckpt / "video_vae" / "config.json").write_text("{not json")
    problems = checkpoint_problems(ckpt)
    assert {p.component for p in problems} == {"audio_dit", "video_vae"}


def test_folder_problems_and_weight_problems_in_one_error(ckpt):
    (ckpt / "tokenizer" / "spiece.model").unlink()
    (ckpt / "tokenizer" / "tokenizer.json").unlink()
    rewrite(single_file(ckpt / "audio_dit"), lambda t: {k: v for k, v in t.items() if k != "head.head.weight"})
    with pytest.raises(CheckpointError) as info:
        MovaCheckpoint.open(ckpt, validate=True)
    assert {p.component for p in info.value.problems} == {"tokenizer", "audio_dit"}
    assert {p.component for p in checkpoint_problems(ckpt)} == {"tokenizer", "audio_dit"}


def test_weight_problems_of_several_components_in_one_error(ckpt):
    rewrite(single_file(ckpt / "audio_dit"), lambda t: {k: v for k, v in t.items() if k != "head.head.weight"})
    rewrite(single_file(ckpt / "dual_tower_bridge"), lambda t: {**t, "extra": torch.zeros(1)})
    message = validation_error(ckpt)
    assert message.splitlines()[0].endswith("2 problems")
    assert "audio_dit / head.head.weight: missing tensor" in message and "dual_tower_bridge / extra: unexpected" in message


# --- full scale, headers only ----------------------------------------------------------------------------

def write_sparse_safetensors(path: Path, tensors) -> int:
    """A safetensors file with a real header for `tensors` ({key: shape}, BF16) and a sparse (unwritten) data
    section: the apparent size is the real one, the disk usage nearly zero. Returns the header length."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, shape in tensors.items():
        size = 2
        for s in shape:
            size *= s
        header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)
    return len(raw)


def test_full_scale_360p_checkpoint_validates_from_headers_only(shared_dir, parity_checkpoint, tmp_path, monkeypatch):
    """The real 73 GB layout (sparse files), video_dit sharded in 3 with its index: validation reads headers only."""
    from mova_model.checkpoint.configs import MovaConfigs

    configs_dir = shared_dir / "spec" / "configs" / "MOVA-360p"
    root = tmp_path / "MOVA-360p"
    shutil.copytree(configs_dir, root, copy_function=shutil.copyfile)
    for folder in [root, *root.iterdir()]:
        folder.chmod(0o755)
    shutil.copytree(parity_checkpoint / "tokenizer", root / "tokenizer", copy_function=shutil.copyfile)
    configs = MovaConfigs.from_folder(root)
    checkpoint = MovaCheckpoint(root, configs)
    for component in WEIGHT_COMPONENTS:
        shapes = {k: shape for k, (shape, _) in checkpoint.layout(component).tensors.items()}
        if component == "text_encoder":
            del shapes["encoder.embed_tokens.weight"]  # transformers writes the tied embedding once
        folder = root / component
        if component == "video_dit":
            keys = list(shapes)
            parts = [keys[:400], keys[400:800], keys[800:]]
            weight_map = {}
            for i, part in enumerate(parts, 1):
                name = f"diffusion_pytorch_model-{i:05d}-of-00003.safetensors"
                write_sparse_safetensors(folder / name, {k: shapes[k] for k in part})
                weight_map.update({k: name for k in part})
            (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        else:
            write_sparse_safetensors(folder / "diffusion_pytorch_model.safetensors", shapes)
    total = sum(p.stat().st_size for p in root.rglob("*.safetensors"))
    assert total > 70 * 2 ** 30  # the apparent size of the real checkpoint (BF16)

    import safetensors

    monkeypatch.setattr(safetensors, "safe_open", lambda *a, **k: pytest.fail("a weight was read during validation"))
    checkpoint = MovaCheckpoint.open(root, validate=True)
    assert len(checkpoint.store("video_dit").files) == 3
    assert checkpoint.store("video_dit").nbytes == 14288901184 * 2

    shard = root / "video_dit" / "diffusion_pytorch_model-00002-of-00003.safetensors"
    with open(shard, "r+b") as handle:
        handle.truncate(shard.stat().st_size - 1)
    message = validation_error(root)
    assert "video_dit / " in message and "past the end of the file" in message and str(shard) in message


def test_build_rechecks_files_changed_after_validation(ckpt):
    checkpoint = MovaCheckpoint.open(ckpt, validate=True)
    path = single_file(ckpt / "audio_dit")
    rewrite(path, lambda t: {k: v for k, v in t.items() if k != "head.head.weight"})
    with pytest.raises(CheckpointError, match="audio_dit / head.head.weight: missing tensor"):
        checkpoint.build("audio_dit")


def test_config_the_module_cannot_be_built_from(ckpt, monkeypatch):
    def refuse(config, ops):
        raise ValueError("num_heads does not divide dim")

    monkeypatch.setitem(COMPONENT_BUILDERS, "audio_dit", refuse)
    monkeypatch.setattr("mova_model.checkpoint.folder._LAYOUT_CACHE", {})
    message = validation_error(ckpt)
    assert "audio_dit: cannot build the module its config.json describes (num_heads does not divide dim)" in message
    assert str(ckpt / "audio_dit" / "config.json") in message
