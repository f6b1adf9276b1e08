"""Start a real ComfyUI server with this node pack loaded, and talk to it over HTTP/websocket.

Used by ``scripts/demo.py`` and the ``tests/host`` / ``tests/browser`` fixtures. Needs a venv
prepared by ``scripts/install_host.sh`` (ComfyUI source tree in ``VENV/comfyui``) and
``aiohttp`` in the interpreter that imports this module.

Typical use::

    server = ComfyServer(venv=".venv", base="/tmp/comfy-base", packs=["."]).start()
    try:
        client = ComfyClient(server.url)
        name = client.upload_image("frame.png")
        result = client.run(api_workflow, timeout=600, out_dir="outputs")
    finally:
        server.stop()
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger("comfy_host")

PACK_LINK_NAME = "comfyui-mova"
# Binary websocket message kinds that carry a preview image (ComfyUI protocol.BinaryEventTypes).
_PREVIEW_EVENT_KINDS = {1, 4}
_END_EVENTS = ("execution_success", "execution_error", "execution_interrupted")


class HostError(RuntimeError):
    """The server could not be started, died, or a pack failed to import."""


class PromptRejected(RuntimeError):
    """``POST /prompt`` answered 400: the workflow failed validation (see ``node_errors``)."""

    def __init__(self, message: str, body: dict):
        super().__init__(message)
        self.body = body
        self.node_errors = body.get("node_errors") or {}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (``VmRSS`` of ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                value, unit = line.split()[1:3]
                return int(value) * {"kB": 1024, "mB": 1024**2}.get(unit, 1)
    raise HostError(f"no VmRSS for pid {pid}")


def pack_import_failures(log_text: str, pack_names: list[str]) -> list[str]:
    """Names among ``pack_names`` that the ComfyUI log reports as failed imports.

    ComfyUI keeps running when a custom node pack fails to import; it only logs
    ``Cannot import <path> module for custom nodes`` and, in the import-time table,
    ``<secs> seconds (IMPORT FAILED): <path>``.
    """
    failed = []
    for name in pack_names:
        path_re = r"\S*[/\\]custom_nodes[/\\]" + re.escape(name)
        if re.search(r"Cannot import " + path_re + r" module for custom nodes", log_text) or re.search(
            r"\(IMPORT FAILED\): " + path_re + r"\s*$", log_text, flags=re.MULTILINE
        ):
            failed.append(name)
    return failed


class ComfyServer:
    """One headless ComfyUI process (``main.py --cpu``, or on its GPU with ``cpu=False``) with the given packs
    symlinked in.

    ``base`` gets ``custom_nodes/ models/ input/ output/ temp/ user/`` and the log
    ``comfyui.log``. ``packs`` maps link names to pack folders (a list of folders links
    each under :data:`PACK_LINK_NAME` for the first one and its own folder name otherwise).
    """

    def __init__(
        self,
        venv: str | os.PathLike,
        base: str | os.PathLike,
        packs: list[str | os.PathLike] | dict[str, str | os.PathLike] = (),
        port: int | None = None,
        extra_args: list[str] = (),
        env: dict[str, str] | None = None,
        cpu: bool = True,
    ):
        self.venv = Path(venv).absolute()
        self.comfy_dir = self.venv / "comfyui"
        self.python = self.venv / "bin" / "python"
        self.base = Path(base).absolute()
        if isinstance(packs, dict):
            self.packs = {name: Path(p).absolute() for name, p in packs.items()}
        else:
            self.packs = {}
            for i, p in enumerate(packs):
                p = Path(p).absolute()
                self.packs[PACK_LINK_NAME if i == 0 else p.name] = p
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args)
        self.env = env
        self.cpu = cpu  # False: ComfyUI uses its GPU (bench/gpu_check.py's host row)
        self.log_path = self.base / "comfyui.log"
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._log_file = None

    # -- lifecycle ---------------------------------------------------------------------------
    def prepare_base(self) -> None:
        """Create the base folders and (re)link the packs into ``custom_nodes``."""
        if not (self.comfy_dir / "main.py").is_file():
            raise HostError(f"{self.comfy_dir} has no main.py: run scripts/install_host.sh {self.venv}")
        for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        custom = self.base / "custom_nodes"
        for entry in custom.iterdir():
            if entry.is_symlink():
                entry.unlink()
        for name, pack in self.packs.items():
            if not (pack / "__init__.py").is_file():
                raise HostError(f"{pack} is not a node pack (no __init__.py)")
            link = custom / name
            if link.exists():
                raise HostError(f"{link} exists and is not a link made by this harness")
            link.symlink_to(pack, target_is_directory=True)

    def command(self) -> list[str]:
        """The ComfyUI command line (run with ``cwd=venv/comfyui``)."""
        return [
            str(self.python), "main.py", *(["--cpu"] if self.cpu else []),
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base),
            "--database-url", f"sqlite:///{self.base}/user/comfyui.db",
            "--disable-auto-launch", "--disable-api-nodes", "--preview-method", "auto",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 180.0, allow_import_failure: bool = False) -> "ComfyServer":
        """Launch the server and wait until it answers ``/system_stats``.

        Raises :class:`HostError` when the process exits early, does not answer within
        ``timeout`` seconds, or (unless ``allow_import_failure``) a pack failed to import;
        the server is stopped in those cases and the log tail is in the message.
        """
        self.prepare_base()
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTHONPATH", None)
        self._log_file = open(self.log_path, "ab")
        t0 = time.monotonic()
        self.process = subprocess.Popen(
            self.command(), cwd=self.comfy_dir, stdout=self._log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )  # fmt: skip
        logger.info("ComfyUI pid %d starting on %s (log %s)", self.process.pid, self.url, self.log_path)
        while True:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise HostError(f"ComfyUI exited with code {self.process.returncode} during start:\n{tail}")
            if self._answers():
                break
            if time.monotonic() - t0 > timeout:
                tail = self.log_tail()
                self.stop()
                raise HostError(f"ComfyUI did not answer on {self.url} within {timeout:.0f}s:\n{tail}")
            time.sleep(0.2)
        self.startup_seconds = time.monotonic() - t0
        failed = pack_import_failures(self.log_text(), list(self.packs))
        if failed and not allow_import_failure:
            tail = self.log_tail(80)
            self.stop()
            raise HostError(f"pack(s) failed to import in ComfyUI: {', '.join(failed)}\n{tail}")
        logger.info("ComfyUI answered after %.1fs", self.startup_seconds)
        return self

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
            return False

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server (SIGINT, then SIGKILL after ``timeout`` s) and close the log."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "ComfyServer":
        return self if self.process else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- introspection -----------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the server process in bytes."""
        if not self.alive():
            raise HostError("the server is not running")
        return rss_bytes(self.process.pid)

    def log_text(self) -> str:
        if self._log_file is not None:
            self._log_file.flush()
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    @property
    def input_dir(self) -> Path:
        return self.base / "input"

    @property
    def models_dir(self) -> Path:
        return self.base / "models"


