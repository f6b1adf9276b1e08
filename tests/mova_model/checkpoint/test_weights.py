"""Tests of `mova_model.checkpoint.weights`: header parsing, corruption detection, sharding index, mmap loading."""

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mova_model.checkpoint.weights import (CheckpointError, Problem, SafetensorsStore, format_problems, format_shape,
                                read_safetensors_header)


def _tensors():
    return {
        "a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "a.bias": torch.ones(3, dtype=torch.bfloat16),
        "b.weight": torch.full((2, 2), 0.5, dtype=torch.float16),
        "q.weight": torch.full((4, 4), 0.25).to(torch.float8_e4m3fn),
        "q.weight_scale": torch.tensor(2.0),
    }


def _header_len(path: Path) -> int:
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


def test_store_reads_headers_dtypes_and_shapes(tmp_path):
    save_file(_tensors(), str(tmp_path / "model.safetensors"))
    store = SafetensorsStore(tmp_path, "demo")
    assert store.problems == []
    assert set(store.keys()) == set(_tensors())
    assert store.info("a.weight").shape == (3, 4) and store.info("a.weight").dtype == "F32"
    assert store.info("a.bias").dtype == "BF16"
    assert store.info("b.weight").dtype == "F16"
    assert store.info("q.weight").dtype == "F8_E4M3" and store.info("q.weight").torch_dtype == torch.float8_e4m3fn
    assert store.info("q.weight_scale").shape == ()
    assert store.nbytes == 12 * 4 + 3 * 2 + 4 * 2 + 16 + 4


def test_load_returns_the_stored_values_and_dtypes(tmp_path):
    save_file(_tensors(), str(tmp_path / "model.safetensors"))
    loaded = SafetensorsStore(tmp_path, "demo").load()
    for key, tensor in _tensors().items():
        assert loaded[key].dtype == tensor.dtype
        assert torch.equal(loaded[key].float(), tensor.float())
    assert list(SafetensorsStore(tmp_path, "demo").load(["b.weight", "a.weight"])) == ["b.weight", "a.weight"]


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc to read the resident set size")
def test_load_memory_maps_instead_of_copying(tmp_path):
    big = torch.zeros(64 * 1024 * 1024 // 4)  # 64 MiB
    save_file({"big": big}, str(tmp_path / "big.safetensors"))
    del big
    before = _rss_bytes()
    tensor = SafetensorsStore(tmp_path, "demo").load()["big"]
    grown = _rss_bytes() - before
    assert tensor.numel() == 16 * 1024 * 1024
    assert grown < 16 * 1024 * 1024, f"loading grew the resident set by {grown / 2**20:.1f} MiB: the file was copied"


def test_sharded_folder_with_matching_index(tmp_path):
    tensors = _tensors()
    keys = sorted(tensors)
    save_file({k: tensors[k] for k in keys[:2]}, str(tmp_path / "m-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in keys[2:]}, str(tmp_path / "m-00002-of-00002.safetensors"))
    weight_map = {k: ("m-00001-of-00002.safetensors" if i < 2 else "m-00002-of-00002.safetensors") for i, k in enumerate(keys)}
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    store = SafetensorsStore(tmp_path, "demo")
    assert store.problems == []
    assert {k: store.info(k).file.name for k in keys} == weight_map
    assert torch.equal(store.get_tensor(keys[-1]).float(), tensors[keys[-1]].float())


def test_sharded_folder_without_index_builds_the_map_from_headers(tmp_path):
    save_file({"x": torch.ones(2)}, str(tmp_path / "m-00001-of-00002.safetensors"))
    save_file({"y": torch.zeros(3)}, str(tmp_path / "m-00002-of-00002.safetensors"))
    store = SafetensorsStore(tmp_path, "demo")
    assert store.problems == []
    assert store.info("y").file.name == "m-00002-of-00002.safetensors"


def test_index_that_disagrees_with_headers_is_reported(tmp_path):
    save_file({"x": torch.ones(2)}, str(tmp_path / "m-00001-of-00002.safetensors"))
    save_file({"y": torch.zeros(3), "z": torch.zeros(1)}, str(tmp_path / "m-00002-of-00002.safetensors"))
    weight_map = {"x": "m-00002-of-00002.safetensors", "y": "m-00002-of-00002.safetensors",
                  "ghost": "m-00001-of-00002.safetensors"}
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    problems = {p.key: p for p in SafetensorsStore(tmp_path, "demo").problems}
    assert set(problems) == {"x", "ghost", "z"}
    assert problems["x"].expected == "m-00002-of-00002.safetensors" and problems["x"].found == "m-00001-of-00002.safetensors"
    assert "no safetensors header" in problems["ghost"].message
    assert "not listed in the index" in problems["z"].message


def test_duplicate_key_across_shards_is_reported(tmp_path):
    save_file({"x": torch.ones(2)}, str(tmp_path / "a.safetensors"))
    save_file({"x": torch.ones(2)}, str(tmp_path / "b.safetensors"))
    (problem,) = SafetensorsStore(tmp_path, "demo").problems
    assert problem.key == "x" and "two files" in problem.message


def test_truncated_file_names_file_and_key(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.ones(10), "b": torch.ones(10)}, str(path))
    path.write_bytes(path.read_bytes()[:-8])
    store = SafetensorsStore(tmp_path, "demo")
    (problem,) = store.problems
    assert problem.file == str(path) and problem.key == "b"
    assert "past the end of the file" in problem.message
    assert store.keys() == []
    with pytest.raises(CheckpointError, match="demo / b"):
        store.load()


def test_file_longer_than_the_last_offset_is_reported(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.ones(10)}, str(path))
    size = path.stat().st_size
    path.write_bytes(path.read_bytes() + b"\0" * 16)
    (problem,) = SafetensorsStore(tmp_path, "demo").problems
    assert "last data offset" in problem.message
    assert problem.expected == f"{size} bytes" and problem.found == f"{size + 16} bytes"


def test_header_length_beyond_file_size(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.ones(10)}, str(path))
    path.write_bytes(struct.pack("<Q", 10_000_000) + path.read_bytes()[8:])
    _, _, (problem,) = read_safetensors_header(path, "demo")
    assert "header length runs past the end" in problem.message and problem.found == "10000000 bytes"


