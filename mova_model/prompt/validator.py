"""Checks that a prompt has MOVA's caption shape and kept the user's dialogue verbatim.

Used on every rewrite the Prompt Enhancer gets back from a language model (and in tests on the
Composer's output). Fatal problems (``errors``) make the enhancer fail or fall back:

- a quoted line of the input (dialogue or on-screen text, in ``"…"``, ``“…”``, ``「…」`` or
  ``『…』``) is missing from the rewrite, or present but not inside quotes;
- the rewrite quotes text that appears nowhere in the input (an invented line would be spoken);
- there is no final audio paragraph (starting "The audio …"), it is not the last paragraph, or it
  is the only paragraph;
- the rewrite is empty, or far longer than both the input and a MOVA caption need (more than
  ``max(3 x word_limit, 2 x the input's words)`` words, or 16 characters per allowed word): the
  text encoder reads 512 tokens, so such a rewrite is a rambling model, not a prompt. This check
  runs first and alone, so a huge answer is refused at once.

Soft problems (``warnings``) are reported but do not fail: more words than the soft limit, words
that suggest nothing moves. Comparisons ignore differences in whitespace only (a model may re-wrap
lines); every other character, apostrophes and punctuation included, must match.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from .rules import NO_SUBTITLES_LINE, WORD_LIMIT

# Opening -> closing quote characters accepted around a quoted line.
QUOTE_PAIRS = {'"': '"', "\u201c": "\u201d", "\u300c": "\u300d", "\u300e": "\u300f"}
_QUOTE_RE = re.compile(r'"([^"]*)"|\u201c([^\u201d]*)\u201d|\u300c([^\u300d]*)\u300d|\u300e([^\u300f]*)\u300f')
_AUDIO_RE = re.compile(r"^the\s+audio\b", re.IGNORECASE)
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
LENGTH_FACTOR_OVER_LIMIT = 3
"""A rewrite may have up to this many times the caption word limit ..."""
LENGTH_FACTOR_OVER_INPUT = 2
"""... or this many times the words of the input (a long input with many quoted lines)."""
CHARS_PER_WORD_LIMIT = 16
"""Characters allowed per allowed word (catches one giant "word" without spaces)."""
_STATIC_WORDS = ("static", "stationary", "motionless", "frozen", "freezes", "unmoving")


def normalize_space(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends."""
    return " ".join(text.split())


def quoted_spans(text: str) -> list[str]:
    """The quoted spans of ``text`` in order, whitespace-normalised, empty ones dropped.

    Straight double quotes pair up left to right; curly double quotes and CJK corner brackets
    pair with their own closing mark.
    """
    spans = []
    for match in _QUOTE_RE.finditer(text or ""):
        inner = next(g for g in match.groups() if g is not None)
        inner = normalize_space(inner)
        if inner:
            spans.append(inner)
    return spans


def count_words(text: str) -> int:
    """Words in ``text``: whitespace-separated tokens, with each CJK character counted as one word."""
    cjk = len(_CJK_RE.findall(text))
    rest = _CJK_RE.sub(" ", text)
    return cjk + len(rest.split())


def split_paragraphs(text: str) -> list[str]:
    """Non-empty paragraphs (blank-line or line-break separated), whitespace-normalised."""
    return [normalize_space(p) for p in re.split(r"\n\s*", (text or "").strip()) if p.strip()]


