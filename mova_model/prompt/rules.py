"""The rewrite rules given to a chat model, written for this project.

MOVA was trained on long structured captions (paper §4.3, App. A.5): a visual narrative first,
speakers anchored by what they look like, speech as exact quoted dialogue with its delivery,
and a last paragraph on the sound. The official workflow (``workflow/prompt_rewriter_with_image.py``)
asks a large chat model to rewrite a user's idea plus a description of the first frame into that
shape. This module states the same constraints in our own words and builds the chat messages;
nothing here is copied from the official prompt.

The rules, in short (:func:`build_messages` gives the message layout):

1. Open with a short summary of the first frame woven into the action (verbs, not an inventory).
2. Then what happens, in the order it happens; camera moves only when the user asked for them.
3. Dialogue exactly as written, in double quotes, in its own language; never translated,
   romanised or invented; attributed to a visually described speaker with its delivery.
4. A final paragraph about sound only, starting "The audio features" (or "The audio shows"),
   naming only sounds the user asked for.
5. At most about 250 words; concrete, observable wording; nothing that contradicts the first frame.
"""
from __future__ import annotations

WORD_LIMIT = 250
"""Soft length limit of a rewrite, in words (the official rewriter asks for at most 250)."""

AUDIO_OPENINGS = ("The audio features", "The audio shows", "The audio includes")
"""Sentence openings that mark the final, audio-only paragraph."""

NO_SUBTITLES_LINE = "This video has no subtitles."
"""Sentence appended to subtitle-free training captions in MOVA's phase-2 data (paper §4.3)."""

SYSTEM_PROMPT = f"""You turn a user's idea for a short clip into the kind of caption a joint video-and-audio \
generator was trained on. The clip lasts about eight seconds and starts from a known first frame. \
Reply with the caption only: no title, no preamble, no notes, no markdown.

How the caption is laid out:
- First paragraph: set the scene from the first frame in one or two sentences. Fold the people, \
objects, place, light, framing and any readable on-screen text into sentences about what is \
happening, using action verbs; do not list items one after another and do not write "there is". \
Copy on-screen text character for character.
- Next paragraph(s): what happens, in time order. Say who moves, how, where they look, how their \
faces change. Mention a camera move or a cut only if the user or the first-frame description \
asks for one. Keep the look of the first frame (style, colours, lighting) from start to end.
- Dialogue: put every spoken line in straight double quotes exactly as the user wrote it: same \
words, same language, same punctuation. Never translate it, never add pinyin or any other \
transcription, never add lines nobody asked for, never drop a line. Say who speaks (by what they \
look like, e.g. "the woman in the red coat") and how (softly, fast, laughing). Short exchanges can \
sit inside the action; several exchanges go in a paragraph of their own, in the order given.
- Last paragraph: sound only. Begin it with "The audio features" or "The audio shows". Describe \
the voices, music, background ambience and sound effects the user asked for, with rough timing \
when the user gave it (e.g. "near the end"). Do not add any sound the user did not mention.

Hard limits:
- At most {WORD_LIMIT} words in total.
- Concrete, visible or audible details only; no vague or abstract adjectives.
- Avoid words that suggest nothing moves (static, still, motionless, frozen, fixed, steady).
- Never contradict the first-frame description or the user's scene, even if it is unrealistic.
- Do not invent new characters, events or story beats."""

USER_TEMPLATE = """First frame (keep every detail consistent with it):
{first_frame}

User's idea (defines what happens and what is heard):
{user_text}

Write the caption now."""

NO_FIRST_FRAME = "(not given: take the opening scene from the user's idea)"
"""Placeholder used when no first-frame description is supplied (e.g. text-to-video)."""


def build_messages(user_text: str, first_frame: str = "") -> list[dict[str, str]]:
    """Chat messages for one rewrite: ``[{"role": "system", ...}, {"role": "user", ...}]``.

    Args:
        user_text: the user's free-text idea (may already hold quoted dialogue).
        first_frame: a description of the first frame (from any captioning model or typed by
            hand); empty for text-only generation.

    Mirrors the official rewriter's two-part request (system rules + a user message holding the
    first-frame elements and the user's input), with our own wording.
    """
    text = (user_text or "").strip()
    if not text:
        raise ValueError("The prompt to rewrite is empty: type what should happen in the clip.")
    frame = (first_frame or "").strip() or NO_FIRST_FRAME
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_TEMPLATE.format(first_frame=frame, user_text=text)},
    ]
