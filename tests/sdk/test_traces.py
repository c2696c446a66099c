"""OpenTelemetry traces: a sidecar with OTEL_EXPORTER_OTLP_ENDPOINT set sends its spans to
an OTLP/HTTP collector stand-in on loopback, with GenAI attributes and the agent's W3C
trace context carried through to the upstream."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest

from otlp import OtlpCollector
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

PARENT_SPAN_ID = "00f067aa0ba902b7"
SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3


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
