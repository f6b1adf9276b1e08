"""Prompt enhancer end to end over HTTP: messages out, rewrite back, validation, fallback.

The stand-in server (standin_openai.py) stands in for the remote chat service.
"""
import socket
import time

import pytest

from mova_model.prompt.backends import BackendError, OpenAIChatBackend, RequestCancelled
from mova_model.prompt.enhancer import (
    PromptValidationError,
    clean_model_output,
    enhance_prompt,
    finish_caption,
)
from mova_model.prompt.rules import NO_FIRST_FRAME, SYSTEM_PROMPT, build_messages

IDEA = 'A chef flips a pancake. He shouts "Voilà !" and his friend answers \u201c好吃！\u201d. Sizzling pan sounds.'
FRAME = "A chef in a white hat stands at a stove in a bright kitchen."
FALLBACK = 'A chef flips a pancake.\n\nHe shouts, "Voilà !"\n\nThe audio features sizzling.'


def test_good_rewrite_passes_and_gets_the_subtitle_line(standin):
    with standin.StandInChatServer() as server:  # answers like a rule-following model
        backend = OpenAIChatBackend(server.base_url, "rewriter", api_key_env="")
        result = enhance_prompt(IDEA, backend, first_frame=FRAME, seed=5, temperature=0.3, max_new_tokens=300)
    assert result.report.ok, result.report.summary()
    assert not result.used_fallback
    assert result.prompt == (
        "A person stands in the frame and turns toward the camera as the scene unfolds.\n\n"
        'A speaker says, "Voilà !" A speaker says, "好吃！"\n\n'
        "The audio features the spoken lines and soft room tone.\n\n"
        "This video has no subtitles."
    )
    request = server.requests[0]["json"]
    assert request["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    user_message = request["messages"][1]["content"]
    assert FRAME in user_message and IDEA in user_message
    assert (request["seed"], request["temperature"], request["max_tokens"]) == (5, 0.3, 300)
    assert result.report_text().startswith("Prompt check: OK;")


def test_lost_dialogue_raises_with_reasons(standin):
    def drops_a_line(request):
        return 'A chef flips a pancake.\n\nHe shouts, "Voilà !"\n\nThe audio features sizzling.'

    with standin.StandInChatServer(reply=drops_a_line) as server:
        backend = OpenAIChatBackend(server.base_url, "m")
        with pytest.raises(PromptValidationError) as info:
            enhance_prompt(IDEA, backend, first_frame=FRAME)
    message = str(info.value)
    assert 'the quoted line "好吃！" is not in the rewrite word for word' in message
    assert "on_failure" in message  # says what to do
    assert "--- rewrite ---\nA chef flips a pancake." in message


def test_fallback_and_keep_modes(standin):
    def no_audio(request):
        return 'A chef flips a pancake. He shouts, "Voilà !" and his friend answers "好吃！".'

    with standin.StandInChatServer(reply=no_audio) as server:
        backend = OpenAIChatBackend(server.base_url, "m")
        fallen = enhance_prompt(IDEA, backend, on_failure="fallback", fallback_prompt=FALLBACK)
        kept = enhance_prompt(IDEA, backend, on_failure="keep", no_subtitles=False)
    assert fallen.used_fallback and fallen.prompt == FALLBACK
    assert "no final audio paragraph" in fallen.report_text()
    assert "Using the fallback prompt" in fallen.report_text()
    assert not kept.used_fallback
    assert kept.prompt == no_audio({})
    assert not kept.report.ok and "no final audio paragraph" in kept.report_text()


def test_backend_error_raises_or_falls_back():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", "m", timeout_s=5)
    with pytest.raises(BackendError, match="connection refused"):
        enhance_prompt(IDEA, backend)
    result = enhance_prompt(IDEA, backend, on_failure="fallback", fallback_prompt=FALLBACK)
    assert result.used_fallback and result.prompt == FALLBACK
    assert result.report_text().startswith("Backend failed: Could not connect")


def test_settings_checked_before_calling_the_backend(standin):
    with standin.StandInChatServer() as server:
        backend = OpenAIChatBackend(server.base_url, "m")
        with pytest.raises(ValueError, match="no fallback prompt is connected"):
            enhance_prompt(IDEA, backend, on_failure="fallback")
        with pytest.raises(ValueError, match="on_failure must be one of"):
            enhance_prompt(IDEA, backend, on_failure="retry")
        with pytest.raises(ValueError, match="prompt to rewrite is empty"):
            enhance_prompt("  ", backend)
    assert server.requests == []


def test_model_wrappers_are_removed(standin):
    def chatty(request):
        return (
            "<think>The user wants a caption.</think>\n```text\n**Caption:** A chef flips a pancake.\n"
            'He shouts, "Voilà !" and his friend answers, "好吃！"\n\nThe audio features sizzling.\n\n'
            "This video has no subtitles.\n```"
        )

    with standin.StandInChatServer(reply=chatty) as server:
        result = enhance_prompt(IDEA, OpenAIChatBackend(server.base_url, "m"))
    assert result.report.ok, result.report.summary()
    assert result.prompt == (
        "A chef flips a pancake.\n\n"
        'He shouts, "Voilà !" and his friend answers, "好吃！"\n\n'
        "The audio features sizzling.\n\n"
        "This video has no subtitles."
    )


def test_helpers():
    assert clean_model_output("Rewritten: A.\n\n\n\nB.") == "A.\n\nB."
    assert finish_caption("A.\n\nThis video has no subtitles.\n\nB.", no_subtitles=False) == "A.\n\nB."
    assert finish_caption("A.", no_subtitles=True) == "A.\n\nThis video has no subtitles."
    messages = build_messages("idea")
    assert NO_FIRST_FRAME in messages[1]["content"]
    assert "250 words" in messages[0]["content"]


# --- issue 9, item 5: a rewrite far longer than the input, cancellation ----------------------------


def test_huge_rewrite_fails_the_check_quickly(standin):
    """A model that rambles (here ~60 000 words, 300 kB) must not pass as "OK"."""

    def rambles(request):
        return 'He shouts, "Voilà !" and his friend answers, "好吃！" ' + "and the pan sizzles " * 15000 + (
            "\n\nThe audio features sizzling."
        )

    with standin.StandInChatServer(reply=rambles) as server:
        start = time.monotonic()
        with pytest.raises(PromptValidationError) as info:
            enhance_prompt(IDEA, OpenAIChatBackend(server.base_url, "m"))
        elapsed = time.monotonic() - start
    message = str(info.value)
    assert "the rewrite is 60021 words (300110 characters)" in message and "far longer than" in message, message[:500]
    assert "limit 750 words" in message
    assert elapsed < 5.0  # the quote check must not crawl through the whole text first
    assert len(message) < 3000  # the rewrite is shown cut, not whole


def test_cancelling_is_not_turned_into_the_fallback(standin):
    """An interrupt is the user's decision: it must end the node even with on_failure=fallback."""
    with standin.StandInChatServer(reply=lambda req: "late", delay_s=60.0) as server:
        backend = OpenAIChatBackend(server.base_url, "m", timeout_s=30.0)
        with pytest.raises(RequestCancelled):
            enhance_prompt(IDEA, backend, on_failure="fallback", fallback_prompt=FALLBACK,
                           cancel_check=server.received.is_set)
