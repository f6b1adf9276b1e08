"""UMT5 text encoder of MOVA: prompt cleaning, tokenization and the zero-padded 512-token embedding.

Mirrors `MOVA._get_t5_prompt_embeds` and `prompt_clean` (`mova/diffusion/pipelines/pipeline_mova.py`):
clean the prompt (ftfy, HTML-unescape twice, collapse whitespace), tokenize to exactly `max_length` tokens
(padding to the maximum, truncation, `</s>` appended), run the UMT5 encoder with the attention mask, keep the
rows of the real tokens and set every later row to exactly zero.

The network itself is transformers' `UMT5EncoderModel` (same state-dict keys as the shipped
`text_encoder/*.safetensors`), built on the meta device with its `nn.Linear` layers swapped for the
operations factory's cast-at-forward layers, so fp8 storage and streaming are decided outside this file.
"""

from __future__ import annotations

import html
import logging
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import ftfy
import torch
from torch import nn

from ..bounds import MAX_TEXT_CHARS, cap_text
from ..checkpoint.configs import TextEncoderConfig
from .ops import Operations

logger = logging.getLogger(__name__)

MAX_SEQUENCE_LENGTH = 512
"""Token count of every prompt embedding (`max_sequence_length` of the official `__call__`)."""

SHARED_KEY = "shared.weight"
EMBED_KEY = "encoder.embed_tokens.weight"

_WHITESPACE = re.compile(r"\s+")


def prompt_clean(text: str) -> str:
    """Clean a prompt exactly like the official `prompt_clean`.

    `ftfy.fix_text` (fixes mojibake, straightens curly quotes), `html.unescape` twice (so `&amp;amp;` -> `&`),
    strip, then every whitespace run (newlines and tabs included) becomes one space.
    """
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip()


def tie_embedding_weights(state_dict: Dict[str, torch.Tensor], prefix: str = "") -> Dict[str, torch.Tensor]:
    """Fill in whichever of `shared.weight` / `encoder.embed_tokens.weight` is missing (in place; returned).

    The two are one tied parameter in `UMT5EncoderModel`; `save_pretrained` usually writes only
    `shared.weight`. When both are present `shared.weight` is kept for both (transformers ties the encoder's
    embedding to `shared`) and a difference is logged.
    """
    shared, embed = prefix + SHARED_KEY, prefix + EMBED_KEY
    if shared in state_dict and embed not in state_dict:
        state_dict[embed] = state_dict[shared]
    elif embed in state_dict and shared not in state_dict:
        state_dict[shared] = state_dict[embed]
    elif shared in state_dict and embed in state_dict and state_dict[shared] is not state_dict[embed]:
        a, b = state_dict[shared], state_dict[embed]
        if a.shape != b.shape or (a.device.type != "meta" and b.device.type != "meta" and not torch.equal(a, b)):
            logger.warning("text_encoder: %s differs from %s; using %s for both (they are tied)", embed, shared, shared)
        state_dict[embed] = a
    return state_dict


def _tie_pre_hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    tie_embedding_weights(state_dict, prefix)


def _gated_ffn_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """UMT5 gated-GELU feed-forward: `wo(act(wi_0 x) · wi_1 x)`.

    Same math as transformers' `UMT5DenseGatedActDense.forward`, minus its cast of the activations to `wo`'s
    *storage* dtype (meant for an fp32 `wo` under fp16): with cast-at-forward layers the storage can be fp8,
    and `wo` casts its weight to the activation dtype itself. Identical when storage and compute dtypes match.
    """
    gated = self.act(self.wi_0(hidden_states)) * self.wi_1(hidden_states)
    return self.wo(self.dropout(gated))


def _plain_ffn_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """UMT5 non-gated feed-forward `wo(act(wi x))` (same remark as `_gated_ffn_forward`)."""
    return self.wo(self.dropout(self.act(self.wi(hidden_states))))


def _swap_linears(module: nn.Module, ops: Operations) -> int:
    count = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear:
            setattr(module, name, ops.Linear(child.in_features, child.out_features, bias=child.bias is not None))
            count += 1
        else:
            count += _swap_linears(child, ops)
    return count


def build_text_encoder_module(config: TextEncoderConfig, ops: Operations) -> nn.Module:
    """Build transformers' `UMT5EncoderModel` from `text_encoder/config.json` on the meta device.

    Every `nn.Linear` (q/k/v/o, wi_0/wi_1/wo) is replaced by `ops.Linear` of the same shape; state-dict keys
    are unchanged. Weights are assigned later with `load_state_dict(sd, assign=True)`; a file with or without
    `encoder.embed_tokens.weight` is accepted (tied to `shared.weight` by a load pre-hook). The module is in
    eval mode (the config's dropout 0.1 must not apply at inference).
    """
    from transformers import UMT5Config, UMT5EncoderModel

    raw = {k: v for k, v in config.raw.items() if not k.startswith("_")} or config.to_dict()
    hf_config = UMT5Config(**raw)
    with torch.device("meta"):
        module = UMT5EncoderModel(hf_config)
    swapped = _swap_linears(module, ops)
    for sub in module.modules():
        if hasattr(sub, "wo") and hasattr(sub, "act") and hasattr(sub, "dropout"):
            if hasattr(sub, "wi_0"):
                sub.forward = types.MethodType(_gated_ffn_forward, sub)
            elif hasattr(sub, "wi"):
                sub.forward = types.MethodType(_plain_ffn_forward, sub)
    module.register_load_state_dict_pre_hook(_tie_pre_hook)
    module.eval()
    module.requires_grad_(False)
    logger.debug("text_encoder: built UMT5 encoder (%d layers, d_model %d), %d linear layers on ops",
                 config.num_layers, config.d_model, swapped)
    return module


