"""LoRA: the official file format, safe loading (no unpickling), safetensors round trip, strength semantics
on the parity checkpoint, and lazy patching that leaves the shared base modules untouched."""

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from mova_model.checkpoint.folder import MovaCheckpoint, build_meta_module
from mova_model.network.denoiser import joint_forward
from mova_model.sampling.guidance import GuidanceConfig
from mova_model.network.lora import (DEFAULT_RANK_ALPHA, LoraError, LoraPatch, LoraPatchSet, LoraWeights, clear, load_lora,
                             lora_components, save_lora_safetensors)
from mova_model.network.ops import CastLinear

ONE_PASS = GuidanceConfig(text_scale=1.0, bridge_scale=1.0)
DIT_PARTS = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")

UNPICKLED = []


def _record_unpickling(tag):
    """Runs only if a file is fully unpickled (what `weights_only=True` must never do)."""
    UNPICKLED.append(tag)
    return tag


class Payload:
    """A custom object whose unpickling leaves a trace."""

    def __init__(self, tag):
        self.tag = tag

    def __reduce__(self):
        return (_record_unpickling, (self.tag,))


@pytest.fixture(scope="module")
def parity_lora_dir(shared_dir):
    return shared_dir / "parity" / "lora"


@pytest.fixture(scope="module")
def parity_lora_case(shared_dir):
    index = json.loads((shared_dir / "parity" / "index.json").read_text())
    return next(c for c in index["cases"] if c["kind"] == "lora")


def random_lora(pipe, rank=4, alpha=8.0, seed=0, components=DIT_PARTS, std=0.2):
    """A LoRA for every Linear inside the DiT blocks / bridge of `pipe`'s checkpoint (shapes from the configs)."""
    g = torch.Generator().manual_seed(seed)
    pairs = {}
    for component in components:
        module = build_meta_module(component, pipe.checkpoint.config(component))
        for name, layer in module.named_modules():
            if isinstance(layer, CastLinear) and (name.startswith("blocks.") or component == "dual_tower_bridge"):
                down = torch.randn(rank, layer.in_features, generator=g) / layer.in_features ** 0.5
                up = torch.randn(layer.out_features, rank, generator=g) * std
                pairs.setdefault(component, {})[name] = (down, up)
    return LoraWeights(pairs=pairs, rank=rank, alpha=alpha, source="random-test-lora")


@pytest.fixture(scope="module")
def tiny_lora(tiny_pipe):
    return random_lora(tiny_pipe)


# -- the official format ----------------------------------------------------------------------------------
def test_official_pair_loads_with_weights_only(parity_lora_dir, parity_lora_case):
    args = parity_lora_case["args"]
    raw = torch.load(parity_lora_dir / "lora_weights.pt", map_location="cpu", weights_only=True)
    config = torch.load(parity_lora_dir / "lora_config.pt", map_location="cpu", weights_only=True)
    assert len(raw) == args["num_lora_tensors"] == len(args["lora_keys"])
    assert sorted(raw) == sorted(args["lora_keys"])
    assert config["rank"] == args["lora_config"]["rank"]

    weights = load_lora(parity_lora_dir)
    assert weights.num_tensors() == args["num_lora_tensors"]
    assert (weights.rank, weights.alpha) == (16, 16.0)
    assert weights.base_scaling == 1.0
    assert set(weights.pairs) == {"video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge"}
    assert lora_components([weights]) == ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")
    for component, modules in weights.pairs.items():
        for path, (down, up) in modules.items():
            assert torch.equal(down, raw[f"{component}.{path}.lora_A.weight"])
            assert torch.equal(up, raw[f"{component}.{path}.lora_B.weight"])
            assert down.shape[0] == up.shape[1] == 16
    assert load_lora(parity_lora_dir / "lora_weights.pt").num_tensors() == weights.num_tensors()


