"""Local transformers backend with a tiny random-weight causal LM built in the test.

The model folder is written with ``save_pretrained`` and loaded by the backend exactly as a
user's ``models/mova_llm/<folder>`` would be; ``generate`` really runs (the text is gibberish).
"""
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mova_model.prompt.backends import (
    BackendConfigError,
    BackendError,
    RequestCancelled,
    TransformersChatBackend,
    check_model_folder,
    render_chat,
)
from mova_model.prompt.enhancer import PromptValidationError, enhance_prompt
from mova_model.prompt.rules import build_messages

MESSAGES = build_messages('The man waves and says "Hello there."', "A man stands in a kitchen.")


def test_greedy_generate_matches_an_independent_generate_call(tiny_lm_dir):
    backend = TransformersChatBackend(str(tiny_lm_dir), device="cpu")
    text = backend.chat(MESSAGES, max_new_tokens=10, temperature=0.0)

    # The same generation done by hand: template -> ids -> generate -> decode the new tokens only.
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    assert text == expected
    assert text  # the random model produced words
    vocab = set(tokenizer.get_vocab())
    assert all(word in vocab for word in text.split())  # made of the tiny vocabulary: it is model output
    assert backend._loaded is None  # freed after the call (keep_loaded=False)


def test_prompt_uses_the_chat_template(tiny_lm_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    prompt = render_chat(tokenizer, MESSAGES)
    assert prompt.startswith("<|im_start|> system You turn a user's idea")
    assert 'The man waves and says "Hello there."' in prompt
    assert prompt.endswith("<|im_start|> assistant ")


def test_plain_layout_without_chat_template(tmp_path, tiny_lm):
    folder = tiny_lm.build_tiny_lm(tmp_path / "base-model", chat_template=False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = render_chat(tokenizer, MESSAGES)
    assert prompt.startswith("Instructions:\nYou turn a user's idea")
    assert prompt.endswith("\n\nAnswer:\n")
    assert TransformersChatBackend(str(folder), device="cpu").chat(MESSAGES, max_new_tokens=4, temperature=0)


def test_sampling_is_seeded(tiny_lm_dir):
    backend = TransformersChatBackend(str(tiny_lm_dir), device="cpu", keep_loaded=True)
    first = backend.chat(MESSAGES, max_new_tokens=12, temperature=1.0, seed=3)
    again = backend.chat(MESSAGES, max_new_tokens=12, temperature=1.0, seed=3)
    other = backend.chat(MESSAGES, max_new_tokens=12, temperature=1.0, seed=4)
    assert first == again
    assert first != other
    assert backend._loaded is not None  # keep_loaded=True keeps the model between calls


def test_gibberish_fails_validation_then_fallback_works(tiny_lm_dir):
    backend = TransformersChatBackend(str(tiny_lm_dir), device="cpu")
    text = 'The man waves and says "Hello there."'
    with pytest.raises(PromptValidationError) as info:
        enhance_prompt(text, backend, max_new_tokens=8, temperature=0.0)
    message = str(info.value)
    assert 'the quoted line "Hello there." is not in the rewrite word for word' in message
    assert "no final audio paragraph" in message

    fallback = 'A man waves.\n\nHe says, "Hello there."\n\nThe audio features his voice.'
    result = enhance_prompt(text, backend, on_failure="fallback", fallback_prompt=fallback,
                            max_new_tokens=8, temperature=0.0)
    assert result.used_fallback and result.prompt == fallback
    assert result.rewrite  # the model's gibberish is kept for the report
    assert not result.report.ok
    assert "Using the fallback prompt" in result.report_text()


def test_folder_checks(tmp_path, tiny_lm_dir):
    with pytest.raises(BackendConfigError, match="does not exist"):
        TransformersChatBackend(str(tmp_path / "nope"))
    partial = tmp_path / "partial"
    shutil.copytree(tiny_lm_dir, partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(BackendConfigError, match=r"lacks \*\.safetensors weights"):
        check_model_folder(str(partial))


def test_unloadable_folder_gives_backend_error(tmp_path, tiny_lm_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_lm_dir, broken)
    (broken / "config.json").write_text('{"model_type": "no_such_architecture"}')
    with pytest.raises(BackendError, match="Could not load the language model"):
        TransformersChatBackend(str(broken), device="cpu").chat(MESSAGES, max_new_tokens=2)


def test_cancel_check_stops_generation(tiny_lm_dir):
    """Issue 9: ComfyUI's interrupt is honoured between generated tokens of a local model too."""
    calls = []

    def cancel_at_the_third_token() -> bool:
        calls.append(1)
        return len(calls) > 3  # once before loading, then once per token

    backend = TransformersChatBackend(str(tiny_lm_dir), device="cpu")
    with pytest.raises(RequestCancelled, match="cancelled while waiting for the local model"):
        backend.chat(MESSAGES, max_new_tokens=64, temperature=0.0, cancel_check=cancel_at_the_third_token)
    assert len(calls) == 4
