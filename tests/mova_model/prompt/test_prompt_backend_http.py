"""OpenAI-compatible HTTP backend against a stand-in server on 127.0.0.1.

The server (standin_openai.py) stands in for the remote chat service; it speaks the same
protocol and records each request, so these tests exercise the real urllib request/response path.
"""
import socket
import time

import pytest

from mova_model.prompt.backends import (
    MAX_RESPONSE_BYTES,
    BackendConfigError,
    BackendError,
    OpenAIChatBackend,
    RequestCancelled,
    chat_completions_url,
)

MESSAGES = [{"role": "system", "content": "rules"}, {"role": "user", "content": "idea"}]


def test_request_shape_and_answer(monkeypatch, standin):
    monkeypatch.setenv("MOVA_TEST_KEY", "sk-test-123")
    with standin.StandInChatServer(reply=lambda req: "  The rewritten caption.  ") as server:
        backend = OpenAIChatBackend(server.base_url, "my-model", api_key_env="MOVA_TEST_KEY", timeout_s=10)
        answer = backend.chat(MESSAGES, max_new_tokens=64, temperature=0.2, seed=7)
    assert answer == "The rewritten caption."
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test-123"
    assert request["json"] == {
        "model": "my-model",
        "messages": MESSAGES,
        "max_tokens": 64,
        "temperature": 0.2,
        "seed": 7,
        "stream": False,
    }


def test_no_authorization_header_when_env_var_unset(monkeypatch, standin):
    monkeypatch.delenv("MOVA_TEST_KEY_UNSET", raising=False)
    with standin.StandInChatServer(reply=lambda req: "ok") as server:
        OpenAIChatBackend(server.base_url + "/chat/completions", "m", api_key_env="MOVA_TEST_KEY_UNSET").chat(MESSAGES)
    assert "Authorization" not in server.requests[0]["headers"]
    assert server.requests[0]["path"] == "/v1/chat/completions"


def test_connection_refused():
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIChatBackend(f"http://127.0.0.1:{port}/v1", "m", timeout_s=5)
    with pytest.raises(BackendError) as info:
        backend.chat(MESSAGES)
    message = str(info.value)
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in message
    assert "connection refused" in message and "Is the server running" in message


def test_timeout(standin):
    with standin.StandInChatServer(reply=lambda req: "late", delay_s=2.0) as server:
        backend = OpenAIChatBackend(server.base_url, "m", timeout_s=0.3)
        with pytest.raises(BackendError) as info:
            backend.chat(MESSAGES)
    assert "did not answer within 0.3 s" in str(info.value)
    assert "Raise the timeout" in str(info.value)


def test_non_json_answer(standin):
    page = b"<html><body>Welcome to my homepage</body></html>"
    with standin.StandInChatServer(reply=lambda req: (200, "text/html", page)) as server:
        with pytest.raises(BackendError) as info:
            OpenAIChatBackend(server.base_url, "m").chat(MESSAGES)
    assert "did not return JSON" in str(info.value)
    assert "<html><body>Welcome" in str(info.value)


def test_json_without_choices(standin):
    with standin.StandInChatServer(reply=lambda req: (200, "application/json", b'{"result": "hi"}')) as server:
        with pytest.raises(BackendError, match=r"without choices\[0\]\.message\.content"):
            OpenAIChatBackend(server.base_url, "m").chat(MESSAGES)


def test_unauthorized_names_the_env_var(monkeypatch, standin):
    monkeypatch.delenv("MOVA_TEST_KEY_UNSET", raising=False)
    body = b'{"error": {"message": "Incorrect API key provided"}}'
    with standin.StandInChatServer(reply=lambda req: (401, "application/json", body)) as server:
        with pytest.raises(BackendError) as info:
            OpenAIChatBackend(server.base_url, "m", api_key_env="MOVA_TEST_KEY_UNSET").chat(MESSAGES)
    message = str(info.value)
    assert "HTTP 401" in message and "Incorrect API key provided" in message
    assert "MOVA_TEST_KEY_UNSET" in message and "NOT set" in message


def test_wrong_path_404_hint(standin):
    with standin.StandInChatServer() as server:
        backend = OpenAIChatBackend(server.base_url.replace("/v1", "/api"), "m")
        with pytest.raises(BackendError, match="HTTP 404.*usually ending in /v1"):
            backend.chat(MESSAGES)