@dataclasses.dataclass
class RunResult:
    """What one queued workflow did.

    ``status``: ``success`` | ``error`` | ``interrupted`` | ``rejected`` (validation) | ``timeout``.
    ``outputs``: downloaded files, in history order. ``events``: websocket JSON messages for
    this prompt (dicts with ``type`` and ``data``) plus ``{"type": "binary", "kind": int,
    "bytes": n}`` for binary frames. ``error``: ``exception_message`` of the execution error
    (or the validation message).
    """

    prompt_id: str | None
    status: str
    outputs: list[Path]
    output_records: dict[str, dict[str, list[dict]]]
    events: list[dict]
    progress_count: int
    preview_count: int
    error: str | None = None
    error_details: dict | None = None
    node_errors: dict | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def executed_nodes(self) -> list[str]:
        return [e["data"].get("node") for e in self.events if e["type"] == "executed"]

    def ui_outputs(self, node_id: str) -> dict:
        """The ``output`` dict of the ``executed`` event for ``node_id`` (e.g. PreviewAny's text)."""
        for e in self.events:
            if e["type"] == "executed" and str(e["data"].get("node")) == str(node_id):
                return e["data"].get("output") or {}
        return {}


class ComfyClient:
    """Client for one ComfyUI server: HTTP endpoints plus a websocket per :meth:`run`."""

    def __init__(self, url: str, client_id: str | None = None, http_timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex
        self.http_timeout = http_timeout

    # -- plain HTTP (stdlib) -----------------------------------------------------------------
    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=self.http_timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get_json(self, path: str) -> Any:
        status, data = self._request("GET", path)
        if status != 200:
            raise HostError(f"GET {path} -> HTTP {status}: {data[:300]!r}")
        return json.loads(data)

    def post_json(self, path: str, payload: Any) -> tuple[int, Any]:
        body = json.dumps(payload).encode()
        status, data = self._request("POST", path, body, {"Content-Type": "application/json"})
        try:
            return status, json.loads(data) if data else None
        except json.JSONDecodeError:
            return status, data.decode(errors="replace")

    def object_info(self, node_type: str | None = None) -> dict:
        """``GET /object_info`` (all node schemas) or ``/object_info/<type>``."""
        path = "/object_info" + (f"/{urllib.parse.quote(node_type)}" if node_type else "")
        return self.get_json(path)

    def system_stats(self) -> dict:
        return self.get_json("/system_stats")

    def history(self, prompt_id: str) -> dict:
        """``GET /history/<id>``: the entry for that prompt (``{}`` while unknown)."""
        return self.get_json(f"/history/{prompt_id}").get(prompt_id, {})

    def interrupt(self) -> None:
        """``POST /interrupt``: stop the running prompt at its next interrupt check."""
        status, _ = self._request("POST", "/interrupt", b"")
        if status != 200:
            raise HostError(f"POST /interrupt -> HTTP {status}")

    def set_setting(self, key: str, value: Any) -> None:
        status, body = self.post_json(f"/settings/{key}", value)
        if status != 200:
            raise HostError(f"POST /settings/{key} -> HTTP {status}: {body}")

    def upload_image(self, path: str | os.PathLike, name: str | None = None, subfolder: str = "") -> str:
        """``POST /upload/image`` (overwriting); returns the name to give LoadImage's ``image`` input."""
        path = Path(path)
        name = name or path.name
        boundary = uuid.uuid4().hex
        parts = []
        for field, value in (("overwrite", "true"), ("type", "input"), ("subfolder", subfolder)):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'.encode())
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + path.read_bytes()
            + b"\r\n"
        )
        parts.append(f"--{boundary}--\r\n".encode())
        status, data = self._request(
            "POST", "/upload/image", b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        if status != 200:
            raise HostError(f"upload of {path} failed: HTTP {status}: {data[:300]!r}")
        info = json.loads(data)
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def queue_prompt(self, api_workflow: dict) -> str:
        """``POST /prompt``; returns the prompt id, raises :class:`PromptRejected` on HTTP 400 or when some
        output nodes were rejected (HTTP 200 with ``node_errors``)."""
        status, body = self.post_json("/prompt", {"prompt": api_workflow, "client_id": self.client_id})
        if status != 200:
            body = body if isinstance(body, dict) else {"error": {"message": str(body)}}
            err = body.get("error") or {}
            msg = err.get("message", "") if isinstance(err, dict) else str(err)
            details = err.get("details", "") if isinstance(err, dict) else ""
            raise PromptRejected(f"prompt rejected (HTTP {status}): {msg} {details}".strip(), body)
        if body.get("node_errors"):
            # ComfyUI queues the outputs that validated and answers 200: for a test that is still a rejection.
            raise PromptRejected(f"prompt partly rejected: node errors {json.dumps(body['node_errors'])[:500]}", body)
        return body["prompt_id"]

    def download(self, record: dict, out_dir: str | os.PathLike) -> Path:
        """``GET /view`` one output record (``filename``, ``subfolder``, ``type``) into ``out_dir``."""
        query = urllib.parse.urlencode(
            {"filename": record["filename"], "subfolder": record.get("subfolder", ""), "type": record.get("type", "output")}
        )
        status, data = self._request("GET", f"/view?{query}")
        if status != 200:
            raise HostError(f"GET /view?{query} -> HTTP {status}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        target = out / record["filename"]
        target.write_bytes(data)
        return target

    # -- a whole run over the websocket ------------------------------------------------------
    def run(
        self,
        api_workflow: dict,
        timeout: float = 600.0,
        out_dir: str | os.PathLike | None = None,
        interrupt_after_progress: int | None = None,
        on_event: Callable[[dict], None] | None = None,
    ) -> RunResult:
        """Queue ``api_workflow``, follow it on the websocket until it ends, fetch its outputs.

        ``interrupt_after_progress``: send ``POST /interrupt`` once that many ``progress``
        messages arrived (to test interruption). Files listed in the history (any output key
        whose items have a ``filename``) are downloaded into ``out_dir`` when it is given.
        """
        return asyncio.run(self._run(api_workflow, timeout, out_dir, interrupt_after_progress, on_event))

    async def _run(self, api_workflow, timeout, out_dir, interrupt_after_progress, on_event) -> RunResult:
        import aiohttp

        t0 = time.monotonic()
        events: list[dict] = []
        progress = previews = 0
        end_type = None
        error_details = None
        ws_url = self.url.replace("http://", "ws://", 1) + f"/ws?clientId={self.client_id}"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(ws_url, max_msg_size=0, heartbeat=30) as ws:
                try:
                    prompt_id = await asyncio.to_thread(self.queue_prompt, api_workflow)
                except PromptRejected as rej:
                    return RunResult(
                        None, "rejected", [], {}, events, 0, 0, error=str(rej), node_errors=rej.node_errors,
                        error_details=rej.body, seconds=time.monotonic() - t0,
                    )  # fmt: skip
                interrupted_sent = False
                current_prompt = None  # binary frames carry no prompt id: attribute them to the running one
                while end_type is None:
                    left = timeout - (time.monotonic() - t0)
                    if left <= 0:
                        break
                    try:
                        msg = await ws.receive(timeout=left)
                    except asyncio.TimeoutError:
                        break
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        kind = int.from_bytes(msg.data[:4], "big") if len(msg.data) >= 4 else -1
                        if current_prompt == prompt_id:
                            event = {"type": "binary", "kind": kind, "bytes": len(msg.data)}
                            events.append(event)
                            previews += kind in _PREVIEW_EVENT_KINDS
                            if on_event:
                                on_event(event)
                        continue
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            raise HostError(f"websocket closed during the run ({msg.type.name})")
                        continue
                    event = json.loads(msg.data)
                    data = event.get("data") or {}
                    if event.get("type") == "execution_start":
                        current_prompt = data.get("prompt_id")
                    if data.get("prompt_id") != prompt_id:
                        continue
                    events.append(event)
                    if on_event:
                        on_event(event)
                    if event["type"] == "progress":
                        progress += 1
                        if interrupt_after_progress is not None and progress >= interrupt_after_progress and not interrupted_sent:
                            interrupted_sent = True
                            await asyncio.to_thread(self.interrupt)
                    elif event["type"] in _END_EVENTS:
                        end_type = event["type"]
                        if end_type == "execution_error":
                            error_details = data
        if end_type is None:
            await asyncio.to_thread(self.interrupt)
            return RunResult(
                prompt_id, "timeout", [], {}, events, progress, previews,
                error=f"no end event within {timeout:.0f}s", seconds=time.monotonic() - t0,
            )  # fmt: skip
        status = {"execution_success": "success", "execution_error": "error", "execution_interrupted": "interrupted"}[end_type]
        records, files = await asyncio.to_thread(self._collect_outputs, prompt_id, out_dir)
        return RunResult(
            prompt_id=prompt_id, status=status, outputs=files, output_records=records, events=events,
            progress_count=progress, preview_count=previews,
            error=(error_details or {}).get("exception_message"), error_details=error_details,
            seconds=time.monotonic() - t0,
        )  # fmt: skip

    def _collect_outputs(self, prompt_id: str, out_dir) -> tuple[dict, list[Path]]:
        entry = {}
        for _ in range(50):  # history is written right after the end event; allow a moment
            entry = self.history(prompt_id)
            if entry:
                break
            time.sleep(0.1)
        records = entry.get("outputs", {})
        files: list[Path] = []
        if out_dir is not None:
            for node_outputs in records.values():
                for items in node_outputs.values():
                    if not isinstance(items, list):
                        continue
                    for item in items:
                        if isinstance(item, dict) and "filename" in item:
                            files.append(self.download(item, out_dir))
        return records, files


class ComfySession(ComfyClient):
    """A client bound to the :class:`ComfyServer` it talks to (what the ``comfy`` test fixture yields).

    :meth:`run` downloads outputs into ``out_dir`` by default; ``images`` maps fixture names
    to uploaded input names; :meth:`rss_bytes` reads the server's resident memory.
    """

    def __init__(self, server: ComfyServer, out_dir: str | os.PathLike):
        super().__init__(server.url)
        self.server = server
        self.out_dir = Path(out_dir)
        self.images: dict[str, str] = {}
        self._runs = 0

    def run(self, api_workflow: dict, timeout: float = 600.0, out_dir=None, **kwargs) -> RunResult:
        if out_dir is None:
            self._runs += 1
            out_dir = self.out_dir / f"run-{self._runs:03d}"
        if not self.server.alive():
            raise HostError(f"the ComfyUI server is not running any more:\n{self.server.log_tail()}")
        return super().run(api_workflow, timeout=timeout, out_dir=out_dir, **kwargs)

    def rss_bytes(self) -> int:
        return self.server.rss_bytes()


def write_test_image(path: str | os.PathLike, width: int = 64, height: int = 48) -> Path:
    """Write a deterministic RGB gradient PNG (``width`` x ``height`` px) to ``path``."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (width, height))
    img.putdata(
        [(x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), 128) for y in range(height) for x in range(width)]
    )
    img.save(path)
    return path


def write_tiny_checkpoint(python: str | os.PathLike, pack_dir: str | os.PathLike, dest: str | os.PathLike,
                          timeout: float = 600.0) -> Path:
    """Run ``python -m mova_model tiny-checkpoint DEST`` from ``pack_dir`` (random weights, official layout)."""
    dest = Path(dest)
    if (dest / "model_index.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(python), "-m", "mova_model", "tiny-checkpoint", str(dest)], cwd=str(pack_dir),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0:
        raise HostError(
            f"`python -m mova_model tiny-checkpoint {dest}` failed with exit code {proc.returncode}:\n"
            f"{proc.stderr[-3000:] or proc.stdout[-3000:]}"
        )
    if not (dest / "model_index.json").is_file():
        raise HostError(f"tiny-checkpoint wrote no {dest / 'model_index.json'}")
    return dest


if __name__ == "__main__":  # manual use: start a server with this pack until Ctrl-C
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    repo = Path(__file__).resolve().parent.parent
    srv = ComfyServer(repo / ".venv", sys.argv[1] if len(sys.argv) > 1 else "/tmp/comfy-mova", [repo]).start()
    sys.stdout.write(f"{srv.url} pid={srv.pid} log={srv.log_path}\n")
    try:
        srv.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
