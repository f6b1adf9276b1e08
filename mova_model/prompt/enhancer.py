"""Prompt enhancer: rewrite free text into MOVA's caption shape with a chat model, then check it.

Mirrors stage 2 of the official prompt-enhancement workflow (paper §5.2; ``workflow/
prompt_rewriter_with_image.py``): the user's idea plus a description of the first frame go to a
language model with the rewrite rules (:mod:`.rules`), and the answer is the prompt MOVA gets.
Unlike the official script, the answer is validated (:mod:`.validator`) before it is used, the
"no subtitles" sentence is added deterministically rather than left to the model, and a failed
rewrite can fall back to a prompt the user supplies (e.g. the Composer's output).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from ..bounds import cap_text
from .backends import BackendError, CancelCheck, ChatBackend
from .rules import NO_SUBTITLES_LINE, build_messages
from .validator import ValidationReport, split_paragraphs, validate_caption

logger = logging.getLogger(__name__)

ON_FAILURE_ERROR = "error"
ON_FAILURE_FALLBACK = "fallback"
ON_FAILURE_KEEP = "keep"
ON_FAILURE_CHOICES = (ON_FAILURE_ERROR, ON_FAILURE_FALLBACK, ON_FAILURE_KEEP)
"""What to do when the rewrite fails the check: raise, use the fallback prompt, or keep it anyway."""

_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE_RE = re.compile(r"^```[a-zA-Z]*\s*\n(.*?)\n```\s*$", re.DOTALL)
_LABEL_RE = re.compile(r"^\s*\**\s*(rewritten|caption|prompt|video description)\s*\**\s*:\s*\**\s*", re.IGNORECASE)


class PromptValidationError(ValueError):
    """The model's rewrite broke a rule (lost dialogue, no audio paragraph, ...)."""


@dataclass
class EnhanceResult:
    """Outcome of :func:`enhance_prompt`.

    Attributes:
        prompt: the prompt to use (the cleaned rewrite, or the fallback).
        rewrite: the cleaned model answer ("" when the backend failed).
        report: the validator's report on ``rewrite``.
        used_fallback: True when ``prompt`` is the fallback prompt.
        backend_error: the backend's error text when it failed and the fallback was used.
    """

    prompt: str
    rewrite: str
    report: ValidationReport
    used_fallback: bool = False
    backend_error: str = ""

    def report_text(self) -> str:
        """Readable status for the node's report output."""
        lines = []
        if self.backend_error:
            lines.append(f"Backend failed: {self.backend_error}")
        else:
            lines.append(self.report.summary())
        if self.used_fallback:
            lines.append("Using the fallback prompt instead of the rewrite.")
        return "\n".join(lines)


def clean_model_output(text: str) -> str:
    """Strip what chat models wrap around an answer: ``<think>`` blocks, code fences, a leading label.

    Paragraphs are re-joined with one blank line between them.
    """
    text = _THINK_RE.sub("", text or "").strip()
    fenced = _FENCE_RE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    text = _LABEL_RE.sub("", text, count=1)
    return "\n\n".join(split_paragraphs(text))


def finish_caption(text: str, no_subtitles: bool) -> str:
    """Remove any "This video has no subtitles." paragraph the model wrote; append it when asked."""
    paragraphs = [p for p in split_paragraphs(text) if p != NO_SUBTITLES_LINE]
    if no_subtitles:
        paragraphs.append(NO_SUBTITLES_LINE)
    return "\n\n".join(paragraphs)


def enhance_prompt(
    user_text: str,
    backend: ChatBackend,
    *,
    first_frame: str = "",
    no_subtitles: bool = True,
    on_failure: str = ON_FAILURE_ERROR,
    fallback_prompt: str = "",
    max_new_tokens: int = 512,
    temperature: float = 0.7,
    seed: int = 0,
    cancel_check: CancelCheck | None = None,
) -> EnhanceResult:
    """Rewrite ``user_text`` with ``backend`` and validate the result.

    Args:
        user_text: the user's idea; quoted lines in it must survive verbatim.
        backend: anything with ``chat(messages, max_new_tokens=, temperature=, seed=) -> str``.
        first_frame: description of the first frame ("" for text-only).
        no_subtitles: append "This video has no subtitles." to the result.
        on_failure: ``"error"`` raises :class:`PromptValidationError` (or the backend's
            :class:`BackendError`); ``"fallback"`` returns ``fallback_prompt``; ``"keep"`` returns
            the rewrite with the problems listed in the report.
        fallback_prompt: the prompt used with ``on_failure="fallback"`` (required then).
        cancel_check: handed to ``backend.chat``; a cancel (:class:`~.backends.RequestCancelled` or the
            check's own exception) always propagates, whatever ``on_failure`` says.

    Raises ``ValueError`` for an empty text or an unknown/unsatisfiable ``on_failure`` before
    calling the backend.
    """
    if on_failure not in ON_FAILURE_CHOICES:
        raise ValueError(f"on_failure must be one of {', '.join(ON_FAILURE_CHOICES)}, got {on_failure!r}.")
    if on_failure == ON_FAILURE_FALLBACK and not (fallback_prompt or "").strip():
        raise ValueError(
            "on_failure is 'fallback' but no fallback prompt is connected; connect the MOVA Prompt "
            "Composer's output (or any STRING) to fallback_prompt, or pick another on_failure."
        )
    # the texts the chat model's and MOVA's tokenizers will see, cut before either does (issue 17, item 3)
    user_text = cap_text(user_text, "text to enhance")
    first_frame = cap_text(first_frame, "first-frame description")
    fallback_prompt = cap_text(fallback_prompt, "fallback prompt")
    messages = build_messages(user_text, first_frame)
    try:
        raw = backend.chat(messages, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                           cancel_check=cancel_check)
    except BackendError as err:
        if on_failure != ON_FAILURE_FALLBACK:
            raise
        logger.warning("Prompt enhancer backend failed, using the fallback prompt: %s", err)
        return EnhanceResult(fallback_prompt, "", ValidationReport(errors=[str(err)]), True, str(err))
    rewrite = finish_caption(clean_model_output(raw), no_subtitles)  # checked whole: its length is a finding
    report = validate_caption(rewrite, user_text, first_frame)
    if report.ok:
        return EnhanceResult(rewrite, rewrite, report)
    if on_failure == ON_FAILURE_FALLBACK:
        logger.warning("Prompt rewrite failed the check, using the fallback prompt.\n%s", report.summary())
        return EnhanceResult(fallback_prompt, rewrite, report, used_fallback=True)
    if on_failure == ON_FAILURE_KEEP:
        logger.warning("Prompt rewrite failed the check, keeping it as asked.\n%s", report.summary())
        return EnhanceResult(cap_text(rewrite, "rewritten prompt"), rewrite, report)
    raise PromptValidationError(
        "The rewritten prompt breaks MOVA's caption rules:\n"
        + "\n".join(f"- {e}" for e in report.errors)
        + "\nTry again with another seed, a stronger model, or set on_failure to 'fallback' "
        "(with the Composer's prompt connected) or 'keep'.\n--- rewrite ---\n"
        + rewrite[:1500]
    )
