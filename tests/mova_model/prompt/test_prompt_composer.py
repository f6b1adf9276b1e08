"""MOVA Prompt Composer: structured fields -> caption in the trained shape, dialogue verbatim."""
import pytest

from mova_model.prompt.composer import (
    CaptionFields,
    ComposerInputError,
    DialogueLine,
    compose_caption,
    compose_from_text_fields,
    parse_dialogue,
    parse_speakers,
    strip_outer_quotes,
)
from mova_model.prompt.rules import NO_SUBTITLES_LINE
from mova_model.prompt.validator import split_paragraphs, validate_caption


def test_two_speakers_full_caption_exact():
    caption = compose_from_text_fields(
        scene="In a stone-walled room with red curtains, a woman in a dark dress holds a plate of pancakes",
        action="The man leans in and points at the pancakes\nhe opens his hand and gestures excitedly",
        speakers="Woman: the woman in the dark dress\nMan: the man in the black cape",
        dialogue='Woman (curiously): "What did she get me?"\nMan (with a grin): We\'ll see.\n'
        "Woman: She said never to open until you're one.",
        sound_effects="A soft clink of a fork.",
        music="a warm orchestral bed of strings",
        ambience="faint room tone",
        no_subtitles=True,
    )
    assert caption == (
        "In a stone-walled room with red curtains, a woman in a dark dress holds a plate of pancakes.\n\n"
        "The man leans in and points at the pancakes. He opens his hand and gestures excitedly.\n\n"
        'The woman in the dark dress asks curiously, "What did she get me?" '
        'The man in the black cape replies with a grin, "We\'ll see." '
        "The woman in the dark dress replies, \"She said never to open until you're one.\"\n\n"
        "The audio features the voices of the woman in the dark dress and the man in the black cape, "
        "a soft clink of a fork and a warm orchestral bed of strings, with faint room tone in the background.\n\n"
        "This video has no subtitles."
    )
    source = "\"What did she get me?\" \"We'll see.\" \"She said never to open until you're one.\""
    report = validate_caption(caption, source)
    assert report.ok, report.summary()


def test_chinese_dialogue_kept_verbatim_with_fullwidth_marks():
    dialogue = "小明（笑着）：\u201c今天的天气真好啊！\u201d\n小红：你要去哪儿？\n小红（小声）：我也想去。"
    caption = compose_from_text_fields(
        scene="两个学生站在校门口，阳光照在他们身上",
        dialogue=dialogue,
        ambience="birds chirping",
    )
    paragraphs = split_paragraphs(caption)
    assert paragraphs[0] == "两个学生站在校门口，阳光照在他们身上。"  # CJK sentence gets a CJK full stop
    assert paragraphs[1] == '小明 says 笑着, "今天的天气真好啊！" 小红 asks, "你要去哪儿？" 小红 adds 小声, "我也想去。"'
    assert paragraphs[2] == "The audio features the voices of 小明 and 小红, with birds chirping in the background."
    assert paragraphs[3] == NO_SUBTITLES_LINE
    for line in ("今天的天气真好啊！", "你要去哪儿？", "我也想去。"):
        assert f'"{line}"' in caption  # no translation, no pinyin, quotes unchanged inside
    assert validate_caption(caption, '"今天的天气真好啊！" "你要去哪儿？" "我也想去。"').ok


def test_no_dialogue_no_subtitle_line():
    caption = compose_from_text_fields(
        scene="A close-up of a dark car's side window at night",
        action="Heavy rain pelts the glass\nDroplets merge and run down the pane",
        sound_effects="heavy rain striking glass",
        no_subtitles=False,
    )
    assert caption == (
        "A close-up of a dark car's side window at night.\n\n"
        "Heavy rain pelts the glass. Droplets merge and run down the pane.\n\n"
        "The audio features heavy rain striking glass."
    )
    assert NO_SUBTITLES_LINE not in caption
    assert '"' not in caption
    assert validate_caption(caption, "").ok


def test_nothing_audible_says_so_instead_of_inventing_sounds():
    caption = compose_from_text_fields(scene="A cat sleeps on a windowsill")
    assert split_paragraphs(caption)[-2] == (
        "The audio features near silence, with no speech, music or distinct sound effects."
    )
    assert validate_caption(caption).ok


def test_ambience_only_and_speaker_without_description():
    caption = compose_caption(
        CaptionFields(
            action=["a man waves"],
            dialogue=[DialogueLine("Tom", "Over here!"), DialogueLine("Tom", "Hurry up.", "impatiently")],
            ambience="The distant hum of traffic.",
            no_subtitles=False,
        )
    )
    assert caption == (
        "A man waves.\n\n"
        'Tom says, "Over here!" Tom adds impatiently, "Hurry up."\n\n'
        "The audio features the voice of Tom, with the distant hum of traffic in the background."
    )


def test_three_speakers_turn_taking_verbs():
    caption = compose_from_text_fields(
        scene="Three friends sit around a campfire",
        speakers="A: the girl in the yellow raincoat\nB: the bearded man\nC: the boy with glasses",
        dialogue="A: Who brought the marshmallows?\nB (laughing): Not me.\nC: I did.\nC: They're in my bag.",
    )
    dialogue_paragraph = split_paragraphs(caption)[1]
    assert dialogue_paragraph == (
        'The girl in the yellow raincoat asks, "Who brought the marshmallows?" '
        'The bearded man replies laughing, "Not me." '
        'The boy with glasses replies, "I did." '
        "The boy with glasses adds, \"They're in my bag.\""
    )
    assert "the voices of the girl in the yellow raincoat, the bearded man and the boy with glasses" in caption


def test_deterministic():
    kwargs = dict(scene="A dog runs on a beach", dialogue="Owner: Good boy!", music="upbeat ukulele")
    assert compose_from_text_fields(**kwargs) == compose_from_text_fields(**kwargs)


def test_parse_dialogue_keeps_inner_text_and_colons():
    lines = parse_dialogue('Anna (softly): Note: it\'s late.\nBen: "a" and "b"\nCarl: \u300c\u3053\u3093\u306b\u3061\u306f\u300d')
    assert lines == [
        DialogueLine("Anna", "Note: it's late.", "softly"),
        DialogueLine("Ben", '"a" and "b"'),  # quotes inside the line are not one outer pair: kept
        DialogueLine("Carl", "\u3053\u3093\u306b\u3061\u306f"),
    ]


def test_strip_outer_quotes():
    assert strip_outer_quotes('"Hello."') == "Hello."
    assert strip_outer_quotes("\u201cHi\u201d") == "Hi"
    assert strip_outer_quotes('"Hi" she said "bye"') == '"Hi" she said "bye"'
    assert strip_outer_quotes("No quotes") == "No quotes"


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(scene="", action=""), "fill in the scene"),
        (dict(scene="x", dialogue="just words without a speaker"), "dialogue, line 1"),
        (dict(scene="x", dialogue="Anna:"), "dialogue, line 1"),
        (dict(scene="x", speakers="Anna the woman"), "speakers, line 1"),
        (dict(scene="x", speakers="Anna: a woman", dialogue="Ana: Hi"), "Ana"),
    ],
)
def test_bad_fields_raise_readable_errors(kwargs, fragment):
    with pytest.raises(ComposerInputError) as info:
        compose_from_text_fields(**kwargs)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_speakers():
    assert parse_speakers("Anna: the woman in red\n\n  Ben\uff1athe tall man ") == {
        "Anna": "the woman in red",
        "Ben": "the tall man",
    }
