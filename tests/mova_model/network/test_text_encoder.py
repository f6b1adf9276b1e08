"""Text encoder: prompt cleaning, the meta-built UMT5 with ops layers, and parity of the embeddings."""

import pytest
import torch

from mova_model.checkpoint.configs import MovaConfigs, TextEncoderConfig
from mova_model.network.ops import CastLinear, Operations, init_random_
from mova_model.network.text_encoder import (EMBED_KEY, SHARED_KEY, TextEncoder, build_text_encoder_module, prompt_clean,
                                     tie_embedding_weights)

import codec_parity_helpers as H  # tests/ is on pytest's pythonpath


TINY = {"d_model": 16, "d_ff": 24, "d_kv": 4, "num_heads": 4, "num_layers": 2, "vocab_size": 50,
        "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True, "model_type": "umt5",
        "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16, "layer_norm_epsilon": 1e-6,
        "pad_token_id": 0, "eos_token_id": 1, "dropout_rate": 0.1, "tie_word_embeddings": False}


def tiny_config() -> TextEncoderConfig:
    return TextEncoderConfig.from_dict(dict(TINY))


def _load_encoder(case):
    root = H.checkpoint_dir(case)
    configs = MovaConfigs.from_folder(root)
    module = build_text_encoder_module(configs.text_encoder, Operations())
    module.load_state_dict(H.load_component_state(root / "text_encoder"), assign=True, strict=True)
    return TextEncoder(root / "tokenizer", module)


# ---------------------------------------------------------------------------------------------- cleaning


def test_prompt_clean():
    assert prompt_clean("  A  man\n\tspeaks &amp;amp; \u201cHi\u201d  ") == 'A man speaks & "Hi"'
    assert prompt_clean("") == ""
    assert prompt_clean("\u8272\u8c03\uff0c  \u8fc7\u66dd") == "\u8272\u8c03, \u8fc7\u66dd"
    assert prompt_clean("&lt;b&gt;") == "<b>"


# ---------------------------------------------------------------------------------------------- module


def test_module_is_meta_with_ops_linears_and_official_keys():
    from transformers import UMT5Config, UMT5EncoderModel

    module = build_text_encoder_module(tiny_config(), Operations())
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, CastLinear) for m in linears)
    assert all(p.device.type == "meta" for p in module.parameters())
    assert not module.training
    with torch.device("meta"):
        reference = UMT5EncoderModel(UMT5Config(**TINY))
    ours = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours == theirs
    assert EMBED_KEY in ours and SHARED_KEY in ours


@pytest.mark.parametrize("drop", [None, EMBED_KEY, SHARED_KEY])
def test_loads_with_or_without_tied_embedding(drop):
    source = build_text_encoder_module(tiny_config(), Operations(device="cpu"))
    init_random_(source, torch.Generator().manual_seed(1))
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state[EMBED_KEY] = state[SHARED_KEY]
    if drop is not None:
        del state[drop]
    module = build_text_encoder_module(tiny_config(), Operations())
    module.load_state_dict(state, assign=True, strict=True)
    assert module.shared.weight is module.encoder.embed_tokens.weight
    assert module.shared.weight.device.type == "cpu"


def test_tie_embedding_weights_prefers_shared():
    a, b = torch.zeros(3, 2), torch.ones(3, 2)
    assert tie_embedding_weights({SHARED_KEY: a})[EMBED_KEY] is a
    assert tie_embedding_weights({EMBED_KEY: b})[SHARED_KEY] is b
    assert tie_embedding_weights({SHARED_KEY: a, EMBED_KEY: b})[EMBED_KEY] is a


def test_storage_dtype_differs_from_compute_dtype():
    """bf16-stored linear weights with fp32 embeddings/norms: the encoder computes in fp32 with the weights
    upcast at forward (the feed-forward must not cast activations to the storage dtype)."""
    module = build_text_encoder_module(tiny_config(), Operations(device="cpu"))
    init_random_(module, torch.Generator().manual_seed(2))
    ids = torch.tensor([[5, 7, 9, 1, 0, 0]])
    mask = (ids > 0).long()
    mask[0, 3] = 1
    for m in module.modules():
        if isinstance(m, CastLinear):
            m.weight = torch.nn.Parameter(m.weight.to(torch.bfloat16).to(torch.float32), requires_grad=False)
    expected = module(ids, mask).last_hidden_state
    for m in module.modules():
        if isinstance(m, CastLinear):
            m.weight = torch.nn.Parameter(m.weight.to(torch.bfloat16), requires_grad=False)
    got = module(ids, mask).last_hidden_state
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------- parity


def _text_entries(case, outputs):
    """(name, prompt text, embeds key) for each prompt the case recorded."""
    args = case["args"]
    entries = []
    for key in outputs:
        if not key.endswith("_input_ids"):
            continue
        name = key[: -len("_input_ids")]
        text = args.get(f"{name}_prompt", args.get(name))
        embeds = f"{name}_prompt_embeds" if f"{name}_prompt_embeds" in outputs else f"{name}_embeds"
        assert isinstance(text, str), f"no prompt text for {name}"
        entries.append((name, text, embeds))
    assert entries
    return entries


@pytest.mark.parametrize("case", H.case_params("text_encoding"))
def test_text_encoding_matches_official(case):
    case = H.require_case(case)
    _, out = H.load_case(case)
    encoder = _load_encoder(case)
    tol = H.tolerance(case, "embeds", atol=1e-5, rtol=1e-4)
    length = int(case["args"].get("max_sequence_length", 512))
    for name, text, embeds_key in _text_entries(case, out):
        cleaned = case["args"].get(f"{name}_prompt_cleaned", case["args"].get(f"{name}_cleaned"))
        if cleaned is not None:
            assert prompt_clean(text) == cleaned
        result = encoder.encode([text], max_length=length)
        assert torch.equal(result.input_ids, out[f"{name}_input_ids"]), name
        assert torch.equal(result.attention_mask, out[f"{name}_attention_mask"]), name
        H.assert_close(result.embeds, out[embeds_key], what=f"{name} embeds", **tol)
        if f"{name}_last_hidden_state_raw" in out:
            H.assert_close(result.last_hidden_state, out[f"{name}_last_hidden_state_raw"], what=f"{name} raw", **tol)
        n = int(result.seq_lens[0])
        assert torch.count_nonzero(result.embeds[0, n:]) == 0


@pytest.mark.parametrize("case", H.case_params("e2e_i2va"))
def test_e2e_prompt_embeds_match_official(case):
    case = H.require_case(case)
    _, out = H.load_case(case)
    encoder = _load_encoder(case)
    tol = H.tolerance(case, "embeds", atol=1e-5, rtol=1e-4)
    for text, key in ((case["args"]["prompt"], "prompt_embeds"), (case["args"].get("negative_prompt", ""), "negative_prompt_embeds")):
        if key in out:
            H.assert_close(encoder.encode([text]).embeds, out[key], what=key, **tol)