def test_pickled_objects_are_refused_and_never_unpickled(tmp_path):
    UNPICKLED.clear()
    # 1. a weights dict with an object inside
    inside = tmp_path / "inside"
    inside.mkdir()
    torch.save({"audio_dit.blocks.0.ffn.0.lora_A.weight": Payload("inside"),
                "audio_dit.blocks.0.ffn.0.lora_B.weight": torch.zeros(4, 2)}, inside / "lora_weights.pt")
    # 2. a bare object as the weights file
    bare = tmp_path / "bare.pt"
    torch.save(Payload("bare"), bare)
    # 3. valid weights beside a config that is an object
    config = tmp_path / "config"
    config.mkdir()
    torch.save({"audio_dit.blocks.0.ffn.0.lora_A.weight": torch.zeros(2, 4),
                "audio_dit.blocks.0.ffn.0.lora_B.weight": torch.zeros(4, 2)}, config / "lora_weights.pt")
    torch.save(Payload("config"), config / "lora_config.pt")
    for target in (inside, bare, config):
        with pytest.raises(LoraError, match="weights_only=True"):
            load_lora(target)
    assert UNPICKLED == []
    torch.load(bare, weights_only=False)  # proves the payload is live
    assert UNPICKLED == ["bare"]
    UNPICKLED.clear()


def test_plain_pickle_is_refused(tmp_path):
    path = tmp_path / "lora.bin"
    path.write_bytes(pickle.dumps(Payload("pickle")))
    UNPICKLED.clear()
    with pytest.raises(LoraError):
        load_lora(path)
    assert UNPICKLED == []


# -- safetensors ------------------------------------------------------------------------------------------
def _assert_same(a: LoraWeights, b: LoraWeights):
    assert (a.rank, a.alpha) == (b.rank, b.alpha)
    assert {c: sorted(m) for c, m in a.pairs.items()} == {c: sorted(m) for c, m in b.pairs.items()}
    for component, modules in a.pairs.items():
        for path, (down, up) in modules.items():
            assert torch.equal(down, b.pairs[component][path][0]) and torch.equal(up, b.pairs[component][path][1])


def test_safetensors_round_trip_of_the_official_lora(parity_lora_dir, tmp_path):
    weights = load_lora(parity_lora_dir)
    path = save_lora_safetensors(weights, tmp_path / "converted.safetensors")
    back = load_lora(path)
    _assert_same(weights, back)
    assert len(load_file(str(path))) == weights.num_tensors()


def test_safetensors_round_trip_keeps_rank_and_alpha(tiny_lora, tmp_path):
    path = save_lora_safetensors(tiny_lora, tmp_path / "tiny.safetensors")
    back = load_lora(path)
    _assert_same(tiny_lora, back)
    assert (back.rank, back.alpha, back.base_scaling) == (4, 8.0, 2.0)
    _assert_same(tiny_lora, load_lora(tmp_path))  # a folder holding one .safetensors


def test_safetensors_rank_alpha_from_a_json_beside_or_the_default(tmp_path):
    tensors = {"audio_dit.blocks.0.ffn.0.lora_A.weight": torch.ones(3, 4),
               "audio_dit.blocks.0.ffn.0.lora_B.weight": torch.ones(5, 3)}
    plain = tmp_path / "plain"
    plain.mkdir()
    save_file(tensors, str(plain / "x.safetensors"))
    assert (load_lora(plain / "x.safetensors").rank, load_lora(plain / "x.safetensors").alpha) == DEFAULT_RANK_ALPHA
    (plain / "lora_config.json").write_text(json.dumps({"rank": 3, "lora_alpha": 6}))
    weights = load_lora(plain / "x.safetensors")
    assert (weights.rank, weights.alpha) == (3, 6.0)
    (plain / "lora_config.json").write_text(json.dumps({"rank": 0}))
    with pytest.raises(LoraError, match="rank must be positive"):
        load_lora(plain / "x.safetensors")


