"""Streamed Anthropic Messages API responses through the incremental streaming guard, with the official SDK."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import anthropic
import pytest

from harness import (
    ANTHROPIC_MODEL,
    BLOCKED_RULE_HEADER,
    CLIENT_API_KEY,
    EMAIL,
    REFUSAL_TEXT,
    AnthropicSseReply,
    RedisServer,
    SidecarProcess,
    StubUpstream,
    load_recording,
    send_raw,
)

TOOLS = [
    {
        "name": "delete_user",
        "description": "Delete a user account.",
        "input_schema": {"type": "object", "properties": {"user_id": {"type": "string"}}},
    },
    {"name": "get_time", "description": "Current time.", "input_schema": {"type": "object", "properties": {}}},
]


def stream_reply(name: str) -> AnthropicSseReply:
    return AnthropicSseReply(load_recording(name))


def raw_stream(sidecar: SidecarProcess, body: dict, headers: dict[str, str] | None = None):
    """POST a streamed request with plain HTTP and return the whole response."""
    request_headers = {
        "Content-Type": "application/json",
        "x-api-key": CLIENT_API_KEY,
        "anthropic-version": "2023-06-01",
        **(headers or {}),
    }
    return send_raw(sidecar.port, "POST", "/v1/messages", json.dumps({**body, "stream": True}).encode(), request_headers)


def event_payloads(body: bytes) -> list[dict]:
    """Return the JSON payloads of an event stream's `data:` lines, in order."""
    return [json.loads(line[len(b"data: "):]) for line in body.splitlines() if line.startswith(b"data: ")]


def request_body(text: str, tools: list | None = None) -> dict:
    body = {"model": ANTHROPIC_MODEL, "max_tokens": 256, "messages": [{"role": "user", "content": text}]}
    if tools:
        body["tools"] = tools
    return body


def test_split_email_redacted_in_stream(anthropic_client: anthropic.Anthropic, upstream: StubUpstream) -> None:
    upstream.enqueue(stream_reply("anthropic_stream_email_split"))
    with anthropic_client.messages.stream(**request_body("How do I reach Jane?")) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "You can reach Jane at [EMAIL] any time."
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"


def test_stream_usage_merged_once(anthropic_client: anthropic.Anthropic, upstream: StubUpstream) -> None:
    upstream.enqueue(stream_reply("anthropic_stream_email_split"))
    with anthropic_client.messages.stream(**request_body("How do I reach Jane?")) as stream:
        final = stream.get_final_message()
    assert final.usage.input_tokens == 25, "input from message_start is kept"
    assert final.usage.output_tokens == 15, "output from message_delta replaces the start's count"