def test_too_short_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x01\x02")
    _, _, (problem,) = read_safetensors_header(path, "demo")
    assert "truncated" in problem.message and problem.found == "2 bytes"


def test_header_that_is_not_json(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.ones(10)}, str(path))
    data = bytearray(path.read_bytes())
    data[8:12] = b"#!@%"
    path.write_bytes(bytes(data))
    _, _, (problem,) = read_safetensors_header(path, "demo")
    assert "not valid JSON" in problem.message and problem.file == str(path)


def test_header_offsets_that_do_not_match_the_shape(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.ones(10)}, str(path))
    n = _header_len(path)
    header = json.loads(path.read_bytes()[8:8 + n])
    header["a"]["shape"] = [11]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + path.read_bytes()[8 + n:])
    _, _, (problem,) = read_safetensors_header(path, "demo")
    assert problem.key == "a" and problem.expected == "44 bytes" and problem.found == "40 bytes"


def test_folder_without_safetensors_mentions_pickles(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    (problem,) = SafetensorsStore(tmp_path, "demo").problems
    assert "pytorch_model.bin" in problem.message and "safetensors only" in problem.message
    (missing,) = SafetensorsStore(tmp_path / "nope", "demo").problems
    assert "missing" in missing.message


def test_problem_text_and_cap():
    problem = Problem("video_dit", "wrong shape", key="blocks.0.q.weight", expected="[4, 4]", found="[4, 5]", file="/x/f.safetensors")
    assert str(problem) == "video_dit / blocks.0.q.weight: wrong shape (expected [4, 4], found [4, 5]) [/x/f.safetensors]"
    text = format_problems("title", [problem] * 25, limit=20)
    lines = text.splitlines()
    assert lines[0] == "title: 25 problems" and len(lines) == 22 and lines[-1] == "  ... and 5 more"
    assert format_shape((5120, 36, 1, 2, 2)) == "[5120, 36, 1, 2, 2]" and format_shape(()) == "[]"