@pytest.mark.parametrize("tensors, message", [
    ({"audio_dit.blocks.0.ffn.0.lora_A.weight": torch.ones(3, 4)}, "has no lora_B.weight"),
    ({"audio_dit.blocks.0.ffn.0.lora_A.weight": torch.ones(3, 4),
      "audio_dit.blocks.0.ffn.0.lora_B.weight": torch.ones(5, 2)}, "ranks differ"),
    ({"text_encoder.encoder.block.0.lora_A.weight": torch.ones(3, 4)}, "without MOVA component names"),
    ({"audio_dit.blocks.0.ffn.0.weight": torch.ones(3, 4)}, "is not a LoRA tensor"),
    ({"audio_dit.blocks.0.ffn.0.lora_A.weight": torch.ones(3, 4, 1),
      "audio_dit.blocks.0.ffn.0.lora_B.weight": torch.ones(5, 3)}, "2-D"),
])
def test_malformed_lora_files(tmp_path, tensors, message):
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(LoraError, match=message):
        load_lora(tmp_path / "bad.safetensors")


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(LoraError, match="not found"):
        load_lora(tmp_path / "absent.pt")
    with pytest.raises(LoraError, match="no lora_weights.pt"):
        load_lora(tmp_path)
    (tmp_path / "x.ckpt").write_bytes(b"123")
    with pytest.raises(LoraError, match="unsupported"):
        load_lora(tmp_path / "x.ckpt")
    (tmp_path / "y.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(LoraError, match="safetensors"):
        load_lora(tmp_path / "y.safetensors")


def test_scale_per_component(tiny_lora):
    patch = LoraPatch(tiny_lora, strength=0.5, part_strengths=(("audio", 0.0), ("bridge", 2.0)))
    assert patch.scale_for("video_dit") == patch.scale_for("video_dit_2") == 2.0 * 0.5
    assert patch.scale_for("audio_dit") == 0.0
    assert patch.scale_for("dual_tower_bridge") == 2.0 * 0.5 * 2.0


# -- strength semantics on the parity checkpoint ----------------------------------------------------------
@pytest.fixture(scope="module")
def parity_modules(shared_dir):
    checkpoint = MovaCheckpoint.open(shared_dir / "parity" / "checkpoint")
    return {name: checkpoint.build(name, dtype=torch.float32) for name in ("video_dit_2", "audio_dit", "dual_tower_bridge")}


def _parity_forward(modules, inputs, fps):
    video_input = torch.cat([inputs["latents"], inputs["condition"]], dim=1)
    with torch.no_grad():
        return joint_forward(modules["video_dit_2"], modules["audio_dit"], modules["dual_tower_bridge"], video_input,
                             inputs["audio_latents"], inputs["prompt_embeds"], inputs["timestep"],
                             inputs["audio_timestep"], fps)


def _patch_all(modules, patch_set):
    return sum(patch_set.apply(name, module) for name, module in modules.items())


def test_strength_zero_equals_no_lora_and_strengths_match_the_official(shared_dir, parity_modules, parity_lora_dir,
                                                                        parity_lora_case):
    parity = shared_dir / "parity"
    inputs = load_file(str(parity / parity_lora_case["inputs"]))
    outputs = load_file(str(parity / parity_lora_case["outputs"]))
    fps = parity_lora_case["args"]["video_fps"]
    weights = load_lora(parity_lora_dir)
    base = _parity_forward(parity_modules, inputs, fps)
    try:
        assert _patch_all(parity_modules, LoraPatchSet((LoraPatch(weights, strength=0.0),))) == 0
        zero = _parity_forward(parity_modules, inputs, fps)
        assert torch.equal(zero[0], base[0]) and torch.equal(zero[1], base[1])

        assert _patch_all(parity_modules, LoraPatchSet((LoraPatch(weights, strength=1.0),))) > 0
        loaded = _parity_forward(parity_modules, inputs, fps)
        _patch_all(parity_modules, LoraPatchSet((LoraPatch(weights, strength=parity_lora_case["args"]["lora_scale"]),)))
        scaled = _parity_forward(parity_modules, inputs, fps)
    finally:
        for module in parity_modules.values():
            clear(module)
    tol = dict(atol=parity_lora_case["tolerance"]["atol"], rtol=parity_lora_case["tolerance"]["rtol"])
    torch.testing.assert_close(base[0], outputs["video_pred_cond_base"], **tol)
    torch.testing.assert_close(base[1], outputs["audio_pred_cond_base"], **tol)
    torch.testing.assert_close(loaded[0], outputs["video_pred_cond_lora_loaded"], **tol)
    torch.testing.assert_close(loaded[1], outputs["audio_pred_cond_lora_loaded"], **tol)
    torch.testing.assert_close(scaled[0], outputs["video_pred_cond_lora"], **tol)
    torch.testing.assert_close(scaled[1], outputs["audio_pred_cond_lora"], **tol)
    assert not torch.allclose(loaded[0], base[0], atol=1e-4)
    after = _parity_forward(parity_modules, inputs, fps)
    assert torch.equal(after[0], base[0]) and torch.equal(after[1], base[1])


# -- pipeline patches -------------------------------------------------------------------------------------
def _adapter_count(modules):
    return sum(len(layer.adapters) for module in modules for layer in module.modules() if isinstance(layer, CastLinear))


def test_with_lora_returns_a_new_pipeline_and_leaves_the_original(tiny_pipe, tiny_lora):
    patch = LoraPatch(tiny_lora, strength=0.8)
    patched = tiny_pipe.with_lora(patch)
    assert patched is not tiny_pipe
    assert not tiny_pipe.lora and tiny_pipe.lora.patches == ()
    assert patched.lora.patches == (patch,)
    assert patched.cache is tiny_pipe.cache
    second = LoraPatch(tiny_lora, strength=0.1)
    stacked = patched.with_lora(second)
    assert stacked.lora.patches == (patch, second) and patched.lora.patches == (patch,)


def test_base_model_is_unchanged_after_sampling_with_a_lora(tiny_pipe, tiny_cond, tiny_lora):
    names = ("video_dit", "audio_dit", "dual_tower_bridge")
    base_before = tiny_pipe.sample(tiny_cond, seed=5, steps=1, guidance=ONE_PASS)
    snapshot = {n: {k: v.clone() for k, v in tiny_pipe.cache.get(n).state_dict().items()} for n in names}
    patched = tiny_pipe.with_lora(LoraPatch(tiny_lora, strength=1.0))
    during = []

    def count(info):
        during.append(_adapter_count([tiny_pipe.cache.modules[n] for n in names]))

    lora_out = patched.sample(tiny_cond, seed=5, steps=1, guidance=ONE_PASS, callback=count)
    expected_layers = sum(len(tiny_lora.pairs[n]) for n in names)
    assert during == [expected_layers]  # attached while sampling
    assert _adapter_count(tiny_pipe.cache.modules.values()) == 0  # and removed afterwards
    for n in names:
        state = tiny_pipe.cache.get(n).state_dict()
        assert state.keys() == snapshot[n].keys()
        assert all(torch.equal(state[k], snapshot[n][k]) for k in state), n
    assert not torch.allclose(lora_out.video, base_before.video)
    assert not torch.allclose(lora_out.audio, base_before.audio)
    base_after = tiny_pipe.sample(tiny_cond, seed=5, steps=1, guidance=ONE_PASS)
    assert torch.equal(base_after.video, base_before.video) and torch.equal(base_after.audio, base_before.audio)
    zero = tiny_pipe.with_lora(LoraPatch(tiny_lora, strength=0.0)).sample(tiny_cond, seed=5, steps=1, guidance=ONE_PASS)
    assert torch.equal(zero.video, base_before.video) and torch.equal(zero.audio, base_before.audio)


def test_adapters_are_removed_when_sampling_is_cancelled(tiny_pipe, tiny_cond, tiny_lora):
    patched = tiny_pipe.with_lora(LoraPatch(tiny_lora))

    def stop(info):
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError, match="cancelled"):
        patched.sample(tiny_cond, seed=5, steps=1, guidance=ONE_PASS, callback=stop)
    assert _adapter_count(tiny_pipe.cache.modules.values()) == 0


