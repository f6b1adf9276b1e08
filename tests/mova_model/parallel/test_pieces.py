"""Single-process pieces of the parallel package: masked attention over padded keys, shards, the attention
hook's default, the portable job payload and worker-spec validation."""
import pytest
import torch

from mova_model.memory.model_store import MemoryOptions
from mova_model.network.dit_block import SEQUENCE_ATTENTION, attention, sequence_attention
from mova_model.parallel.layout import ParallelError
from mova_model.parallel.portable import from_portable, to_portable
from mova_model.parallel.ulysses import _shard, masked_attention, padded_length
from mova_model.parallel.workers import WorkerSpec
from mova_model.sampling.guidance import GuidanceConfig
from mova_model.sampling.sampler import HeldStream


def test_masked_attention_over_padded_keys_equals_attention_without_them():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 7, 4 * 8, generator=gen)
    k, v = torch.randn(1, 5, 32, generator=gen), torch.randn(1, 5, 32, generator=gen)
    padded_k = torch.cat([k, torch.randn(1, 3, 32, generator=gen) * 100], dim=1)
    padded_v = torch.cat([v, torch.randn(1, 3, 32, generator=gen) * 100], dim=1)
    torch.testing.assert_close(masked_attention(q, padded_k, padded_v, 4, key_len=5), attention(q, k, v, 4),
                               rtol=1e-6, atol=1e-6)


def test_shards_pad_to_the_degree_and_cover_the_stream():
    x = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)
    shards = [_shard(x, 1, 7, 3, i) for i in range(3)]
    assert padded_length(7, 3) == 9 and all(s.shape == (2, 3, 3) for s in shards)
    joined = torch.cat(shards, dim=1)
    assert torch.equal(joined[:, :7], x) and torch.equal(joined[:, 7:], torch.zeros(2, 2, 3))
    rope = torch.polar(torch.ones(7, 1, 2, dtype=torch.float64), torch.rand(7, 1, 2, dtype=torch.float64))
    tail = _shard(rope, 0, 7, 2, 1, 1.0)
    assert tail.shape == (4, 1, 2) and torch.equal(tail[-1], torch.ones(1, 2, dtype=torch.complex128))


def test_sequence_attention_is_plain_attention_without_a_hook_and_the_hook_otherwise():
    q = torch.randn(1, 4, 8)
    assert SEQUENCE_ATTENTION.get() is None
    assert torch.equal(sequence_attention(q, q, q, 2), attention(q, q, q, 2))
    token = SEQUENCE_ATTENTION.set(lambda q, k, v, heads: torch.zeros_like(q))
    try:
        assert torch.equal(sequence_attention(q, q, q, 2), torch.zeros_like(q))
    finally:
        SEQUENCE_ATTENTION.reset(token)


def test_portable_round_trip_keeps_dataclasses_and_tensors():
    job = {"guidance": GuidanceConfig(text_scale=3.0, bridge_scale=2.0), "memory": MemoryOptions(mode="resident"),
           "held": [HeldStream("audio", torch.ones(1, 8, 5), "renoise", offset=2)], "seed": 3}
    back = from_portable(to_portable(job))
    assert back["guidance"] == job["guidance"] and back["memory"] == job["memory"] and back["seed"] == 3
    held = back["held"][0]
    assert isinstance(held, HeldStream) and held.mode == "renoise" and held.offset == 2
    assert torch.equal(held.latents, torch.ones(1, 8, 5))


@pytest.mark.parametrize("devices, message", [
    (("cpu",), "at least 2 devices"),
    (("cpu", "gpu7"), "is not a torch device"),
    (("cpu", "cuda:0"), "do not mix|does not exist"),
    (("cpu", "cpu", "cpu"), "multiple of 2"),
])
def test_worker_spec_refuses_bad_devices_and_layouts(devices, message):
    split = "cfg+ulysses" if len(devices) == 3 else "cfg"
    with pytest.raises(ParallelError, match=message):
        WorkerSpec(devices=devices, split=split).validate()
