"""Prompt tools for MOVA: compose or rewrite prompts in the caption style MOVA was trained on.

- :mod:`.composer`: structured fields -> caption, deterministic (no model).
- :mod:`.rules`: the rewrite rules given to a chat model, in this project's words.
- :mod:`.backends`: OpenAI-compatible HTTP endpoint (stdlib urllib) and local transformers LM.
- :mod:`.enhancer`: rewrite with a backend, validate, optionally fall back.
- :mod:`.validator`: checks dialogue kept verbatim and the final audio paragraph.

No ComfyUI imports here; ``torch``/``transformers`` are imported only when a local LM is used.
"""
from .backends import BackendConfigError, BackendError, OpenAIChatBackend, TransformersChatBackend, render_chat
from .composer import CaptionFields, ComposerInputError, DialogueLine, compose_caption, compose_from_text_fields
from .enhancer import ON_FAILURE_CHOICES, EnhanceResult, PromptValidationError, enhance_prompt
from .rules import NO_SUBTITLES_LINE, SYSTEM_PROMPT, WORD_LIMIT, build_messages
from .validator import ValidationReport, quoted_spans, validate_caption

__all__ = [
    "BackendConfigError",
    "BackendError",
    "CaptionFields",
    "ComposerInputError",
    "DialogueLine",
    "EnhanceResult",
    "NO_SUBTITLES_LINE",
    "ON_FAILURE_CHOICES",
    "OpenAIChatBackend",
    "PromptValidationError",
    "SYSTEM_PROMPT",
    "TransformersChatBackend",
    "ValidationReport",
    "WORD_LIMIT",
    "build_messages",
    "compose_caption",
    "compose_from_text_fields",
    "enhance_prompt",
    "quoted_spans",
    "render_chat",
    "validate_caption",
]