def test_empty_content_is_an_error(standin):
    with standin.StandInChatServer(reply=lambda req: "   ") as server:
        with pytest.raises(BackendError, match="empty answer"):
            OpenAIChatBackend(server.base_url, "m").chat(MESSAGES)


def test_config_errors():
    with pytest.raises(BackendConfigError, match="not an http"):
        OpenAIChatBackend("127.0.0.1:8000/v1", "m")
    with pytest.raises(BackendConfigError, match="NAME of an environment variable"):
        OpenAIChatBackend("http://x/v1", "m", api_key_env="sk-abc.def-123")
    with pytest.raises(BackendConfigError, match="timeout"):
        OpenAIChatBackend("http://x/v1", "m", timeout_s=0)
    assert chat_completions_url("https://api.example.com/v1/") == "https://api.example.com/v1/chat/completions"


# --- issue 9, item 5: a total deadline, cancellation, a body-size cap -------------------------------


def test_slow_drip_server_hits_the_total_deadline(standin):
    """One byte every 0.3 s never trips a per-read timeout; the request as a whole must still stop."""
    with standin.StandInChatServer(reply=lambda req: "A caption.", drip_s=0.3) as server:
        backend = OpenAIChatBackend(server.base_url, "m", timeout_s=1.0)
        start = time.monotonic()
        with pytest.raises(BackendError) as info:
            backend.chat(MESSAGES)
        elapsed = time.monotonic() - start
        assert server.disconnected.wait(3.0), "the connection was not closed when the deadline passed"
    assert elapsed < 2.0, f"the request ran {elapsed:.1f} s with a 1 s total limit"
    message = str(info.value)
    assert "did not finish answering within 1 s" in message and "total time limit" in message
    assert "bytes of the answer had arrived" in message  # says the server was dripping, not silent


def test_cancel_check_stops_a_hanging_request(standin):
    """A server that never answers: the cancel check (ComfyUI's interrupt) ends the wait at once."""
    with standin.StandInChatServer(reply=lambda req: "late", delay_s=60.0) as server:
        backend = OpenAIChatBackend(server.base_url, "m", timeout_s=30.0)
        asked = []

        def cancel_after_request_arrived() -> bool:
            asked.append(time.monotonic())
            return server.received.is_set()

        start = time.monotonic()
        with pytest.raises(RequestCancelled, match="cancelled while waiting for the chat endpoint"):
            backend.chat(MESSAGES, cancel_check=cancel_after_request_arrived)
        elapsed = time.monotonic() - start
    assert elapsed < 1.5, f"cancelling took {elapsed:.1f} s"
    assert len(asked) >= 2  # asked repeatedly while waiting, not once


def test_cancel_check_may_raise_its_own_exception(standin):
    """ComfyUI's interrupt check raises its own exception; it must come out unchanged (not a BackendError)."""

    class HostInterrupt(Exception):
        pass

    def host_check():
        if server.received.is_set():
            raise HostInterrupt("interrupted by the user")

    with standin.StandInChatServer(reply=lambda req: "late", delay_s=60.0) as server:
        backend = OpenAIChatBackend(server.base_url, "m", timeout_s=30.0)
        with pytest.raises(HostInterrupt):
            backend.chat(MESSAGES, cancel_check=host_check)


@pytest.mark.parametrize("content_length", [True, False], ids=["declared-length", "no-length"])
def test_huge_body_is_refused_without_reading_it_all(standin, content_length):
    huge = b'{"choices": [{"message": {"content": "' + b"x" * (24 * 1024 * 1024) + b'"}}]}'
    with standin.StandInChatServer(reply=lambda req: (200, "application/json", huge),
                                   content_length=content_length) as server:
        backend = OpenAIChatBackend(server.base_url, "m", timeout_s=20.0)
        start = time.monotonic()
        with pytest.raises(BackendError) as info:
            backend.chat(MESSAGES)
        elapsed = time.monotonic() - start
    message = str(info.value)
    assert f"larger than the {MAX_RESPONSE_BYTES // (1024 * 1024)} MiB limit" in message, message
    assert elapsed < 5.0


def test_body_limit_is_a_setting(standin):
    with standin.StandInChatServer(reply=lambda req: "A caption that is long enough.") as server:
        with pytest.raises(BackendError, match="larger than the 100 bytes limit"):
            OpenAIChatBackend(server.base_url, "m", max_response_bytes=100).chat(MESSAGES)
        assert OpenAIChatBackend(server.base_url, "m", max_response_bytes=4096).chat(MESSAGES).startswith("A caption")
