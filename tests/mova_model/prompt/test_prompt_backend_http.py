"""OpenAI-compatible HTTP backend against a stand-in server on 127.0.0.1.

The server (standin_openai.py) stands in for the remote chat service; it speaks the same
protocol and records each request, so these tests exercise the real urllib request/response path.
"""
import socket

import pytest

from mova_model.prompt.backends import BackendConfigError, BackendError, OpenAIChatBackend, chat_completions_url

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
