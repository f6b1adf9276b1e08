"""Build a tiny random-weight causal LM folder, laid out like a user's Hugging Face model folder.

A word-level tokenizer is trained here on a few sentences (``tokenizers``), wrapped in
``PreTrainedTokenizerFast`` with a ChatML-like chat template, and saved next to a 2-layer
``LlamaForCausalLM`` with random weights (``save_pretrained`` -> ``config.json``,
``model.safetensors``, ``tokenizer.json`` ...). Loading that folder runs exactly the code path a
real local model takes; its output is gibberish made of the training words.
"""
from __future__ import annotations

from pathlib import Path

SENTENCES = [
    "A woman in a red coat walks along the wet street at night .",
    "The man turns toward the camera and smiles .",
    "The audio features soft rain and distant traffic .",
    "She says hello and he replies quietly .",
    "Warm light falls across the wooden table in the kitchen .",
    "This video has no subtitles .",
]
SPECIAL_TOKENS = ["[UNK]", "[PAD]", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def build_tiny_lm(folder: str | Path, seed: int = 0, chat_template: bool = True) -> Path:
    """Write the tiny model + tokenizer to ``folder`` (created) and return it."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    raw = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", eos_token="<|endoftext|>"
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=raw.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder
