"""Stub OpenAI and Anthropic upstream, sidecar process control and raw HTTP helpers for the SDK suite.

Everything here listens on or connects to 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SDK_DIR = Path(__file__).resolve().parent
REPO_ROOT = SDK_DIR.parents[1]
RECORDINGS_DIR = SDK_DIR / "recordings"

UPSTREAM_API_KEY = "sidecar-upstream-key"
CLIENT_API_KEY = "client-key"
MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-sonnet-4-5"
REFUSAL_TEXT = "Sorry, I can't help with that."
BLOCKED_RULE_HEADER = "x-agent-sidecar-blocked-rule"

EMAIL = "jane.doe@example.com"
CARD_WITH_SPACES = "4111 1111 1111 1111"
CARD_WITH_DASHES = "4111-1111-1111-1111"
IBAN = "AL47212110090000000235698741"
PHONE = "+1 415 555 2671"
SECOND_EMAIL = "bob.roe@example.org"

# Every PII value that the suite sends through a sidecar, including the digit-only form of
# the card number. None of them may appear in a sidecar's logs.
PII_VALUES = (EMAIL, CARD_WITH_SPACES, CARD_WITH_DASHES, "4111111111111111", IBAN, PHONE, SECOND_EMAIL)

READY_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0
SSE_EVENT_INTERVAL_SECONDS = 0.02


def load_recording(name: str) -> Any:
    """Load recordings/<name>.json as a fresh object that the caller may modify."""
    with open(RECORDINGS_DIR / f"{name}.json", encoding="utf-8") as file:
        return json.load(file)


def free_port() -> int:
    """Return a loopback port that was free a moment ago (bind to port 0, then close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def openai_error(message: str, code: str, error_type: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": error_type, "code": code, "param": None}}


# ---------------------------------------------------------------------------
# Stub upstream
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JsonReply:
    """A JSON reply with the given HTTP status."""

    body: Any
    status: int = 200


@dataclass(frozen=True)
class SseReply:
    """A text/event-stream reply: one `data:` event per payload, then `data: [DONE]` unless done is False.

    Dict payloads are sent as JSON and strings as they are. The stub sends the events as
    separate HTTP chunks with a short pause between them, so they arrive one at a time.
    """

    events: list[Any]
    pauses: Mapping[int, float] = field(default_factory=dict)
    """Seconds to wait after the event at a position, in place of SSE_EVENT_INTERVAL_SECONDS."""
    done: bool = True
    """Whether `data: [DONE]` follows the events."""


@dataclass(frozen=True)
class RawSseReply:
    """A text/event-stream reply whose body is exactly the given byte strings, each one HTTP chunk.

    With complete=False the stub closes the connection after the last chunk without the
    chunked-encoding terminator, as an upstream that dies mid-stream does.
    """

    chunks: list[bytes]
    pauses: Mapping[int, float] = field(default_factory=dict)
    """Seconds to wait after the chunk at a position, in place of SSE_EVENT_INTERVAL_SECONDS."""
    complete: bool = True


@dataclass(frozen=True)
class AnthropicSseReply:
    """A text/event-stream reply in Anthropic's form: per payload an `event:` line named
    after its `type` and a `data:` line, with no `[DONE]`.

    The stub sends the events as separate HTTP chunks with a short pause between them.
    """

    events: list[dict[str, Any]]
    pauses: Mapping[int, float] = field(default_factory=dict)
    """Seconds to wait after the event at a position, in place of SSE_EVENT_INTERVAL_SECONDS."""

    def chunks(self) -> list[bytes]:
        return [f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode() for event in self.events]


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the stub upstream received it."""

    method: str
    path: str
    headers: dict[str, str]
    """Header values by lower-cased name."""
    raw_body: bytes
    body: Any
    """The parsed JSON body, or None when the body is empty or not JSON."""


class StubUpstream:
    """OpenAI-compatible and Anthropic upstream on 127.0.0.1 that records requests and replies from a queue.

    A POST takes the next queued reply. With an empty queue it gets a 500 error, so a test
    that did not expect the upstream to be called fails visibly. GET /v1/models returns the
    `models` recording.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._replies: deque[JsonReply | SseReply | RawSseReply | AnthropicSseReply] = deque()
        self._sse_send_times: list[float] = []
        self._sse_generation = 0
        self.models = load_recording("models")
        handler = type("BoundStubHandler", (_StubHandler,), {"stub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="stub-upstream", daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=STOP_TIMEOUT_SECONDS)

    def reset(self) -> None:
        """Forget recorded requests and drop queued replies."""
        with self._lock:
            self._requests.clear()
            self._replies.clear()
            self._sse_send_times.clear()

    def enqueue(self, *replies: JsonReply | SseReply | RawSseReply | AnthropicSseReply) -> None:
        with self._lock:
            self._replies.extend(replies)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def chat_requests(self) -> list[RecordedRequest]:
        return [
            request
            for request in self.requests
            if request.method == "POST" and request.path == "/v1/chat/completions"
        ]

    def messages_requests(self) -> list[RecordedRequest]:
        """Return the Anthropic Messages API requests the upstream received."""
        return [
            request for request in self.requests if request.method == "POST" and request.path == "/v1/messages"
        ]

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def next_reply(self) -> JsonReply | SseReply | RawSseReply | AnthropicSseReply | None:
        with self._lock:
            return self._replies.popleft() if self._replies else None

    @property
    def sse_send_times(self) -> list[float]:
        """time.monotonic() just before each chunk of the latest streamed reply was written, in order."""
        with self._lock:
            return list(self._sse_send_times)

    def begin_sse_reply(self) -> int:
        """Start recording send times for a new streamed reply; returns its generation."""
        with self._lock:
            self._sse_send_times.clear()
            self._sse_generation += 1
            return self._sse_generation

    def record_sse_send(self, generation: int) -> None:
        """Record a send time, unless a newer reply has started: the handler of an earlier
        reply may still be writing after its client went away."""
        with self._lock:
            if generation == self._sse_generation:
                self._sse_send_times.append(time.monotonic())


class _StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    stub: StubUpstream

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request access log, because tests assert on recorded requests instead."""

    def _handle(self) -> None:
        raw_body = self._read_body()
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = None
        path = urlsplit(self.path).path
        self.stub.record(
            RecordedRequest(
                method=self.command,
                path=path,
                headers={name.lower(): value for name, value in self.headers.items()},
                raw_body=raw_body,
                body=body,
            )
        )

        if self.command == "GET" and path == "/v1/models":
            self._send_json(200, self.stub.models)
            return
        if self.command != "POST":
            self._send_json(404, openai_error(f"stub upstream has no route {path}", "unknown_url"))
            return

        reply = self.stub.next_reply()
        if reply is None:
            message = f"stub upstream has no queued reply for {self.command} {path}"
            self._send_json(500, openai_error(message, "stub_queue_empty", "server_error"))
        elif isinstance(reply, JsonReply):
            self._send_json(reply.status, reply.body)
        elif isinstance(reply, RawSseReply):
            self._send_event_stream(reply.chunks, reply.pauses, reply.complete)
        elif isinstance(reply, AnthropicSseReply):
            self._send_event_stream(reply.chunks(), reply.pauses, complete=True)
        else:
            self._send_sse(reply.events, reply.pauses, reply.done)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked_body()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length)

    def _read_chunked_body(self) -> bytes:
        parts = []
        while True:
            size_line = self.rfile.readline()
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                # Skip optional trailers up to the empty line that ends the body.
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def _send_json(self, status: int, body: Any) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-request-id", "req_stub")
        self.end_headers()
        self.wfile.write(payload)

    def _send_sse(self, events: list[Any], pauses: Mapping[int, float] | None = None, done: bool = True) -> None:
        payloads = [*events, "[DONE]"] if done else list(events)
        chunks = []
        for event in payloads:
            data = event if isinstance(event, str) else json.dumps(event)
            chunks.append(f"data: {data}\n\n".encode())
        self._send_event_stream(chunks, pauses or {}, complete=True)

    def _send_event_stream(self, chunks: list[bytes], pauses: Mapping[int, float], complete: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", "req_stub")
        self.end_headers()
        generation = self.stub.begin_sse_reply()
        try:
            for position, data in enumerate(chunks):
                self.stub.record_sse_send(generation)
                self._write_chunk(data)
                time.sleep(pauses.get(position, SSE_EVENT_INTERVAL_SECONDS))
            if complete:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            # The sidecar may stop reading once it has ended the client's stream, for
            # example after a block, so the rest of the reply has nowhere to go.
            self.close_connection = True
            return
        if not complete:
            self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


# ---------------------------------------------------------------------------
# Sidecar process
# ---------------------------------------------------------------------------


def sidecar_binary() -> Path:
    """Return the sidecar binary: $AGENT_SIDECAR_BIN or target/debug/agent-sidecar, relative to the repo root."""
    path = Path(os.environ.get("AGENT_SIDECAR_BIN", "target/debug/agent-sidecar"))
    return path if path.is_absolute() else REPO_ROOT / path


class SidecarProcess:
    """An `agent-sidecar serve` process on free loopback ports, with stdout and stderr in files."""

    def __init__(
        self,
        name: str,
        policy: str,
        upstream_url: str,
        log_dir: Path,
        extra_args: tuple[str, ...] = (),
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.extra_args = extra_args
        self.extra_env = dict(extra_env or {})
        self.policy_path = f"tests/sdk/policies/{policy}.yaml"
        self.upstream_url = upstream_url
        self.port = free_port()
        self.admin_port = free_port()
        self.stdout_path = log_dir / f"{name}.stdout.log"
        self.stderr_path = log_dir / f"{name}.stderr.log"
        self._process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_upstream_url(self) -> str:
        """The stub's root URL: the Anthropic base URL has no /v1, which the API paths carry."""
        return self.upstream_url.removesuffix("/v1")

    @property
    def anthropic_base_url(self) -> str:
        """The base URL that an agent's ANTHROPIC_BASE_URL names."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_paths(self) -> tuple[Path, Path]:
        return (self.stdout_path, self.stderr_path)

    def start(self) -> None:
        """Start the sidecar and wait until GET /readyz returns 200.

        Raises RuntimeError with the sidecar's output when the binary is missing, the
        process exits early or it is not ready within READY_TIMEOUT_SECONDS.
        """
        binary = sidecar_binary()
        if not binary.is_file():
            raise RuntimeError(
                f"sidecar binary not found at {binary}: run `cargo build -p agent-sidecar` "
                "or set AGENT_SIDECAR_BIN"
            )

        command = [
            str(binary),
            "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--admin-listen", f"127.0.0.1:{self.admin_port}",
            # Port 0 keeps sidecars started side by side off the default gRPC port.
            *(() if "--grpc-listen" in self.extra_args else ("--grpc-listen", "127.0.0.1:0")),
            "--openai-upstream", self.upstream_url,
            "--anthropic-upstream", self.anthropic_upstream_url,
            "--policy", self.policy_path,
            *self.extra_args,
        ]
        env = {
            name: value
            for name, value in os.environ.items()
            if name.lower() not in ("http_proxy", "https_proxy", "all_proxy")
        }
        env["OPENAI_API_KEY"] = UPSTREAM_API_KEY
        env["ANTHROPIC_API_KEY"] = UPSTREAM_API_KEY
        env["RUST_LOG"] = "info"
        env["NO_PROXY"] = "127.0.0.1,localhost"
        env.update(self.extra_env)

        # Append, so the logs of a restarted sidecar keep those of its earlier process.
        with open(self.stdout_path, "ab") as stdout, open(self.stderr_path, "ab") as stderr:
            self._process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
            )
        self._wait_ready(" ".join(command))

    def _wait_ready(self, command: str) -> None:
        assert self._process is not None
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            exit_code = self._process.poll()
            if exit_code is not None:
                raise RuntimeError(
                    f"sidecar exited with code {exit_code} before it was ready\n"
                    f"command: {command}\n{self.read_logs()}"
                )
            try:
                if send_raw(self.admin_port, "GET", "/readyz", timeout=1.0).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)

        self.stop()
        raise RuntimeError(
            f"sidecar not ready within {READY_TIMEOUT_SECONDS:.0f} s: GET /readyz on "
            f"127.0.0.1:{self.admin_port} never returned 200\ncommand: {command}\n{self.read_logs()}"
        )

    def restart(self) -> None:
        """Stop the sidecar and start a new process with the same ports and log files."""
        self.stop()
        self.start()

    def stop(self) -> None:
        """Send SIGTERM to the sidecar's PID, then SIGKILL if it has not exited in time."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=STOP_TIMEOUT_SECONDS)

    def read_logs(self) -> str:
        stdout = self.stdout_path.read_text(encoding="utf-8", errors="replace")
        stderr = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        return f"--- sidecar stdout ---\n{stdout}--- sidecar stderr ---\n{stderr}"


class RedisServer:
    """A `redis-server` on a free loopback port without persistence, for sidecar restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it replies to PING; raise RuntimeError otherwise."""
        command = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
        ]
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server on 127.0.0.1:{self.port} did not answer PING in time")

    def stored_text(self) -> str:
        """Return every key and value in the server (strings, lists and hashes) as one text, via redis-cli."""

        def cli(*args: str) -> str:
            return subprocess.run(
                ["redis-cli", "-p", str(self.port), "--raw", *args],
                check=True, capture_output=True, timeout=STOP_TIMEOUT_SECONDS,
            ).stdout.decode("utf-8", errors="replace")  # sealed vault values are binary

        pieces = []
        for key in cli("KEYS", "*").split():
            kind = cli("TYPE", key).strip()
            readers = {"string": ("GET", key), "list": ("LRANGE", key, "0", "-1"), "hash": ("HGETALL", key)}
            pieces.append(key)
            if kind in readers:
                pieces.append(cli(*readers[kind]))
        return "\n".join(pieces)

    def stop(self) -> None:
        """Send SIGTERM to the server's PID, then SIGKILL if it has not exited in time."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=STOP_TIMEOUT_SECONDS)


# ---------------------------------------------------------------------------
# Raw HTTP
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    """Header values by lower-cased name."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send_raw(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> RawResponse:
    """Send one HTTP/1.1 request to 127.0.0.1:port with exactly the given body bytes."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.putrequest(method, path)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        if body:
            try:
                connection.send(body)
            except (BrokenPipeError, ConnectionResetError):
                # A server may reject an oversized body before reading all of it. Its
                # response is still expected on the socket.
                pass
        response = connection.getresponse()
        return RawResponse(
            status=response.status,
            headers={name.lower(): value for name, value in response.getheaders()},
            body=response.read(),
        )
    finally:
        connection.close()


def post_chat_raw(port: int, body: bytes, timeout: float = 10.0) -> RawResponse:
    """POST body to /v1/chat/completions as the SDK would, with the client's key."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_API_KEY}"}
    return send_raw(port, "POST", "/v1/chat/completions", body, headers, timeout)


@dataclass(frozen=True)
class RawStream:
    """A streamed HTTP response as read from the socket."""

    status: int
    headers: dict[str, str]
    """Header values by lower-cased name."""
    pieces: list[tuple[float, bytes]]
    """Body bytes in the order they were read, each with the time.monotonic() of the read."""
    complete: bool
    """False when the connection ended before the end of the body."""

    @property
    def body(self) -> bytes:
        return b"".join(data for _, data in self.pieces)


def stream_chat_raw(port: int, body: bytes, timeout: float = 10.0) -> RawStream:
    """POST body to /v1/chat/completions and read the response body as it arrives.

    Reading stops at the end of the body, when the connection ends early, or after
    timeout seconds in total. A single read that waits longer than timeout raises
    TimeoutError.
    """
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_API_KEY}"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.putrequest("POST", "/v1/chat/completions")
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        connection.send(body)
        response = connection.getresponse()

        pieces: list[tuple[float, bytes]] = []
        complete = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = response.read1(65536)
            except http.client.IncompleteRead as error:
                if error.partial:
                    pieces.append((time.monotonic(), error.partial))
                break
            except ConnectionError:
                break
            if not data:
                complete = True
                break
            pieces.append((time.monotonic(), data))
        return RawStream(
            status=response.status,
            headers={name.lower(): value for name, value in response.getheaders()},
            pieces=pieces,
            complete=complete,
        )
    finally:
        connection.close()


def user_message(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def forwarded_messages(request: RecordedRequest) -> list[dict[str, Any]]:
    """Return the `messages` list of a recorded chat request."""
    assert isinstance(request.body, dict), f"upstream request body is not a JSON object: {request.raw_body[:200]!r}"
    messages = request.body.get("messages")
    assert isinstance(messages, list), f"upstream request has no messages list: {request.body}"
    return messages


def single_chat_request(upstream: StubUpstream) -> RecordedRequest:
    """Return the single chat request that the upstream received, and fail when there is not exactly one."""
    requests = upstream.chat_requests()
    assert len(requests) == 1, f"expected 1 chat request at the upstream, got {len(requests)}"
    return requests[0]


def reply_text(text: str) -> JsonReply:
    """A `chat.completion` reply whose assistant message content is text."""
    body = load_recording("chat_completion_text")
    body["choices"][0]["message"]["content"] = text
    return JsonReply(body)



def single_messages_request(upstream: StubUpstream) -> RecordedRequest:
    """Return the single Messages API request that the upstream received, and fail when there is not exactly one."""
    requests = upstream.messages_requests()
    assert len(requests) == 1, f"expected 1 Messages API request at the upstream, got {len(requests)}"
    return requests[0]


def anthropic_reply_text(text: str) -> JsonReply:
    """A Messages API `message` reply whose only content block is text."""
    body = load_recording("anthropic_message_text")
    body["content"][0]["text"] = text
    return JsonReply(body)