def test_stream_usage_counted_once_in_metrics(sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    model = f"claude-metrics-{uuid.uuid4().hex[:8]}"
    upstream.enqueue(stream_reply("anthropic_stream_email_split"))
    body = request_body("How do I reach Jane?")
    body["model"] = model
    response = raw_stream(sidecar, body)
    assert response.status == 200
    metrics = send_raw(sidecar.admin_port, "GET", "/metrics").body.decode()
    samples = {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in metrics.splitlines()
        if line.startswith("gen_ai_client_token_usage_") and model in line
    }
    labels = f'gen_ai_operation_name="chat",gen_ai_provider_name="anthropic",gen_ai_request_model="{model}"'
    for token_type, expected in (("input", 25.0), ("output", 15.0)):
        series = f'{{{labels},gen_ai_token_type="{token_type}",token_source="upstream"}}'
        assert samples.get(f"gen_ai_client_token_usage_sum{series}") == expected, samples
        assert samples.get(f"gen_ai_client_token_usage_count{series}") == 1.0, samples
    drift = [line for line in metrics.splitlines() if line.startswith("agent_sidecar_token_estimate_ratio_count")]
    assert f'agent_sidecar_token_estimate_ratio_count{{model="{model}"}} 1' in drift, drift


def test_denied_streamed_tool_use_refused(sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    upstream.enqueue(stream_reply("anthropic_stream_tool_use_delete"))
    response = raw_stream(sidecar, request_body("remove account u-1042", TOOLS))
    assert response.status == 200
    assert b"delete_user" not in response.body, "the denied call never reaches the client"
    assert b"u-1042" not in response.body
    events = event_payloads(response.body)
    assert events[-1]["type"] == "message_stop"
    assert events[-2]["delta"]["stop_reason"] == "refusal"


def test_denied_streamed_tool_use_sdk(anthropic_client: anthropic.Anthropic, upstream: StubUpstream) -> None:
    upstream.enqueue(stream_reply("anthropic_stream_tool_use_delete"))
    with anthropic_client.messages.stream(**request_body("remove account u-1042", TOOLS)) as stream:
        final = stream.get_final_message()
    assert [block.type for block in final.content] == ["text", "text"]
    assert final.content[0].text == "I will delete that account now."
    assert final.content[1].text == REFUSAL_TEXT
    assert final.stop_reason == "refusal"


def test_denied_streamed_tool_use_error_mode(
    anthropic_error_client: anthropic.Anthropic, upstream: StubUpstream
) -> None:
    upstream.enqueue(stream_reply("anthropic_stream_tool_use_delete"))
    with pytest.raises(anthropic.APIStatusError) as raised:
        with anthropic_error_client.messages.stream(**request_body("remove account u-1042", TOOLS)) as stream:
            for _ in stream:
                pass
    body = raised.value.body
    assert isinstance(body, dict), body
    assert body["error"]["type"] == "permission_error"
    assert "no-deletes" in body["error"]["message"]


def test_tool_use_without_arguments_is_empty_object(
    anthropic_client: anthropic.Anthropic, upstream: StubUpstream
) -> None:
    upstream.enqueue(stream_reply("anthropic_stream_tool_use_no_arguments"))
    with anthropic_client.messages.stream(**request_body("what time is it?", TOOLS)) as stream:
        final = stream.get_final_message()
    assert len(final.content) == 1
    tool_use = final.content[0]
    assert tool_use.type == "tool_use"
    assert tool_use.name == "get_time"
    assert tool_use.input == {}
    assert final.stop_reason == "tool_use"


def test_thinking_block_passes_untouched(anthropic_client: anthropic.Anthropic, upstream: StubUpstream) -> None:
    recording = load_recording("anthropic_stream_thinking")
    thinking_text = "".join(
        event["delta"]["thinking"]
        for event in recording
        if event["type"] == "content_block_delta" and event["delta"]["type"] == "thinking_delta"
    )
    upstream.enqueue(AnthropicSseReply(recording))
    with anthropic_client.messages.stream(**request_body("where is my order?")) as stream:
        final = stream.get_final_message()
    thinking = final.content[0]
    assert thinking.type == "thinking"
    assert thinking.thinking == thinking_text, "thinking text is not scanned or rewritten"
    assert EMAIL in thinking.thinking
    assert thinking.signature == "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"
    assert final.content[1].text == "Your order has shipped."


def test_error_event_forwarded_as_is(anthropic_client: anthropic.Anthropic, upstream: StubUpstream) -> None:
    upstream.enqueue(stream_reply("anthropic_stream_overloaded"))
    received = []
    with pytest.raises(anthropic.APIStatusError) as raised:
        with anthropic_client.messages.stream(**request_body("explain")) as stream:
            for text in stream.text_stream:
                received.append(text)
    assert raised.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert "".join(received).startswith("The first part of"), "text before the error reaches the client"


def test_blocked_streamed_request_refused(sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    response = raw_stream(sidecar, request_body("how do I build a bomb"))
    assert response.status == 200
    assert response.headers.get(BLOCKED_RULE_HEADER) == "no-weapons"
    assert response.headers.get("content-type", "").startswith("text/event-stream")
    events = event_payloads(response.body)
    texts = [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"]
    assert texts == [REFUSAL_TEXT]
    assert upstream.messages_requests() == []


def test_stream_without_end_gets_error(anthropic_client: anthropic.Anthropic, upstream: StubUpstream) -> None:
    recording = load_recording("anthropic_stream_email_split")
    upstream.enqueue(AnthropicSseReply(recording[:-2]))
    with pytest.raises(anthropic.APIStatusError) as raised:
        with anthropic_client.messages.stream(**request_body("How do I reach Jane?")) as stream:
            for _ in stream:
                pass
    assert raised.value.body["error"]["type"] == "api_error"


@pytest.fixture(scope="module")
def redis_sidecar(
    stub_server: StubUpstream, tmp_path_factory: pytest.TempPathFactory, started_sidecars: list[SidecarProcess]
) -> Iterator[tuple[SidecarProcess, RedisServer]]:
    redis = RedisServer(tmp_path_factory.mktemp("redis-anthropic"))
    redis.start()
    process = SidecarProcess(
        "anthropic-redis",
        "refusal",
        stub_server.base_url,
        tmp_path_factory.mktemp("anthropic-redis"),
        extra_args=("--redis-url", redis.url),
    )
    started_sidecars.append(process)
    try:
        process.start()
        yield process, redis
    finally:
        process.stop()
        redis.stop()


def test_partial_turn_not_stored(
    redis_sidecar: tuple[SidecarProcess, RedisServer], upstream: StubUpstream
) -> None:
    process, redis = redis_sidecar
    failed_id = f"e2e-{uuid.uuid4()}"
    complete_id = f"e2e-{uuid.uuid4()}"
    upstream.enqueue(stream_reply("anthropic_stream_overloaded"), stream_reply("anthropic_stream_thinking"))

    failed = raw_stream(process, request_body("explain"), {"x-agent-conversation-id": failed_id})
    complete = raw_stream(process, request_body("where is my order?"), {"x-agent-conversation-id": complete_id})
    assert b"overloaded_error" in failed.body
    assert b"message_stop" in complete.body

    stored = redis.stored_text()
    assert complete_id in stored, "a complete streamed turn is stored"
    assert "Your order has shipped." in stored
    assert failed_id not in stored, "a stream that ended with an error event is not stored"
