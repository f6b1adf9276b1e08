"""Chat backends for the prompt enhancer: an OpenAI-compatible HTTP endpoint, or a local causal LM.

Both expose ``chat(messages, *, max_new_tokens, temperature, seed, cancel_check) -> str`` where
``messages`` is the usual list of ``{"role": ..., "content": ...}`` dicts. Both raise
:class:`BackendError` (a ``RuntimeError``) with a sentence saying what went wrong and what to do,
and stop when ``cancel_check()`` returns True (:class:`RequestCancelled`) or raises (the host's own
interrupt exception passes through unchanged); this package never imports the host.

- :class:`OpenAIChatBackend` posts to ``<base_url>/chat/completions`` with the standard library's
  ``urllib`` (no client package needed). ``timeout_s`` bounds the whole request (connect, wait,
  body), not one socket read, and the body may be at most ``max_response_bytes``. It works with
  OpenAI, vLLM, SGLang, llama.cpp's server, Ollama's ``/v1``, LM Studio and the like. The API key
  is read from an environment variable whose *name* is given, so the key itself never sits in a
  workflow file.
- :class:`TransformersChatBackend` loads a causal LM folder (``config.json``, safetensors weights,
  tokenizer files) with ``transformers`` and runs ``generate``.

The official workflow calls hosted models (Gemini 2.5 Pro, qwen-plus, MiniMax) through their SDKs;
these backends give the same "system + user message in, text out" contract without those SDKs.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Protocol

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]
CancelCheck = Callable[[], "bool | None"]
"""Called often while a backend works: return True to cancel, or raise the host's own interrupt."""

MAX_RESPONSE_BYTES = 2 * 1024 * 1024
"""Largest chat-completion body read; an answer of 4096 tokens is well under 100 kB of JSON."""
CANCEL_POLL_S = 0.1
"""How often (seconds) a waiting request checks the deadline and ``cancel_check``."""


class BackendError(RuntimeError):
    """A chat backend could not produce an answer; the message says why and what to try."""


class BackendConfigError(ValueError):
    """A backend setting is unusable (bad URL, missing model folder, ...)."""


class RequestCancelled(RuntimeError):
    """The caller's ``cancel_check`` asked to stop (e.g. ComfyUI's Cancel); not a backend failure."""


class ChatBackend(Protocol):
    """What the enhancer needs from a backend."""

    def chat(self, messages: Messages, *, max_new_tokens: int = 512, temperature: float = 0.7, seed: int = 0,
             cancel_check: CancelCheck | None = None) -> str:
        ...


def raise_if_cancelled(cancel_check: CancelCheck | None, waiting_for: str) -> None:
    """Call ``cancel_check``; raise :class:`RequestCancelled` when it returns True (its own exception passes)."""
    if cancel_check is not None and cancel_check():
        raise RequestCancelled(f"The prompt rewrite was cancelled while waiting for {waiting_for}.")


def format_bytes(n: int) -> str:
    """``2097152`` -> ``"2 MiB"``; sizes that are not whole MiB in bytes."""
    mib = 1024 * 1024
    return f"{n // mib} MiB" if n >= mib and n % mib == 0 else f"{n} bytes"


# --------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP endpoint
# --------------------------------------------------------------------------------------------


def chat_completions_url(base_url: str) -> str:
    """Normalise a user-typed endpoint to the ``…/chat/completions`` URL.

    ``http://host:8000/v1`` -> ``http://host:8000/v1/chat/completions``; a URL that already ends in
    ``/chat/completions`` is kept. Raises :class:`BackendConfigError` for anything not http(s).
    """
    url = (base_url or "").strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BackendConfigError(
            f"endpoint URL {url!r} is not an http(s) URL; give the server's OpenAI-compatible base, "
            "e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1."
        )
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + "/chat/completions"


class _ResponseTooLarge(Exception):
    def __init__(self, declared: int | None):
        super().__init__(declared)
        self.declared = declared


