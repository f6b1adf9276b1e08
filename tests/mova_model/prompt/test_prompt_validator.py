"""The validator on good and bad rewrites."""
from mova_model.prompt.validator import count_words, quoted_spans, split_paragraphs, validate_caption

USER = (
    "A woman holds pancakes while a caped man points at them. Woman: \"What did she get me?\" "
    "Man: \"We'll see.\" Soft strings swell."
)
FRAME = 'A woman in a dark dress in a stone room; a sign reads "OPEN".'

GOOD = (
    "In a stone-walled room, a woman in a dark dress holds a plate of pancakes under a sign reading \"OPEN\".\n\n"
    "The man leans in and points at the pancakes. She asks, \"What did she get me?\" and he replies, "
    "\"We'll see.\"\n\n"
    "The audio features the two voices over a soft bed of strings that swells gently.\n\n"
    "This video has no subtitles."
)


def test_good_rewrite_passes():
    report = validate_caption(GOOD, USER, FRAME)
    assert report.ok, report.summary()
    assert report.errors == [] and report.warnings == []
    assert report.summary().startswith("Prompt check: OK;")


def test_rewrapped_lines_are_accepted():
    rewrapped = GOOD.replace('"What did she get me?"', '"What did\n  she get me?"')
    assert validate_caption(rewrapped, USER, FRAME).ok


def test_changed_dialogue_is_reported_with_closest_match():
    bad = GOOD.replace("We'll see.", "We will see.")
    report = validate_caption(bad, USER, FRAME)
    assert not report.ok
    assert report.errors[0] == (
        'the quoted line "We\'ll see." is not in the rewrite word for word '
        '(closest quoted text there: "We will see.").'
    )
    # the changed line is also quoted text that the input never had
    assert any('quotes "We will see."' in e and "invented" in e for e in report.errors)


def test_typographic_apostrophe_counts_as_a_change():
    bad = GOOD.replace("We'll see.", "We\u2019ll see.")
    assert not validate_caption(bad, USER, FRAME).ok


def test_translated_dialogue_fails():
    user = '男人说："我们走吧。"'
    bad = 'A man turns to the door.\n\nHe says, "Let\'s go."\n\nThe audio features his calm voice.'
    report = validate_caption(bad, user)
    assert len(report.errors) == 2
    assert '"我们走吧。" is not in the rewrite' in report.errors[0]
    good = 'A man turns to the door.\n\nHe says, "我们走吧。"\n\nThe audio features his calm voice.'
    assert validate_caption(good, user).ok


def test_dialogue_present_but_unquoted_fails():
    bad = GOOD.replace('"We\'ll see."', "We'll see.")
    report = validate_caption(bad, USER, FRAME)
    assert report.errors == ['the line "We\'ll see." is in the rewrite but not inside double quotes.']


def test_invented_line_fails():
    bad = GOOD.replace("She asks,", 'He says, "Breakfast is served." She asks,')
    report = validate_caption(bad, USER, FRAME)
    assert report.errors == [
        'the rewrite quotes "Breakfast is served.", which is not in the input; '
        "an invented line would be spoken in the video."
    ]


def test_missing_audio_paragraph_fails():
    bad = GOOD.replace("The audio features", "Meanwhile we hear")
    report = validate_caption(bad, USER, FRAME)
    assert len(report.errors) == 1 and "no final audio paragraph" in report.errors[0]


def test_audio_paragraph_not_last_fails():
    paragraphs = split_paragraphs(GOOD)
    reordered = "\n\n".join([paragraphs[0], paragraphs[2], paragraphs[1]])
    report = validate_caption(reordered, USER, FRAME)
    assert len(report.errors) == 1 and "not the last paragraph" in report.errors[0]


def test_audio_only_fails():
    report = validate_caption("The audio features birdsong.", "")
    assert report.errors == ["the rewrite is only an audio paragraph; the visual narrative is missing."]


def test_audio_sentence_inside_visual_paragraph_does_not_count():
    bad = 'A man walks. The audio features wind.\n\nHe says, "Hi."'
    report = validate_caption(bad, '"Hi."')
    assert any("no final audio paragraph" in e for e in report.errors)


def test_empty_rewrite_fails():
    assert validate_caption("   ", USER).errors == ["the rewrite is empty."]


def test_long_and_static_wording_are_warnings_only():
    filler = " ".join(["word"] * 320)
    text = f"A static shot of a frozen lake. {filler}\n\nThe audio features wind."
    report = validate_caption(text, "")
    assert report.ok
    assert len(report.warnings) == 2
    assert "words, more than the ~250" in report.warnings[0]
    assert report.warnings[1] == "words that suggest nothing moves: static, frozen."
    assert "warning:" in report.summary()


def test_quoted_spans_and_word_count():
    assert quoted_spans('a "x  y" b \u201cz\u201d \u300c\u4f60\u300d ""') == ["x y", "z", "\u4f60"]
    assert count_words("two words \u4f60\u597d") == 4


def test_rewrite_far_longer_than_any_caption_fails():
    """Issue 9: a 10 MB rewrite passed as "OK"; beyond 3x the word limit (or 2x a long input) is an error."""
    rambling = "The chef turns. " * 300 + "\n\nThe audio features wind."  # 904 words
    report = validate_caption(rambling, "A chef turns.")
    assert not report.ok
    assert report.errors == [
        "the rewrite is 904 words (4826 characters), far longer than the input (3 words) or a MOVA caption "
        "(~250 words) needs (limit 750 words, 12000 characters); the text encoder reads only the first "
        "512 tokens. Ask for a shorter rewrite or use a model that follows the length rule."
    ]
    # A long input may get a proportionally long rewrite (its quoted lines must all survive).
    long_input = "The chef turns. " * 400
    assert validate_caption(rambling, long_input).ok
    # One giant "word" is caught by the character limit.
    blob = "A chef " + "x" * 20000 + " turns.\n\nThe audio features wind."
    (error,) = validate_caption(blob, "A chef turns.").errors
    assert error.startswith("the rewrite is 8 words (20040 characters), far longer than")