def test_a_lora_for_another_model_size_names_the_layer(tiny_pipe, parity_lora_dir):
    weights = load_lora(parity_lora_dir)  # parity audio_dit is 48 wide, the tiny one 32
    with pytest.raises(LoraError, match=r"audio_dit\.blocks\.0\.cross_attn\.k is 32->32, the LoRA pair is 48->48.*another model size"):
        tiny_pipe.with_lora(LoraPatch(weights))


def test_a_lora_naming_a_missing_layer_is_refused(tiny_pipe):
    weights = LoraWeights(pairs={"video_dit": {"blocks.99.ffn.0": (torch.zeros(2, 48), torch.zeros(96, 2))}},
                          rank=2, alpha=2.0, source="missing-layer")
    with pytest.raises(LoraError, match=r"video_dit\.blocks\.99\.ffn\.0 is not a Linear layer"):
        tiny_pipe.with_lora(LoraPatch(weights))
    weights = LoraWeights(pairs={"video_dit": {"blocks.0.norm3": (torch.zeros(2, 48), torch.zeros(48, 2))}},
                          rank=2, alpha=2.0, source="not-linear")
    with pytest.raises(LoraError, match=r"blocks\.0\.norm3 is not a Linear"):
        tiny_pipe.with_lora(LoraPatch(weights))