@dataclass
class ValidationReport:
    """Result of :func:`validate_caption`. ``ok`` is true when there are no ``errors``."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    word_count: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """Readable multi-line text: verdict, then one line per error and warning."""
        head = "OK" if self.ok else f"FAILED ({len(self.errors)} problem{'s' if len(self.errors) != 1 else ''})"
        lines = [f"Prompt check: {head}; {self.word_count} words."]
        lines += [f"- error: {e}" for e in self.errors]
        lines += [f"- warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _is_quoted_at(text: str, start: int, end: int) -> bool:
    """True when ``text[start:end]`` sits directly between an opening and a matching closing quote."""
    if start == 0 or end >= len(text):
        return False
    opening = text[start - 1]
    return opening in QUOTE_PAIRS and text[end] == QUOTE_PAIRS[opening]


def _closest(needle: str, candidates: list[str]) -> str | None:
    match = difflib.get_close_matches(needle, candidates, n=1, cutoff=0.4)
    return match[0] if match else None


def _check_quotes(caption: str, source_text: str, first_frame: str, report: ValidationReport) -> None:
    flat = normalize_space(caption)
    caption_quotes = quoted_spans(caption)
    for line in quoted_spans(source_text):
        positions = [m.start() for m in re.finditer(re.escape(line), flat)]
        if not positions:
            hint = _closest(line, caption_quotes)
            msg = f'the quoted line "{line}" is not in the rewrite word for word'
            msg += f' (closest quoted text there: "{hint}")' if hint else " (no similar quoted text found)"
            report.errors.append(msg + ".")
        elif not any(_is_quoted_at(flat, p, p + len(line)) for p in positions):
            report.errors.append(f'the line "{line}" is in the rewrite but not inside double quotes.')
    allowed = normalize_space(source_text) + "\n" + normalize_space(first_frame)
    for span in caption_quotes:
        if span not in allowed:
            report.errors.append(
                f'the rewrite quotes "{span}", which is not in the input; '
                "an invented line would be spoken in the video."
            )


def _check_audio_paragraph(caption: str, report: ValidationReport) -> None:
    paragraphs = [p for p in split_paragraphs(caption) if p != NO_SUBTITLES_LINE]
    audio_idx = [i for i, p in enumerate(paragraphs) if _AUDIO_RE.match(p)]
    if not audio_idx:
        report.errors.append(
            'there is no final audio paragraph: the last paragraph must start with "The audio features" '
            '(or "The audio shows") and describe only the sound.'
        )
    elif audio_idx[-1] != len(paragraphs) - 1:
        report.errors.append(
            "the audio paragraph is not the last paragraph; the sound description must come after the "
            "visual narrative."
        )
    elif len(paragraphs) == 1:
        report.errors.append("the rewrite is only an audio paragraph; the visual narrative is missing.")


def validate_caption(
    caption: str,
    source_text: str = "",
    first_frame: str = "",
    *,
    word_limit: int = WORD_LIMIT,
    word_tolerance: float = 1.2,
) -> ValidationReport:
    """Check ``caption`` against MOVA's caption shape and the quoted lines of ``source_text``.

    Args:
        caption: the prompt to check (a rewrite, or the Composer's output).
        source_text: what the user wrote; every quoted span in it must reappear verbatim, quoted.
        first_frame: the first-frame description; quoted on-screen text from it may be quoted in
            the caption without counting as invented.
        word_limit: the soft limit in words; a warning is added above ``word_limit * word_tolerance``.

    Returns a :class:`ValidationReport`; it never raises on a bad caption.
    """
    report = ValidationReport(word_count=count_words(caption or ""))
    if not (caption or "").strip():
        report.errors.append("the rewrite is empty.")
        return report
    input_words = count_words(source_text or "") + count_words(first_frame or "")
    max_words = max(LENGTH_FACTOR_OVER_LIMIT * word_limit, LENGTH_FACTOR_OVER_INPUT * input_words)
    max_chars = CHARS_PER_WORD_LIMIT * max_words
    if report.word_count > max_words or len(caption) > max_chars:
        report.errors.append(
            f"the rewrite is {report.word_count} words ({len(caption)} characters), far longer than the input "
            f"({input_words} words) or a MOVA caption (~{word_limit} words) needs (limit {max_words} words, "
            f"{max_chars} characters); the text encoder reads only the first 512 tokens. Ask for a shorter "
            "rewrite or use a model that follows the length rule."
        )
        return report
    _check_quotes(caption, source_text or "", first_frame or "", report)
    _check_audio_paragraph(caption, report)
    if report.word_count > word_limit * word_tolerance:
        report.warnings.append(
            f"{report.word_count} words, more than the ~{word_limit} MOVA's captions usually have; "
            "the text encoder reads at most 512 tokens, so the end of a long prompt (the audio) may be cut."
        )
    lowered = caption.lower()
    found = [w for w in _STATIC_WORDS if re.search(rf"\b{w}\b", lowered)]
    if found:
        report.warnings.append(f"words that suggest nothing moves: {', '.join(found)}.")
    return report
