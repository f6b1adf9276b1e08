"""Deterministic prompt composer: structured fields -> one caption in MOVA's training shape.

MOVA's training captions (paper §4.3 and App. A.5) read as: a visual narrative that opens on the
first frame, speakers anchored by how they look, their speech as exact quoted dialogue with its
delivery, then a paragraph on the sound ("The audio features …"), and on subtitle-free clips the
sentence "This video has no subtitles.". The composer builds that shape from fields with plain
string rules; no model runs, and the same fields always give the same text.

Dialogue is never altered: each line's text goes into straight double quotes exactly as typed
(after removing one pair of quotes the user may have typed around the whole line).

Field formats (one entry per line):

- ``speakers``: ``Name: how they look``, e.g. ``Anna: the woman in the red coat``.
- ``dialogue``: ``Name (delivery): line``, e.g. ``Anna (softly): Are you coming?``; the delivery is
  optional and is used as written after the verb ("says softly"). ASCII ``:`` or full-width ``：``
  and ``()`` or ``（）`` are accepted, so ``安娜（轻声）：你来吗？`` works too.
- ``action``: the events in order, one per line (or one paragraph).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from .rules import NO_SUBTITLES_LINE, WORD_LIMIT
from .validator import QUOTE_PAIRS, count_words, normalize_space

logger = logging.getLogger(__name__)

_DIALOGUE_RE = re.compile(
    r"^(?P<name>[^:\uff1a(\uff08]+?)\s*(?:[(\uff08](?P<delivery>[^)\uff09]*)[)\uff09])?\s*[:\uff1a]\s*(?P<text>.*)$"
)
_SENTENCE_END = ".!?\u2026\u3002\uff01\uff1f\"'\u201d\u300d\u300f)\uff09"
_QUESTION_END = ("?", "\uff1f")
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_LEADING_ARTICLES = ("A ", "An ", "The ", "Some ")


class ComposerInputError(ValueError):
    """A composer field cannot be read; the message names the field, the line and the fix."""


@dataclass(frozen=True)
class DialogueLine:
    """One spoken line: who says it, the exact text, and an optional delivery ("softly")."""

    speaker: str
    text: str
    delivery: str = ""


@dataclass
class CaptionFields:
    """Everything the composer needs; empty strings / lists mean "not given"."""

    scene: str = ""
    action: list[str] = field(default_factory=list)
    speakers: dict[str, str] = field(default_factory=dict)
    dialogue: list[DialogueLine] = field(default_factory=list)
    sound_effects: str = ""
    ambience: str = ""
    music: str = ""
    no_subtitles: bool = True


def _lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def strip_outer_quotes(text: str) -> str:
    """Remove one pair of matching quotes around the whole of ``text`` (``"…"``, ``“…”``, ``「…」``, ``『…』``).

    Only when the opening mark does not occur again inside, so ``"a" and "b"`` is left intact.
    """
    text = text.strip()
    if len(text) >= 2 and text[0] in QUOTE_PAIRS and text[-1] == QUOTE_PAIRS[text[0]]:
        inner = text[1:-1]
        if text[0] not in inner and QUOTE_PAIRS[text[0]] not in inner:
            return inner.strip()
    return text


def parse_speakers(text: str) -> dict[str, str]:
    """Parse ``Name: how they look`` lines into ``{name: description}`` (insertion order kept)."""
    speakers: dict[str, str] = {}
    for number, line in enumerate(_lines(text), start=1):
        name, sep, look = _split_colon(line)
        if not sep or not name.strip() or not look.strip():
            raise ComposerInputError(
                f"speakers, line {number} ({line!r}): write one speaker per line as "
                "'Name: how they look', e.g. 'Anna: the woman in the red coat'."
            )
        speakers[name.strip()] = look.strip()
    return speakers


def _split_colon(line: str) -> tuple[str, str, str]:
    match = re.search(r"[:\uff1a]", line)
    if not match:
        return line, "", ""
    return line[: match.start()], match.group(0), line[match.end():]


def parse_dialogue(text: str) -> list[DialogueLine]:
    """Parse ``Name (delivery): line`` lines into :class:`DialogueLine` objects, in order.

    The spoken text is kept exactly as typed, apart from one pair of quotes around the whole line.
    """
    parsed = []
    for number, line in enumerate(_lines(text), start=1):
        match = _DIALOGUE_RE.match(line)
        spoken = strip_outer_quotes(match.group("text")) if match else ""
        if not match or not match.group("name").strip() or not spoken:
            raise ComposerInputError(
                f"dialogue, line {number} ({line!r}): write one spoken line per row as "
                "'Name (delivery): words', e.g. 'Anna (softly): Are you coming?'; the delivery is optional."
            )
        parsed.append(DialogueLine(match.group("name").strip(), spoken, (match.group("delivery") or "").strip()))
    return parsed


def _end_sentence(text: str) -> str:
    """Add a full stop (``。`` after CJK text) unless ``text`` already ends a sentence."""
    text = normalize_space(text)
    if not text or text[-1] in _SENTENCE_END:
        return text
    return text + ("\u3002" if _CJK_RE.match(text[-1]) else ".")


def _capitalize(text: str) -> str:
    return text[0].upper() + text[1:] if text and text[0].islower() else text


def _inline(text: str) -> str:
    """A fragment for use mid-sentence: trailing full stop removed, a leading article lower-cased."""
    text = normalize_space(text).rstrip(".\u3002")
    if text.startswith(_LEADING_ARTICLES):
        text = text[0].lower() + text[1:]
    return text


def _join_list(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _speaker_subject(name: str, speakers: dict[str, str]) -> str:
    return speakers.get(name) or name


def _dialogue_paragraph(fields: CaptionFields) -> str:
    sentences = []
    previous = None
    for line in fields.dialogue:
        if line.text.rstrip().endswith(_QUESTION_END):
            verb = "asks"
        elif previous is None:
            verb = "says"
        elif previous == line.speaker:
            verb = "adds"
        else:
            verb = "replies"
        delivery = f" {normalize_space(line.delivery)}" if line.delivery else ""
        subject = _capitalize(_speaker_subject(line.speaker, fields.speakers))
        sentences.append(f'{subject} {verb}{delivery}, "{line.text}"')
        previous = line.speaker
    return " ".join(sentences)


def _audio_paragraph(fields: CaptionFields) -> str:
    features = []
    voices = []
    for line in fields.dialogue:
        subject = _inline(_speaker_subject(line.speaker, fields.speakers))
        if subject not in voices:
            voices.append(subject)
    if voices:
        features.append(f"the voice{'s' if len(voices) > 1 else ''} of {_join_list(voices)}")
    for part in (fields.sound_effects, fields.music):
        if normalize_space(part):
            features.append(_inline(part))
    ambience = _inline(fields.ambience) if normalize_space(fields.ambience) else ""
    if not features and not ambience:
        return "The audio features near silence, with no speech, music or distinct sound effects."
    if not features:
        return f"The audio features {ambience} in the background."
    if ambience:
        return f"The audio features {_join_list(features)}, with {ambience} in the background."
    return f"The audio features {_join_list(features)}."


def compose_caption(fields: CaptionFields) -> str:
    """Build the caption: scene, action, dialogue, audio paragraphs (+ the no-subtitles sentence).

    Paragraphs are separated by a blank line. Raises :class:`ComposerInputError` when neither a
    scene nor an action is given (MOVA's captions always open with the picture), or when a
    dialogue line names a speaker that the ``speakers`` field does not describe while that field
    is in use (a likely typo).
    """
    scene = _end_sentence(fields.scene) if normalize_space(fields.scene) else ""
    steps = [_capitalize(_end_sentence(step)) for step in fields.action if normalize_space(step)]
    if not scene and not steps:
        raise ComposerInputError(
            "Nothing to show: fill in the scene (what the first frame shows) or the action "
            "(what happens, one event per line)."
        )
    if fields.speakers:
        unknown = sorted({d.speaker for d in fields.dialogue} - set(fields.speakers))
        if unknown:
            raise ComposerInputError(
                f"dialogue names speaker(s) {', '.join(unknown)} that the speakers field does not describe; "
                f"add 'Name: how they look' lines for them or fix the spelling (described: "
                f"{', '.join(fields.speakers)})."
            )
    paragraphs = [p for p in (scene, " ".join(steps)) if p]
    if fields.dialogue:
        paragraphs.append(_dialogue_paragraph(fields))
    paragraphs.append(_audio_paragraph(fields))
    if fields.no_subtitles:
        paragraphs.append(NO_SUBTITLES_LINE)
    caption = "\n\n".join(paragraphs)
    words = count_words(caption)
    if words > WORD_LIMIT * 1.2:
        logger.warning("MOVA prompt has %d words; MOVA's captions are usually under ~%d.", words, WORD_LIMIT)
    return caption


def compose_from_text_fields(
    scene: str = "",
    action: str = "",
    speakers: str = "",
    dialogue: str = "",
    sound_effects: str = "",
    ambience: str = "",
    music: str = "",
    no_subtitles: bool = True,
) -> str:
    """Parse the node's text fields (formats in the module docstring) and compose the caption."""
    fields = CaptionFields(
        scene=scene or "",
        action=_lines(action),
        speakers=parse_speakers(speakers),
        dialogue=parse_dialogue(dialogue),
        sound_effects=sound_effects or "",
        ambience=ambience or "",
        music=music or "",
        no_subtitles=bool(no_subtitles),
    )
    return compose_caption(fields)