class _TrackingHandlerMixin:
    """Records every connection urllib opens so another thread can shut its socket down."""

    def __init__(self, exchange: "_HttpExchange", **kwargs):
        super().__init__(**kwargs)
        self._exchange = exchange

    def do_open(self, http_class, req, **http_conn_args):
        exchange = self._exchange

        def tracked(*args, **kwargs):
            connection = http_class(*args, **kwargs)
            plain_connect = connection.connect

            def connect():
                plain_connect()
                if exchange.aborted.is_set():  # given up while connecting: do not send the request
                    raise ConnectionAbortedError("the request was abandoned")

            connection.connect = connect
            exchange.connections.append(connection)
            return connection

        return super().do_open(tracked, req, **http_conn_args)


class _TrackingHTTPHandler(_TrackingHandlerMixin, urllib.request.HTTPHandler):
    pass


class _TrackingHTTPSHandler(_TrackingHandlerMixin, urllib.request.HTTPSHandler):
    pass


class _HttpExchange:
    """One HTTP request on a daemon worker thread, so the caller can stop waiting at any moment.

    The worker reads the body in pieces up to ``max_bytes``. :meth:`abort` shuts the socket down,
    which wakes a worker blocked in a read; a worker still connecting stops at ``read_timeout_s``
    at the latest and sends nothing.
    """

    def __init__(self, request: urllib.request.Request, read_timeout_s: float, max_bytes: int):
        self.request = request
        self.read_timeout_s = read_timeout_s
        self.max_bytes = max_bytes
        self.connections: list[http.client.HTTPConnection] = []
        self.aborted = threading.Event()
        self.done = threading.Event()
        self.headers_received = False
        self.bytes_received = 0
        self.body: bytes | None = None
        self.error: BaseException | None = None
        self.error_detail = ""
        self._thread = threading.Thread(target=self._run, name="mova-chat-request", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        opener = urllib.request.build_opener(_TrackingHTTPHandler(self), _TrackingHTTPSHandler(self))
        try:
            with opener.open(self.request, timeout=self.read_timeout_s) as response:
                self.headers_received = True
                declared = response.headers.get("Content-Length", "")
                if declared.strip().isdigit() and int(declared) > self.max_bytes:
                    raise _ResponseTooLarge(int(declared))
                chunks = []
                while not self.aborted.is_set():
                    chunk = response.read1(64 * 1024)
                    if not chunk:
                        break
                    self.bytes_received += len(chunk)
                    if self.bytes_received > self.max_bytes:
                        raise _ResponseTooLarge(None)
                    chunks.append(chunk)
                self.body = b"".join(chunks)
        except urllib.error.HTTPError as err:
            try:  # the error text, bounded like any body
                self.error_detail = err.read(4096).decode("utf-8", "replace").strip()[:300]
            except Exception:  # noqa: BLE001 - the status code alone is still useful
                self.error_detail = ""
            self.error = err
        except BaseException as err:  # noqa: BLE001 - handed to the waiting thread
            self.error = err
        finally:
            self.done.set()

    def abort(self) -> None:
        """Stop the worker: no request is sent after this, a blocked read returns at once."""
        self.aborted.set()
        for connection in list(self.connections):
            sock = connection.sock
            if sock is not None:
                try:  # the plain-socket shutdown also works under TLS and wakes the reader
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass


class OpenAIChatBackend:
    """Chat through any OpenAI-compatible ``/chat/completions`` endpoint (stdlib ``urllib`` only).

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (or the full ``…/chat/completions`` URL).
        model: the model name the server expects (required by most servers).
        api_key_env: NAME of the environment variable holding the key; empty or unset means no
            ``Authorization`` header (fine for local servers).
        timeout_s: total seconds for the request: connect, the server's thinking and the whole body.
        max_response_bytes: largest body read (default :data:`MAX_RESPONSE_BYTES`); more is an error.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 120.0,
                 max_response_bytes: int = MAX_RESPONSE_BYTES):
        self.url = chat_completions_url(base_url)
        self.model = (model or "").strip()
        self.api_key_env = (api_key_env or "").strip()
        if self.api_key_env and not all(c.isalnum() or c == "_" for c in self.api_key_env):
            raise BackendConfigError(
                f"api_key_env must be the NAME of an environment variable (letters, digits, _), "
                f"not the key itself; got a value of {len(self.api_key_env)} characters with other symbols."
            )
        if timeout_s <= 0:
            raise BackendConfigError(f"timeout must be positive seconds, got {timeout_s}.")
        self.timeout_s = float(timeout_s)
        if max_response_bytes <= 0:
            raise BackendConfigError(f"max_response_bytes must be positive, got {max_response_bytes}.")
        self.max_response_bytes = int(max_response_bytes)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif self.api_key_env:
            logger.info("Environment variable %s is not set; calling %s without an API key.", self.api_key_env, self.url)
        return headers

    def _key_hint(self) -> str:
        if not self.api_key_env:
            return "set api_key_env to the name of the environment variable that holds your key"
        state = "is set" if os.environ.get(self.api_key_env) else "is NOT set in ComfyUI's environment"
        return f"check the key in environment variable {self.api_key_env} (it {state}; restart ComfyUI after setting it)"

    def chat(self, messages: Messages, *, max_new_tokens: int = 512, temperature: float = 0.7, seed: int = 0,
             cancel_check: CancelCheck | None = None) -> str:
        """POST the messages and return ``choices[0].message.content`` (stripped).

        The whole exchange ends within ``timeout_s``; ``cancel_check`` is called every
        :data:`CANCEL_POLL_S` seconds while waiting (see :class:`RequestCancelled`).
        """
        payload = {
            "model": self.model,
            "messages": messages,
            "max_tokens": int(max_new_tokens),
            "temperature": float(temperature),
            "seed": int(seed),
            "stream": False,
        }
        request = urllib.request.Request(
            self.url, data=json.dumps(payload).encode("utf-8"), headers=self._headers(), method="POST"
        )
        raise_if_cancelled(cancel_check, f"the chat endpoint {self.url}")
        exchange = _HttpExchange(request, self.timeout_s, self.max_response_bytes)
        deadline = time.monotonic() + self.timeout_s
        exchange.start()
        try:
            while not exchange.done.wait(max(0.0, min(CANCEL_POLL_S, deadline - time.monotonic()))):
                raise_if_cancelled(cancel_check, f"the chat endpoint {self.url}")
                if time.monotonic() >= deadline:
                    raise BackendError(self._deadline_text(exchange))
        finally:
            if not exchange.done.is_set():
                exchange.abort()
        err = exchange.error
        if err is None:
            return self._parse(exchange.body or b"")
        if isinstance(err, _ResponseTooLarge):
            raise BackendError(self._too_large_text(err.declared)) from None
        if isinstance(err, urllib.error.HTTPError):
            raise BackendError(self._http_error_text(err, exchange.error_detail)) from err
        if isinstance(err, urllib.error.URLError):
            raise BackendError(self._connection_error_text(err.reason)) from err
        if isinstance(err, (TimeoutError, socket.timeout)):
            raise BackendError(self._deadline_text(exchange)) from err
        if isinstance(err, (OSError, http.client.HTTPException)):
            raise BackendError(self._connection_error_text(err)) from err
        raise err

    def _deadline_text(self, exchange: _HttpExchange) -> str:
        limit = f"{self.timeout_s:g} s (timeout_s, the total time limit for the request)"
        if exchange.headers_received:
            return (
                f"The chat endpoint {self.url} did not finish answering within {limit}: only "
                f"{exchange.bytes_received} bytes of the answer had arrived, so the server or the network is "
                "very slow. Raise the timeout, use a smaller/faster model, or check the connection."
            )
        return (
            f"The chat endpoint {self.url} did not answer within {limit}. "
            "Raise the timeout, use a smaller/faster model, or check that the server is not overloaded."
        )

    def _too_large_text(self, declared: int | None) -> str:
        size = f"{declared} bytes" if declared is not None else "it kept sending"
        return (
            f"The chat endpoint {self.url} sent an answer larger than the {format_bytes(self.max_response_bytes)} "
            f"limit ({size}); a rewritten prompt is a few kilobytes. Check that the URL is an OpenAI-compatible "
            "chat API and that max_new_tokens is sensible."
        )

    def _connection_error_text(self, reason: object) -> str:
        if isinstance(reason, (TimeoutError, socket.timeout)) or "timed out" in str(reason):
            return (
                f"The chat endpoint {self.url} did not answer within {self.timeout_s:g} s (timeout_s, the total "
                "time limit for the request). Raise the timeout, use a smaller/faster model, or check that the "
                "server is not overloaded."
            )
        if isinstance(reason, ConnectionRefusedError) or "refused" in str(reason).lower():
            return (
                f"Could not connect to the chat endpoint {self.url}: connection refused. "
                "Is the server running, and are the host and port in the URL right?"
            )
        if isinstance(reason, socket.gaierror):
            host = urllib.parse.urlsplit(self.url).hostname
            return f"Could not resolve the host {host!r} of the chat endpoint {self.url}; check the URL and your network."
        return f"Could not reach the chat endpoint {self.url}: {reason}. Check the URL and that the server is running."

    def _http_error_text(self, err: urllib.error.HTTPError, detail: str) -> str:
        text = f"The chat endpoint {self.url} answered HTTP {err.code}"
        text += f": {detail}" if detail else "."
        if err.code in (401, 403):
            text += f" The server refused the credentials: {self._key_hint()}."
        elif err.code == 404:
            text += (
                " Check that the URL is the OpenAI-compatible base (usually ending in /v1) and that "
                f"model name {self.model!r} exists on the server."
            )
        elif err.code == 400 and not self.model:
            text += " The model name is empty; most servers need one."
        elif err.code == 429:
            text += " The server is rate-limiting; wait and retry, or check your quota."
        return text

    def _parse(self, body: bytes) -> str:
        snippet = body[:200].decode("utf-8", "replace").strip()
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BackendError(
                f"The chat endpoint {self.url} did not return JSON (it began with: {snippet!r}). "
                "Is this URL an OpenAI-compatible API (usually ending in /v1) rather than a web page?"
            ) from err
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as err:
            error = data.get("error") if isinstance(data, dict) else None
            if error:
                raise BackendError(f"The chat endpoint {self.url} returned an error: {error}") from err
            raise BackendError(
                f"The chat endpoint {self.url} answered JSON without choices[0].message.content "
                f"(it began with: {snippet!r}); it does not look like an OpenAI-compatible chat API."
            ) from err
        if not isinstance(content, str) or not content.strip():
            raise BackendError(
                f"The chat endpoint {self.url} returned an empty answer (model {self.model!r}); "
                "try again, raise max_new_tokens, or use another model."
            )
        return content.strip()


# --------------------------------------------------------------------------------------------
# Local causal LM with transformers
# --------------------------------------------------------------------------------------------

_FALLBACK_ROLES = {"system": "Instructions", "user": "Request", "assistant": "Answer"}


def render_chat(tokenizer, messages: Messages) -> str:
    """The prompt text for ``messages``: the tokenizer's chat template when it has one.

    Without a template (base models) a plain layout is used: one ``Role:`` block per message and
    a trailing ``Answer:`` for the model to continue.
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    blocks = [f"{_FALLBACK_ROLES.get(m['role'], m['role'].title())}:\n{m['content']}" for m in messages]
    return "\n\n".join(blocks) + "\n\nAnswer:\n"


def check_model_folder(folder: str) -> None:
    """Raise :class:`BackendConfigError` unless ``folder`` looks like a safetensors causal-LM folder."""
    if not folder or not os.path.isdir(folder):
        raise BackendConfigError(
            f"local language model folder {folder!r} does not exist; put a Hugging Face model folder "
            "(config.json, *.safetensors, tokenizer files) under ComfyUI/models/mova_llm/."
        )
    names = os.listdir(folder)
    missing = []
    if "config.json" not in names:
        missing.append("config.json")
    if not any(n.endswith(".safetensors") for n in names):
        missing.append("*.safetensors weights (only safetensors are loaded)")
    if not any(n in names for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")):
        missing.append("tokenizer files (tokenizer.json or tokenizer.model + tokenizer_config.json)")
    if missing:
        raise BackendConfigError(f"local language model folder {folder} lacks {', '.join(missing)}.")


def _dtype_keyword() -> str:
    """``from_pretrained``'s dtype argument name: ``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class TransformersChatBackend:
    """A causal LM from a local folder, run with ``transformers`` ``generate``.

    Args:
        folder: a Hugging Face model folder (safetensors only; no remote code is run).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... (``None``: CUDA when available).
        dtype: ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"float32"``, ``"bfloat16"``, ``"float16"``.
        keep_loaded: keep the model in memory between calls (default: free it after each call).
    """

    def __init__(self, folder: str, device: str | None = None, dtype: str = "auto", keep_loaded: bool = False):
        check_model_folder(folder)
        self.folder = folder
        self.device = device
        self.dtype = dtype
        self.keep_loaded = keep_loaded
        self._loaded = None

    def _torch_dtype(self, torch, device):
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        try:
            return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]
        except KeyError:
            raise BackendConfigError(f"dtype {self.dtype!r} is not one of auto, float32, bfloat16, float16.") from None

    def load(self):
        """Load (once) and return ``(tokenizer, model, device)``."""
        if self._loaded is not None:
            return self._loaded
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.folder, trust_remote_code=False)
            dtype_kwarg = {_dtype_keyword(): self._torch_dtype(torch, device)}
            model = AutoModelForCausalLM.from_pretrained(
                self.folder, use_safetensors=True, trust_remote_code=False, **dtype_kwarg
            )
        except (OSError, ValueError, KeyError) as err:
            raise BackendError(
                f"Could not load the language model in {self.folder}: {err}. It must be a causal LM that "
                "this transformers version supports without remote code."
            ) from err
        model.to(device).eval()
        self._loaded = (tokenizer, model, device)
        return self._loaded

    def unload(self) -> None:
        """Drop the model so its memory can be reclaimed."""
        self._loaded = None

    def chat(self, messages: Messages, *, max_new_tokens: int = 512, temperature: float = 0.7, seed: int = 0,
             cancel_check: CancelCheck | None = None) -> str:
        """Render ``messages``, generate up to ``max_new_tokens`` tokens, return the new text only.

        ``cancel_check`` is called before loading and after every generated token.
        """
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        waiting_for = f"the local model in {self.folder}"

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:
                raise_if_cancelled(cancel_check, waiting_for)
                return False

        raise_if_cancelled(cancel_check, waiting_for)

        tokenizer, model, device = self.load()
        try:
            prompt = render_chat(tokenizer, messages)
            encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            inputs = {k: encoded[k].to(device) for k in ("input_ids", "attention_mask") if k in encoded}
            prompt_len = inputs["input_ids"].shape[1]  # input_ids: [1, L] token ids
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            sampling = temperature > 0
            kwargs = dict(max_new_tokens=int(max_new_tokens), do_sample=sampling, pad_token_id=pad_id)
            if cancel_check is not None:
                kwargs["stopping_criteria"] = StoppingCriteriaList([_Cancel()])
            if sampling:
                kwargs["temperature"] = float(temperature)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(int(seed))
                with torch.inference_mode():
                    output = model.generate(**inputs, **kwargs)  # [1, L + new]
            text = tokenizer.decode(output[0, prompt_len:], skip_special_tokens=True).strip()
        finally:
            if not self.keep_loaded:
                self.unload()
        if not text:
            raise BackendError(
                f"The local model in {self.folder} generated no text; raise max_new_tokens or use an "
                "instruction-tuned model with a chat template."
            )
        return text