@dataclass
class TextEncoding:
    """Result of `TextEncoder.encode` for B prompts.

    embeds: [B, max_length, d_model], rows past each prompt's real length exactly 0 (what the DiTs receive).
    input_ids, attention_mask: int64 [B, max_length]. last_hidden_state: the encoder output before zeroing.
    seq_lens: int64 [B], number of real tokens (including `</s>`).
    """

    embeds: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    last_hidden_state: torch.Tensor
    seq_lens: torch.Tensor


class TextEncoder:
    """Tokenizer + UMT5 encoder; `encode` mirrors the official `_get_t5_prompt_embeds`.

    tokenizer_dir: the checkpoint's `tokenizer/` folder (T5TokenizerFast files).
    module: the encoder from `build_text_encoder_module` with weights assigned.
    """

    def __init__(self, tokenizer_dir: Union[str, Path], module: nn.Module) -> None:
        from transformers import T5TokenizerFast

        self.tokenizer = T5TokenizerFast.from_pretrained(str(tokenizer_dir))
        self.module = module

    def tokenize(self, prompts: Sequence[str], max_length: int = MAX_SEQUENCE_LENGTH):
        """Clean and tokenize: returns (input_ids, attention_mask), int64 [B, max_length]. A text longer than
        `bounds.MAX_TEXT_CHARS` is cut to that first (far beyond the 512 tokens read; see `encode`)."""
        cleaned = [prompt_clean(p[:MAX_TEXT_CHARS]) for p in prompts]
        batch = self.tokenizer(
            cleaned,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return batch.input_ids, batch.attention_mask

    def truncation_notes(self, prompts: Sequence[str], names: Sequence[str], max_length: int = MAX_SEQUENCE_LENGTH
                         ) -> List[str]:
        """One sentence per prompt longer than `max_length` tokens (the official tokenizer cuts it silently):
        its token count and where the ignored part begins. `names` label the prompts in the sentences."""
        notes = []
        for prompt, name in zip(prompts, names):
            ids = self.tokenizer(prompt_clean(prompt[:MAX_TEXT_CHARS]), add_special_tokens=True, truncation=False,
                                 verbose=False)["input_ids"]  # the cleaned prompt's tokens and `</s>`
            if len(ids) <= max_length:
                continue
            cut = self.tokenizer.decode(ids[max_length - 1 : max_length + 11], skip_special_tokens=True).strip()
            notes.append(f"the {name} is {len(ids)} tokens but the UMT5 text encoder reads only the first {max_length} "
                         f"(the official limit): everything from \"{cut} …\" on ({len(ids) - max_length} tokens) is "
                         "ignored. Shorten it; MOVA's captions are about 250 words.")
        return notes

    def _device(self) -> torch.device:
        shared = getattr(self.module, "shared", None)
        if shared is not None and shared.weight.device.type != "meta":
            return shared.weight.device
        return torch.device("cpu")

    @torch.no_grad()
    def encode(self, prompts: Union[str, List[str]], max_length: int = MAX_SEQUENCE_LENGTH,
               device: Optional[torch.device] = None, names: Optional[Sequence[str]] = None) -> TextEncoding:
        """Encode prompts to `[B, max_length, d_model]` embeddings with padded rows set to exactly zero.

        The dtype of the embeddings is what the encoder computes in (the dtype of its embedding table and
        norms); `device` defaults to where the embedding table lives. A prompt cut at `max_length` is logged
        as a warning (`truncation_notes`, labelled by `names`, default "prompt 1", "prompt 2", ...); so is one
        longer than `bounds.MAX_TEXT_CHARS` characters, which is cut to those before cleaning and tokenizing
        (the tokenizer would otherwise hold every token of the whole text).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        names = list(names) if names is not None else [f"prompt {i + 1}" for i in range(len(prompts))]
        prompts = [cap_text(prompt, name) for prompt, name in zip(prompts, names)]
        for note in self.truncation_notes(prompts, names, max_length):
            logger.warning("%s", note)
        input_ids, attention_mask = self.tokenize(prompts, max_length)
        seq_lens = attention_mask.gt(0).sum(dim=1).long()
        device = device or self._device()
        self.module.eval()
        hidden = self.module(input_ids.to(device), attention_mask.to(device)).last_hidden_state
        embeds = torch.zeros_like(hidden)
        for row, length in enumerate(seq_lens.tolist()):
            embeds[row, :length] = hidden[row, :length]
        return TextEncoding(embeds=embeds, input_ids=input_ids, attention_mask=attention_mask,
                            last_hidden_state=hidden, seq_lens=seq_lens)
