"""A small OpenAI-compatible chat server on 127.0.0.1, started by tests.

It STANDS IN FOR THE REMOTE SERVICE (OpenAI, vLLM, a hosted Qwen/Gemini gateway ...) that the
Prompt Enhancer's HTTP backend talks to in real use: same URL layout (``/v1/chat/completions``),
same request and response JSON. It is not a language model; each test decides what it answers
through ``reply`` (a function of the request JSON) and can make it slow, answer non-JSON, or
answer an HTTP error. Every request is recorded (path, headers, JSON body) for assertions.

Shared by the unit tests (tests/mova_model/prompt) and the real-host tests (tests/host), which
load this file by path.
"""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Reply = Callable[[dict], "str | tuple[int, str, bytes]"]


def completion_json(content: str, model: str = "stand-in") -> bytes:
    """A minimal OpenAI chat-completion response holding ``content``."""
    body = {
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
    return json.dumps(body).encode("utf-8")


def user_idea(request: dict) -> str:
    """The user's idea inside the enhancer's user message (between its two fixed headings)."""
    content = request["messages"][-1]["content"]
    match = re.search(r"User's idea[^\n]*\n(.*)\n\nWrite the caption now\.", content, re.DOTALL)
    return match.group(1).strip() if match else content


def rule_following_reply(request: dict) -> str:
    """What a well-behaved rewriting model would answer: visual paragraph, every quoted line of the
    user's idea kept verbatim, then an audio paragraph (built from the request, not a fixed string)."""
    idea = user_idea(request)
    quotes = re.findall(r'"([^"]*)"|\u201c([^\u201d]*)\u201d', idea)
    lines = [a or b for a, b in quotes]
    spoken = " ".join(f'A speaker says, "{line}"' for line in lines)
    visual = "A person stands in the frame and turns toward the camera as the scene unfolds."
    paragraphs = [visual] + ([spoken] if spoken else []) + ["The audio features the spoken lines and soft room tone."]
    return "\n\n".join(paragraphs)


class StandInChatServer:
    """Threaded HTTP server answering ``POST /v1/chat/completions`` (see module docstring).

    Args:
        reply: request JSON -> either the assistant text (wrapped as a chat completion) or a
            ``(status, content_type, body_bytes)`` tuple sent as is.
        delay_s: seconds to wait before answering (for timeout tests); a hanging server is a large
            ``delay_s`` (the wait ends early when the server is closed).
        drip_s: when > 0, send the body one byte every ``drip_s`` seconds (a slow-drip server that
            never lets a per-read socket timeout fire).
        content_length: send a ``Content-Length`` header (False: the body ends when the connection closes).
    """

    def __init__(self, reply: Reply = rule_following_reply, delay_s: float = 0.0, drip_s: float = 0.0,
                 content_length: bool = True):
        self.reply = reply
        self.delay_s = delay_s
        self.drip_s = drip_s
        self.content_length = content_length
        self.requests: list[dict] = []
        self.received = threading.Event()  # set when a request has arrived (for interrupt timing)
        self.disconnected = threading.Event()  # set when a client hung up before the answer was sent
        self._closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server naming
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    body = None
                server.requests.append({"path": self.path, "headers": dict(self.headers), "json": body})
                server.received.set()
                if server.delay_s:
                    server._closing.wait(server.delay_s)
                if self.path != "/v1/chat/completions" or body is None:
                    status, ctype, payload = 404, "application/json", b'{"error": {"message": "not found"}}'
                else:
                    answer = server.reply(body)
                    if isinstance(answer, tuple):
                        status, ctype, payload = answer
                    else:
                        status, ctype, payload = 200, "application/json", completion_json(answer, body.get("model", ""))
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    if server.content_length:
                        self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if server.drip_s:
                        for i in range(len(payload)):
                            if server._closing.wait(server.drip_s):
                                return
                            self.wfile.write(payload[i : i + 1])
                            self.wfile.flush()
                    else:
                        self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    server.disconnected.set()  # the client gave up (timeout test)

            def log_message(self, *args):  # keep test output quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> "StandInChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
