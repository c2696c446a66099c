"""OpenTelemetry traces: a sidecar with OTEL_EXPORTER_OTLP_ENDPOINT set sends its spans to
an OTLP/HTTP collector stand-in on loopback, with GenAI attributes and the agent's W3C
trace context carried through to the upstream."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from harness import (
    CLIENT_API_KEY,
    EMAIL,
    MODEL,
    SidecarProcess,
    SseReply,
    StubUpstream,
    load_recording,
    reply_text,
    user_message,
)

SPAN_WAIT_SECONDS = 15.0
PARENT_SPAN_ID = "00f067aa0ba902b7"
SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    service_name: str


def attribute_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [attribute_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


class OtlpCollector:
    """OTLP/HTTP receiver on 127.0.0.1 that decodes POST /v1/traces protobuf requests and
    keeps every span and the raw request bodies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self._bodies: list[bytes] = []
        handler = type("BoundOtlpHandler", (_OtlpHandler,), {"collector": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-collector", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def receive(self, body: bytes) -> None:
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: attribute_value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        ReceivedSpan(
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={a.key: attribute_value(a.value) for a in span.attributes},
                            service_name=resource.get("service.name", ""),
                        )
                    )
        with self._lock:
            self._bodies.append(body)
            self._spans.extend(spans)

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    @property
    def raw_bodies(self) -> bytes:
        with self._lock:
            return b"".join(self._bodies)

    def wait_for_span(self, name: str, trace_id: str) -> ReceivedSpan:
        deadline = time.monotonic() + SPAN_WAIT_SECONDS
        while time.monotonic() < deadline:
            for span in self.spans:
                if span.name == name and span.trace_id == trace_id:
                    return span
            time.sleep(0.05)
        names = sorted({(span.name, span.trace_id) for span in self.spans})
        pytest.fail(f"no span {name!r} in trace {trace_id} within {SPAN_WAIT_SECONDS} s; received: {names}")

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]


class _OtlpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    collector: OtlpCollector

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the access log; the tests assert on received spans."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.collector.receive(body)
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpCollector]:
    server = OtlpCollector()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def traced_sidecar(
    collector: OtlpCollector,
    stub_server: StubUpstream,
    tmp_path_factory: pytest.TempPathFactory,
    started_sidecars: list[SidecarProcess],
) -> Iterator[SidecarProcess]:
    process = SidecarProcess(
        "traced",
        "refusal",
        stub_server.base_url,
        tmp_path_factory.mktemp("traced"),
        extra_env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            "OTEL_SERVICE_NAME": "agent-sidecar-e2e",
            # Export each batch after 100 ms instead of the default 5 s.
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    started_sidecars.append(process)
    process.start()
    yield process
    process.stop()


@dataclass(frozen=True)
class TracedClient:
    """An SDK client whose requests carry a `traceparent` header of a trace of their own."""

    client: openai.OpenAI
    trace_id: str


@pytest.fixture
def traced(traced_sidecar: SidecarProcess) -> Iterator[TracedClient]:
    trace_id = os.urandom(16).hex()
    with openai.OpenAI(
        base_url=traced_sidecar.base_url,
        api_key=CLIENT_API_KEY,
        max_retries=0,
        timeout=10.0,
        default_headers={"traceparent": f"00-{trace_id}-{PARENT_SPAN_ID}-01"},
    ) as sdk_client:
        yield TracedClient(sdk_client, trace_id)


def test_model_call_span_has_gen_ai_attributes(
    collector: OtlpCollector, traced: TracedClient, upstream: StubUpstream
) -> None:
    upstream.enqueue(reply_text("Noted."))
    traced.client.chat.completions.create(model=MODEL, messages=user_message(f"Please write to {EMAIL}."))

    client_span = collector.wait_for_span(f"chat {MODEL}", traced.trace_id)
    assert client_span.kind == SPAN_KIND_CLIENT
    assert client_span.service_name == "agent-sidecar-e2e"
    attributes = client_span.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == MODEL
    recording = load_recording("chat_completion_text")
    assert attributes["gen_ai.response.id"] == recording["id"]
    assert attributes["gen_ai.usage.input_tokens"] == recording["usage"]["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == recording["usage"]["completion_tokens"]
    assert attributes["server.address"] == "127.0.0.1"


def test_trace_context_reaches_upstream(
    collector: OtlpCollector, traced: TracedClient, upstream: StubUpstream
) -> None:
    upstream.enqueue(reply_text("Noted."))
    traced.client.chat.completions.create(model=MODEL, messages=user_message("Hello there."))

    server_span = collector.wait_for_span("POST /v1/chat/completions", traced.trace_id)
    assert server_span.kind == SPAN_KIND_SERVER
    assert server_span.parent_span_id == PARENT_SPAN_ID, "the server span must continue the agent's trace"
    assert server_span.attributes["policy"] == "e2e-refusal"
    assert len(server_span.attributes["policy.hash"]) == 12

    forwarded = upstream.chat_requests()[-1].headers.get("traceparent", "")
    _, trace_id, parent_id, _ = forwarded.split("-")
    assert trace_id == traced.trace_id, f"upstream got traceparent {forwarded!r}"
    client_span = collector.wait_for_span(f"chat {MODEL}", traced.trace_id)
    assert client_span.span_id == parent_id, "the upstream's parent span must be the model call span"
    assert client_span.parent_span_id == server_span.span_id


def test_guardrail_span_names_rules(
    collector: OtlpCollector, traced: TracedClient, upstream: StubUpstream
) -> None:
    upstream.enqueue(reply_text("Noted."))
    traced.client.chat.completions.create(model=MODEL, messages=user_message(f"Mail {EMAIL} today."))

    input_span = collector.wait_for_span("guardrail input", traced.trace_id)
    assert input_span.attributes["agent_sidecar.guardrail.rules"] == "contact-details"
    assert input_span.attributes["agent_sidecar.guardrail.direction"] == "input"
    assert input_span.attributes["agent_sidecar.guardrail.verdict"] == "transform"
    assert "contact-details=redact" in input_span.attributes["agent_sidecar.guardrail.outcomes"]
    assert EMAIL.encode() not in collector.raw_bodies, "the email reached the collector"


def test_streamed_call_span_has_usage(
    collector: OtlpCollector, traced: TracedClient, upstream: StubUpstream
) -> None:
    upstream.enqueue(SseReply(load_recording("chat_stream_email_split")))
    stream = traced.client.chat.completions.create(model=MODEL, messages=user_message("Stream please."), stream=True)
    for _ in stream:
        pass

    client_span = collector.wait_for_span(f"chat {MODEL}", traced.trace_id)
    assert client_span.kind == SPAN_KIND_CLIENT
    assert client_span.attributes["gen_ai.usage.output_tokens"] > 0
    assert "error.type" not in client_span.attributes
    output_span = collector.wait_for_span("guardrail output", traced.trace_id)
    assert output_span.parent_span_id == client_span.span_id
