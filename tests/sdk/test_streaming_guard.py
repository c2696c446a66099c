"""The incremental streaming guard: what a client gets while the upstream is still streaming.

The stub upstream sends each event as its own HTTP chunk, so the sidecar receives the
deltas one at a time, as it would from a real provider.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from harness import (
    CLIENT_API_KEY,
    EMAIL,
    MODEL,
    REFUSAL_TEXT,
    RawSseReply,
    RawStream,
    SidecarProcess,
    SseReply,
    StubUpstream,
    load_recording,
    single_chat_request,
    stream_chat_raw,
    user_message,
)
from openai.types.chat import ChatCompletionChunk

UPSTREAM_USAGE = {
    "prompt_tokens": 19,
    "completion_tokens": 7,
    "total_tokens": 26,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


# ---------------------------------------------------------------------------
# Upstream chunks
# ---------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    """Build a `chat.completion.chunk` for choice 0 in the envelope of a recorded OpenAI stream."""
    envelope = load_recording("chat_stream_email_split")[0]
    envelope["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    return envelope


def role_chunk() -> dict[str, Any]:
    return chunk({"role": "assistant", "content": "", "refusal": None})


def text_events(*texts: str, finish_reason: str = "stop") -> list[dict[str, Any]]:
    """Build the events of a streamed text reply: the role chunk, one chunk per text, then the finish chunk."""
    return [role_chunk(), *(chunk({"content": text}) for text in texts), chunk({}, finish_reason)]


def usage_chunk() -> dict[str, Any]:
    """Build the final chunk that OpenAI sends when `stream_options.include_usage` is set."""
    envelope = chunk({})
    envelope["choices"] = []
    envelope["usage"] = UPSTREAM_USAGE
    return envelope


def call_head(index: int, call_id: str, name: str) -> dict[str, Any]:
    """Build a tool-call delta that opens a call, as OpenAI sends it: id, type and name, empty arguments."""
    return {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}


def call_fragment(index: int, arguments: str) -> dict[str, Any]:
    """Build a tool-call delta that continues a call's arguments, without id or name."""
    return {"index": index, "function": {"arguments": arguments}}


def tool_chunk(*calls: dict[str, Any]) -> dict[str, Any]:
    return chunk({"tool_calls": list(calls)})


def sse_bytes(event: Any, line_ending: str = "\n", space: bool = True) -> bytes:
    """Encode one `data:` event with the given line ending and with or without the space after the colon."""
    data = event if isinstance(event, str) else json.dumps(event)
    separator = ": " if space else ":"
    return f"data{separator}{data}{line_ending}{line_ending}".encode()


# ---------------------------------------------------------------------------
# Client side
# ---------------------------------------------------------------------------


def chat_body(text: str, **fields: Any) -> bytes:
    return json.dumps({"model": MODEL, "messages": user_message(text), "stream": True, **fields}).encode()


def stream_chunks(client: openai.OpenAI, text: str, **fields: Any) -> list[ChatCompletionChunk]:
    stream = client.chat.completions.create(model=MODEL, messages=user_message(text), stream=True, **fields)
    return list(stream)


def content_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def finish_reasons(chunks: list[ChatCompletionChunk]) -> list[str]:
    return [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]


def tool_call_entries(chunks: list[ChatCompletionChunk]) -> list[Any]:
    """Return every tool-call delta entry that the client received, in order."""
    entries = []
    for received in chunks:
        for choice in received.choices:
            entries.extend(choice.delta.tool_calls or [])
    return entries


def assemble_tool_calls(chunks: list[ChatCompletionChunk]) -> dict[int, dict[str, str]]:
    """Assemble tool-call deltas by index, as an SDK user does: id and type set, name and arguments appended."""
    calls: dict[int, dict[str, str]] = {}
    for entry in tool_call_entries(chunks):
        call = calls.setdefault(entry.index, {"id": "", "type": "", "name": "", "arguments": ""})
        if entry.id:
            call["id"] = entry.id
        if entry.type:
            call["type"] = entry.type
        if entry.function and entry.function.name:
            call["name"] += entry.function.name
        if entry.function and entry.function.arguments:
            call["arguments"] += entry.function.arguments
    return calls


def sse_events(body: bytes) -> list[str]:
    """Split an event stream into its blocks (events, comments, `retry:` blocks), line endings normalized to LF."""
    text = body.decode().replace("\r\n", "\n").replace("\r", "\n")
    return [block for block in text.split("\n\n") if block.strip()]


def data_of(block: str) -> str | None:
    """Return the joined `data:` lines of a block, as an event-stream client reads them, or None
    for a block without data (a comment or a `retry:`-only block)."""
    lines = [line for line in block.split("\n") if line.startswith("data:")]
    if not lines:
        return None
    return "\n".join(line.removeprefix("data:").removeprefix(" ") for line in lines)


def data_events(body: bytes) -> list[str]:
    return [data for data in map(data_of, sse_events(body)) if data is not None]


def raw_content(data: list[str]) -> str:
    """Join the content deltas of the chunk events in a list of event data."""
    text = ""
    for event in data:
        if event == "[DONE]":
            continue
        parsed = json.loads(event)
        for choice in parsed.get("choices") or []:
            text += choice.get("delta", {}).get("content") or ""
    return text


def assert_complete_stream(response: RawStream) -> None:
    assert response.status == 200, f"status is {response.status}, body {response.body[:500]!r}"
    assert response.complete, f"the sidecar closed the connection before the end of the body: {response.body!r}"


# ---------------------------------------------------------------------------
# PII split across deltas
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deltas", "expected", "fragments"),
    [
        pytest.param(("SSN 123-45-", "6789 ok"), "SSN [US_SSN] ok", ("123-45-", "6789"), id="ssn"),
        pytest.param(
            ("Contact bob@", "example.com now"), "Contact [EMAIL] now", ("bob@", "example.com"), id="email"
        ),
    ],
)
def test_split_pii_redacted_in_stream(
    client: openai.OpenAI,
    upstream: StubUpstream,
    deltas: tuple[str, str],
    expected: str,
    fragments: tuple[str, str],
) -> None:
    upstream.enqueue(SseReply(text_events(*deltas)))

    chunks = stream_chunks(client, "What is on file for me?")

    assert content_of(chunks) == expected, f"streamed text is {content_of(chunks)!r}"
    for received in chunks:
        serialized = received.model_dump_json()
        for fragment in fragments:
            assert fragment not in serialized, f"fragment {fragment!r} reached the client in {serialized}"
    assert finish_reasons(chunks) == ["stop"], f"finish reasons are {finish_reasons(chunks)}"
    request_body = single_chat_request(upstream).body
    assert request_body.get("stream") is True, f"upstream request has stream={request_body.get('stream')!r}"


# ---------------------------------------------------------------------------
# Time to first token
# ---------------------------------------------------------------------------

FIRST_TEXT = "Here is the plan: "
REST_TEXT = "pack the boxes first."
FIRST_TEXT_POSITION = 1  # the role chunk is event 0
PAUSE_SECONDS = 1.5
SHORT_PAUSE_SECONDS = 0.3


def test_first_text_arrives_before_pause(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(SseReply(text_events(FIRST_TEXT, REST_TEXT), pauses={FIRST_TEXT_POSITION: PAUSE_SECONDS}))

    stream = client.chat.completions.create(model=MODEL, messages=user_message("What is the plan?"), stream=True)
    arrivals = []
    for received in stream:
        arrivals.append((time.monotonic(), received))
    send_times = upstream.sse_send_times

    text_arrivals = [(at, received) for at, received in arrivals if content_of([received])]
    assert text_arrivals, "the client received no text"
    first_at, first_chunk = text_arrivals[0]
    first_released = content_of([first_chunk])
    assert FIRST_TEXT.startswith(first_released), f"first released text {first_released!r} is not a prefix of {FIRST_TEXT!r}"

    assert len(send_times) > FIRST_TEXT_POSITION, f"stub recorded {len(send_times)} sent events"
    delivery_delay = first_at - send_times[FIRST_TEXT_POSITION]
    assert delivery_delay <= 0.5, f"first text reached the client {delivery_delay:.3f} s after the stub sent it"
    last_at = arrivals[-1][0]
    assert last_at - first_at >= 1.0, f"first text arrived only {last_at - first_at:.3f} s before the last chunk"
    assert send_times[-1] - first_at >= 1.0, (
        f"first text arrived only {send_times[-1] - first_at:.3f} s before the stub sent its last event"
    )
    assert content_of([received for _, received in arrivals]) == FIRST_TEXT + REST_TEXT, "streamed text is incomplete"


def test_plain_text_not_held_back(client: openai.OpenAI, upstream: StubUpstream) -> None:
    # No rule of the refusal policy can match a span that starts inside FIRST_TEXT and ends
    # after it, because FIRST_TEXT ends in ": " and no PII entity, phrase or pattern continues it.
    upstream.enqueue(
        SseReply(text_events(FIRST_TEXT, REST_TEXT), pauses={FIRST_TEXT_POSITION: SHORT_PAUSE_SECONDS})
    )

    stream = client.chat.completions.create(model=MODEL, messages=user_message("What is the plan?"), stream=True)
    arrivals = [(time.monotonic(), received) for received in stream]
    rest_sent_at = upstream.sse_send_times[FIRST_TEXT_POSITION + 1]

    released_before_rest = content_of([received for at, received in arrivals if at < rest_sent_at])
    assert released_before_rest == FIRST_TEXT, (
        f"only {released_before_rest!r} of {FIRST_TEXT!r} was released before the next delta was sent"
    )


MEASURED_FIRST_DELTA = "Hello there. "


@dataclass(frozen=True)
class FirstTokenTiming:
    """Latencies of one streamed reply in seconds, all from time.monotonic() in the test process."""

    request_to_first_text: float
    """From just before the SDK call to the first chunk with non-empty content."""
    send_to_first_text: float
    """From just before the stub wrote the first text event to the client receiving the first text."""
    request_to_whole_first_delta: float
    """From just before the SDK call until all of the upstream's first text delta has arrived."""
    first_text: str


def measure_first_token(client: openai.OpenAI, upstream: StubUpstream) -> FirstTokenTiming:
    upstream.enqueue(SseReply(text_events(MEASURED_FIRST_DELTA, "More text follows.")))
    started = time.monotonic()
    stream = client.chat.completions.create(model=MODEL, messages=user_message("Say hello."), stream=True)
    first_at = None
    whole_at = None
    first_text = ""
    received_text = ""
    for received in stream:
        text = content_of([received])
        if not text:
            continue
        now = time.monotonic()
        if first_at is None:
            first_at = now
            first_text = text
        received_text += text
        if whole_at is None and received_text.startswith(MEASURED_FIRST_DELTA):
            whole_at = now
    assert first_at is not None, "the client received no text"
    assert whole_at is not None, f"the client never received {MEASURED_FIRST_DELTA!r}: got {received_text!r}"
    sent_at = upstream.sse_send_times[FIRST_TEXT_POSITION]
    return FirstTokenTiming(first_at - started, first_at - sent_at, whole_at - started, first_text)


def format_milliseconds(runs: list[FirstTokenTiming], metric: str) -> str:
    values = [getattr(run, metric) * 1000 for run in runs]
    return f"median {statistics.median(values):.1f} ms, runs {[round(value, 1) for value in values]}"


def test_first_token_latency_measured(client: openai.OpenAI, upstream: StubUpstream) -> None:
    runs = 7
    direct_client = openai.OpenAI(base_url=upstream.base_url, api_key=CLIENT_API_KEY, max_retries=0, timeout=10.0)
    with direct_client:
        # One unmeasured run each, so neither side pays for opening a connection.
        measure_first_token(direct_client, upstream)
        measure_first_token(client, upstream)
        direct = []
        through_sidecar = []
        for _ in range(runs):
            direct.append(measure_first_token(direct_client, upstream))
            through_sidecar.append(measure_first_token(client, upstream))

    added = statistics.median(run.request_to_first_text for run in through_sidecar) - statistics.median(
        run.request_to_first_text for run in direct
    )
    lines = [f"time to first token, {runs} runs each, openai SDK stream, stub upstream on 127.0.0.1:"]
    for metric in ("request_to_first_text", "send_to_first_text", "request_to_whole_first_delta"):
        lines.append(f"  {metric}: direct {format_milliseconds(direct, metric)}")
        lines.append(f"  {metric}: sidecar {format_milliseconds(through_sidecar, metric)}")
    lines.append(f"  added by the sidecar to request_to_first_text (difference of medians): {added * 1000:.1f} ms")
    lines.append(f"  first text through the sidecar: {sorted({run.first_text for run in through_sidecar})}")
    print("\n" + "\n".join(lines))

    sidecar_delivery = statistics.median(run.send_to_first_text for run in through_sidecar)
    assert sidecar_delivery <= 0.5, f"median delay from stub send to client receipt is {sidecar_delivery:.3f} s"


# ---------------------------------------------------------------------------
# Tool calls
# ---------------------------------------------------------------------------

DELETE_CALL_EVENTS = [
    chunk({"role": "assistant", "content": None, "tool_calls": [call_head(0, "call_Dz4qK8", "delete_user")]}),
    tool_chunk(call_fragment(0, '{"us')),
    tool_chunk(call_fragment(0, 'er_id": "u_4')),
    tool_chunk(call_fragment(0, '8213"}')),
    chunk({}, "tool_calls"),
]

LOOKUP_CALL_EVENTS = [
    chunk({"role": "assistant", "content": None, "tool_calls": [call_head(0, "call_Lp9wRs", "lookup_customer")]}),
    tool_chunk(call_fragment(0, '{"email"')),
    tool_chunk(call_fragment(0, ': "jane.d')),
    tool_chunk(call_fragment(0, "oe@exa")),
    tool_chunk(call_fragment(0, 'mple.com"}')),
    chunk({}, "tool_calls"),
]


def test_denied_streamed_call_refused(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(SseReply(DELETE_CALL_EVENTS))

    chunks = stream_chunks(client, "Close the account of user u_48213.")

    for received in chunks:
        serialized = received.model_dump_json()
        assert "delete_user" not in serialized, f"the denied tool call reached the client: {serialized}"
        assert "u_48213" not in serialized, f"the denied call's arguments reached the client: {serialized}"
    assert tool_call_entries(chunks) == [], f"tool calls reached the client: {tool_call_entries(chunks)}"
    assert content_of(chunks) == REFUSAL_TEXT, f"streamed text is {content_of(chunks)!r}"
    assert finish_reasons(chunks) == ["content_filter"], f"finish reasons are {finish_reasons(chunks)}"
    assert len(upstream.chat_requests()) == 1, "the request was not forwarded exactly once"


def test_denied_streamed_call_raises(error_client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(SseReply(DELETE_CALL_EVENTS))
    received = []

    stream = error_client.chat.completions.create(
        model=MODEL, messages=user_message("Close the account of user u_48213."), stream=True
    )
    with pytest.raises(openai.APIError) as raised:
        for item in stream:
            received.append(item)

    error = raised.value
    assert error.code == "blocked_by_policy", f"error code is {error.code!r}"
    assert error.type == "guardrail_violation", f"error type is {error.type!r}"
    assert "no-deletes" in error.message, f"error message does not name the rule: {error.message!r}"
    assert tool_call_entries(received) == [], f"tool calls reached the client: {tool_call_entries(received)}"
    for item in received:
        assert "delete_user" not in item.model_dump_json(), "the denied tool call reached the client"


def test_allowed_call_arrives_whole(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(SseReply(LOOKUP_CALL_EVENTS))

    chunks = stream_chunks(client, "Find the customer jane.doe@example.com.")

    entries = tool_call_entries(chunks)
    assert len(entries) == 1, f"the call arrived in {len(entries)} deltas: {entries}"
    entry = entries[0]
    assert entry.index == 0, f"call index is {entry.index}"
    assert entry.id == "call_Lp9wRs", f"call id is {entry.id!r}"
    assert entry.type == "function", f"call type is {entry.type!r}"
    assert entry.function.name == "lookup_customer", f"call name is {entry.function.name!r}"
    arguments = json.loads(entry.function.arguments)
    assert arguments == {"email": "[EMAIL]"}, f"arguments are {arguments}"
    for received in chunks:
        assert "jane.d" not in received.model_dump_json(), "part of the email reached the client"
    assert finish_reasons(chunks) == ["tool_calls"], f"finish reasons are {finish_reasons(chunks)}"


TWO_CALL_EVENTS = [
    chunk({"role": "assistant", "content": None, "tool_calls": [call_head(0, "call_Lp9wRs", "lookup_customer")]}),
    tool_chunk(call_fragment(0, '{"email": "jane.')),
    # Two entries for the same index in one chunk: both fragments belong to call 0.
    tool_chunk(call_fragment(0, "doe@example"), call_fragment(0, '.com"}')),
    tool_chunk(call_head(1, "call_Rf7mTq", "refund_order")),
    tool_chunk(call_fragment(1, '{"order_id": "ord_7731", ')),
    tool_chunk(call_fragment(1, '"amount": 50}')),
    chunk({}, "tool_calls"),
]


def test_two_streamed_calls_assembled(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(SseReply(TWO_CALL_EVENTS))

    chunks = stream_chunks(client, "Look up jane.doe@example.com and refund 50 of order ord_7731.")

    entries = tool_call_entries(chunks)
    assert len(entries) == 2, f"expected one delta per call, got {len(entries)}: {entries}"
    calls = assemble_tool_calls(chunks)
    assert sorted(calls) == [0, 1], f"call indexes are {sorted(calls)}"
    assert calls[0]["id"] == "call_Lp9wRs", f"first call id is {calls[0]['id']!r}"
    assert calls[0]["name"] == "lookup_customer", f"first call name is {calls[0]['name']!r}"
    assert json.loads(calls[0]["arguments"]) == {"email": "[EMAIL]"}, f"first call arguments are {calls[0]['arguments']!r}"
    assert calls[1]["id"] == "call_Rf7mTq", f"second call id is {calls[1]['id']!r}"
    assert calls[1]["name"] == "refund_order", f"second call name is {calls[1]['name']!r}"
    second_arguments = json.loads(calls[1]["arguments"])
    assert second_arguments == {"order_id": "ord_7731", "amount": 50}, f"second call arguments are {second_arguments}"
    for received in chunks:
        assert EMAIL not in received.model_dump_json(), "the email reached the client"
    assert finish_reasons(chunks) == ["tool_calls"], f"finish reasons are {finish_reasons(chunks)}"


def test_denied_call_beside_allowed_refused(client: openai.OpenAI, upstream: StubUpstream) -> None:
    events = [
        chunk({"role": "assistant", "content": None, "tool_calls": [call_head(0, "call_Lp9wRs", "lookup_customer")]}),
        tool_chunk(call_fragment(0, '{"email": "jane.doe@example.com"}')),
        tool_chunk(call_head(1, "call_Dz4qK8", "delete_user")),
        tool_chunk(call_fragment(1, '{"user_id": '), call_fragment(1, '"u_48213"}')),
        chunk({}, "tool_calls"),
    ]
    upstream.enqueue(SseReply(events))

    chunks = stream_chunks(client, "Look up jane.doe@example.com, then close her account.")

    for received in chunks:
        assert "delete_user" not in received.model_dump_json(), "the denied tool call reached the client"
    assert tool_call_entries(chunks) == [], f"tool calls reached the client: {tool_call_entries(chunks)}"
    assert content_of(chunks) == REFUSAL_TEXT, f"streamed text is {content_of(chunks)!r}"
    assert finish_reasons(chunks) == ["content_filter"], f"finish reasons are {finish_reasons(chunks)}"


def test_repeated_call_name_not_duplicated(client: openai.OpenAI, upstream: StubUpstream) -> None:
    # A llama.cpp-style stream: every tool-call delta repeats the call's id, type and name.
    def repeated(arguments: str) -> dict[str, Any]:
        delta = call_head(0, "call_llama01", "lookup_customer")
        delta["function"]["arguments"] = arguments
        return delta

    events = [
        chunk({"role": "assistant", "content": None}),
        tool_chunk(repeated('{"email": ')),
        tool_chunk(repeated('"jane.doe@')),
        tool_chunk(repeated('example.com"}')),
        chunk({}, "tool_calls"),
    ]
    upstream.enqueue(SseReply(events))

    chunks = stream_chunks(client, "Find the customer jane.doe@example.com.")

    calls = assemble_tool_calls(chunks)
    assert sorted(calls) == [0], f"call indexes are {sorted(calls)}"
    call = calls[0]
    assert call["name"] == "lookup_customer", f"call name is {call['name']!r}"
    assert call["id"] == "call_llama01", f"call id is {call['id']!r}"
    assert call["type"] == "function", f"call type is {call['type']!r}"
    assert json.loads(call["arguments"]) == {"email": "[EMAIL]"}, f"arguments are {call['arguments']!r}"
    assert finish_reasons(chunks) == ["tool_calls"], f"finish reasons are {finish_reasons(chunks)}"


# ---------------------------------------------------------------------------
# Upstream framing
# ---------------------------------------------------------------------------


def framed_stream(line_ending: str, retry_block: bool = True) -> list[bytes]:
    """Build an upstream body that mixes `data:` with and without a space, a comment and a `retry:` block.

    The CR and LF of one line ending, and one event's JSON, are split across HTTP chunks.
    """
    end = line_ending
    hello_event = sse_bytes(chunk({"content": "Hello "}), end)
    world_event = sse_bytes(chunk({"content": "world"}), end, space=False)
    world_line = world_event[: -2 * len(end)]
    retry = [f"retry: 1000{end}{end}".encode()] if retry_block else []
    return [
        sse_bytes(role_chunk(), end, space=False),
        f": keep-alive{end}{end}".encode(),
        *retry,
        hello_event[:25],
        hello_event[25:],
        world_line + end[:1].encode(),
        (end[1:] + end).encode(),
        sse_bytes(chunk({}, "stop"), end),
        sse_bytes("[DONE]", end),
    ]


LINE_ENDINGS = [
    pytest.param("\n", id="lf"),
    pytest.param("\r\n", id="crlf"),
    pytest.param("\r", id="cr"),
]


@pytest.mark.parametrize("line_ending", LINE_ENDINGS)
def test_upstream_framing_variants_decoded(client: openai.OpenAI, upstream: StubUpstream, line_ending: str) -> None:
    upstream.enqueue(RawSseReply(framed_stream(line_ending, retry_block=False)))

    chunks = stream_chunks(client, "Say hello.")

    assert content_of(chunks) == "Hello world", f"streamed text is {content_of(chunks)!r}"
    assert finish_reasons(chunks) == ["stop"], f"finish reasons are {finish_reasons(chunks)}"


def test_retry_block_keeps_sdk_working(client: openai.OpenAI, upstream: StubUpstream) -> None:
    # openai 3.60.0 turns a block that sets only `retry` into an event with empty data and
    # fails to parse it as JSON, so a retry-only block must not reach the client as it is.
    upstream.enqueue(RawSseReply(framed_stream("\r\n")))

    chunks = stream_chunks(client, "Say hello.")

    assert content_of(chunks) == "Hello world", f"streamed text is {content_of(chunks)!r}"
    assert finish_reasons(chunks) == ["stop"], f"finish reasons are {finish_reasons(chunks)}"


@pytest.mark.parametrize("line_ending", LINE_ENDINGS)
def test_comment_and_retry_forwarded(sidecar: SidecarProcess, upstream: StubUpstream, line_ending: str) -> None:
    upstream.enqueue(RawSseReply(framed_stream(line_ending)))

    response = stream_chat_raw(sidecar.port, chat_body("Say hello."))

    assert_complete_stream(response)
    blocks = sse_events(response.body)
    assert ": keep-alive" in blocks, f"the comment was not forwarded: {blocks}"
    retry_lines = [line for block in blocks for line in block.split("\n") if line == "retry: 1000"]
    assert retry_lines, f"the retry field was not forwarded: {blocks}"
    data = data_events(response.body)
    assert raw_content(data) == "Hello world", f"streamed text is {raw_content(data)!r}"
    assert data[-1] == "[DONE]", f"last event is {data[-1]!r}"


# ---------------------------------------------------------------------------
# Block in the middle of a stream
# ---------------------------------------------------------------------------

RELEASED_TEXT = "Sure. "
BLOCK_PAUSE_SECONDS = 1.0
DENIED_POSITION = 2  # role chunk, released text, then the denied phrase


def midstream_block_reply() -> SseReply:
    events = text_events(RELEASED_TEXT, "Build a bomb with", " these parts.")
    return SseReply(events, pauses={DENIED_POSITION - 1: BLOCK_PAUSE_SECONDS})


def test_midstream_block_sends_error_event(error_sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    upstream.enqueue(midstream_block_reply())

    response = stream_chat_raw(error_sidecar.port, chat_body("How do I get started?"))

    assert_complete_stream(response)
    data = data_events(response.body)
    assert data, f"the stream has no events: {response.body!r}"
    assert "[DONE]" not in data, f"a blocked stream ended with [DONE]: {data}"
    assert raw_content(data[:-1]) == RELEASED_TEXT, f"text before the block is {raw_content(data[:-1])!r}"
    assert "bomb" not in response.body.decode(), "the denied phrase reached the client"

    last = json.loads(data[-1])
    assert isinstance(last.get("error"), dict), f"last event is not an error: {data[-1]}"
    error = last["error"]
    assert error.get("code") == "blocked_by_policy", f"error code is {error.get('code')!r}"
    assert error.get("type") == "guardrail_violation", f"error type is {error.get('type')!r}"
    assert "param" in error, f"error has no param field: {error}"
    assert error["param"] is None, f"error param is {error['param']!r}"
    assert isinstance(error.get("message"), str), f"error message is {error.get('message')!r}"
    assert "no-weapons" in error["message"], f"error message does not name the rule: {error['message']!r}"


def test_text_before_block_released_early(error_sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    upstream.enqueue(midstream_block_reply())

    response = stream_chat_raw(error_sidecar.port, chat_body("How do I get started?"))

    assert_complete_stream(response)
    denied_sent_at = upstream.sse_send_times[DENIED_POSITION]
    early = b"".join(piece for at, piece in response.pieces if at < denied_sent_at)
    early_text = raw_content(data_events(early))
    assert early_text == RELEASED_TEXT, (
        f"before the stub sent the denied phrase the client had {early_text!r}, expected {RELEASED_TEXT!r}; "
        f"whole stream {response.body!r}"
    )


def test_midstream_block_raises_in_sdk(error_client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(midstream_block_reply())
    received = []

    stream = error_client.chat.completions.create(
        model=MODEL, messages=user_message("How do I get started?"), stream=True
    )
    with pytest.raises(openai.APIError) as raised:
        for item in stream:
            received.append(item)

    assert raised.value.code == "blocked_by_policy", f"error code is {raised.value.code!r}"
    assert content_of(received) == RELEASED_TEXT, f"text before the error is {content_of(received)!r}"


def test_midstream_block_sends_refusal(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(midstream_block_reply())

    chunks = stream_chunks(client, "How do I get started?")

    assert content_of(chunks) == RELEASED_TEXT + "\n\n" + REFUSAL_TEXT, f"streamed text is {content_of(chunks)!r}"
    assert finish_reasons(chunks) == ["content_filter"], f"finish reasons are {finish_reasons(chunks)}"
    for received in chunks:
        assert "bomb" not in received.model_dump_json(), "the denied phrase reached the client"


def test_midstream_refusal_ends_with_done(sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    upstream.enqueue(midstream_block_reply())

    response = stream_chat_raw(sidecar.port, chat_body("How do I get started?"))

    assert_complete_stream(response)
    data = data_events(response.body)
    assert data, f"the stream has no events: {response.body!r}"
    assert data[-1] == "[DONE]", f"last event is {data[-1]!r}"
    assert data.count("[DONE]") == 1, f"[DONE] appears {data.count('[DONE]')} times"
    assert raw_content(data) == RELEASED_TEXT + "\n\n" + REFUSAL_TEXT, f"streamed text is {raw_content(data)!r}"
    for event in data[:-1]:
        assert "error" not in json.loads(event), f"refusal stream has an error event: {event}"


# ---------------------------------------------------------------------------
# Usage
# ---------------------------------------------------------------------------


def usage_reply() -> SseReply:
    # With include_usage set, every chunk before the usage chunk carries "usage": null
    # (OpenAI's API specification, description of ChatCompletionStreamOptions).
    events = text_events("The parcel ", "left today.")
    for event in events:
        event["usage"] = None
    return SseReply([*events, usage_chunk()])


@pytest.mark.parametrize(
    "client_fields",
    [
        pytest.param({}, id="no-stream-options"),
        pytest.param({"stream_options": {"include_usage": False}}, id="include-usage-false"),
    ],
)
def test_sidecar_usage_chunk_stripped(
    client: openai.OpenAI, upstream: StubUpstream, client_fields: dict[str, Any]
) -> None:
    upstream.enqueue(usage_reply())

    chunks = stream_chunks(client, "Where is my parcel?", **client_fields)

    stream_options = single_chat_request(upstream).body.get("stream_options")
    assert stream_options == {"include_usage": True}, f"upstream request has stream_options={stream_options!r}"
    assert chunks, "the stream contained no chunks"
    for received in chunks:
        assert received.usage is None, f"a usage chunk reached the client: {received.model_dump_json()}"
        assert received.choices, f"a chunk without choices reached the client: {received.model_dump_json()}"
    assert content_of(chunks) == "The parcel left today.", f"streamed text is {content_of(chunks)!r}"


def test_requested_usage_chunk_forwarded(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(usage_reply())

    chunks = stream_chunks(client, "Where is my parcel?", stream_options={"include_usage": True})

    stream_options = single_chat_request(upstream).body.get("stream_options")
    assert stream_options == {"include_usage": True}, f"upstream request has stream_options={stream_options!r}"
    assert chunks, "the stream contained no chunks"
    last = chunks[-1]
    assert last.choices == [], f"last chunk has choices: {last.model_dump_json()}"
    assert last.usage is not None, "last chunk has no usage"
    assert last.usage.prompt_tokens == UPSTREAM_USAGE["prompt_tokens"], f"prompt_tokens is {last.usage.prompt_tokens}"
    assert last.usage.completion_tokens == UPSTREAM_USAGE["completion_tokens"], (
        f"completion_tokens is {last.usage.completion_tokens}"
    )
    assert last.usage.total_tokens == UPSTREAM_USAGE["total_tokens"], f"total_tokens is {last.usage.total_tokens}"
    usage_chunks = [received for received in chunks if received.usage is not None]
    assert len(usage_chunks) == 1, f"the client got {len(usage_chunks)} chunks with usage"
    assert content_of(chunks) == "The parcel left today.", f"streamed text is {content_of(chunks)!r}"


# ---------------------------------------------------------------------------
# Upstream failures after the response started
# ---------------------------------------------------------------------------

UPSTREAM_ERROR_DATA = (
    '{"error": {"message": "The server had an error while processing your request. Sorry about that!", '
    '"type": "server_error", "param": null, "code": null}}'
)
PARTIAL_TEXT = "Partial answer "


def upstream_error_reply() -> RawSseReply:
    return RawSseReply(
        [sse_bytes(role_chunk()), sse_bytes(chunk({"content": PARTIAL_TEXT})), sse_bytes(UPSTREAM_ERROR_DATA)]
    )


def test_upstream_error_event_raises(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(upstream_error_reply())
    received = []

    stream = client.chat.completions.create(model=MODEL, messages=user_message("Tell me a story."), stream=True)
    with pytest.raises(openai.APIError) as raised:
        for item in stream:
            received.append(item)

    expected_message = json.loads(UPSTREAM_ERROR_DATA)["error"]["message"]
    assert raised.value.message == expected_message, f"error message is {raised.value.message!r}"
    assert raised.value.type == "server_error", f"error type is {raised.value.type!r}"
    assert PARTIAL_TEXT.startswith(content_of(received)), f"text before the error is {content_of(received)!r}"


def test_upstream_error_event_forwarded(sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    upstream.enqueue(upstream_error_reply())

    response = stream_chat_raw(sidecar.port, chat_body("Tell me a story."))

    assert_complete_stream(response)
    data = data_events(response.body)
    assert data, f"the stream has no events: {response.body!r}"
    assert data[-1] == UPSTREAM_ERROR_DATA, f"last event is {data[-1]!r}, expected the upstream's error as sent"
    assert "[DONE]" not in data, f"the stream ended with [DONE] after an error: {data}"


def upstream_cut_reply(abrupt: bool) -> RawSseReply:
    events = [sse_bytes(role_chunk()), sse_bytes(chunk({"content": PARTIAL_TEXT}))]
    return RawSseReply(events, complete=not abrupt)


CUT_KINDS = [
    pytest.param(True, id="connection-dropped"),
    pytest.param(False, id="body-ended-early"),
]


@pytest.mark.parametrize("abrupt", CUT_KINDS)
def test_upstream_cut_raises_in_sdk(client: openai.OpenAI, upstream: StubUpstream, abrupt: bool) -> None:
    upstream.enqueue(upstream_cut_reply(abrupt))
    received = []

    stream = client.chat.completions.create(model=MODEL, messages=user_message("Tell me a story."), stream=True)
    with pytest.raises(openai.APIError) as raised:
        for item in stream:
            received.append(item)

    assert raised.value.code == "upstream_unavailable", f"error code is {raised.value.code!r}"
    assert PARTIAL_TEXT.startswith(content_of(received)), f"text before the error is {content_of(received)!r}"


@pytest.mark.parametrize("abrupt", CUT_KINDS)
def test_upstream_cut_sends_error_event(sidecar: SidecarProcess, upstream: StubUpstream, abrupt: bool) -> None:
    upstream.enqueue(upstream_cut_reply(abrupt))

    response = stream_chat_raw(sidecar.port, chat_body("Tell me a story."))

    assert_complete_stream(response)
    data = data_events(response.body)
    assert data, f"the stream has no events: {response.body!r}"
    assert "[DONE]" not in data, f"a cut stream ended with [DONE]: {data}"
    last = json.loads(data[-1])
    assert isinstance(last.get("error"), dict), f"last event is not an error: {data[-1]}"
    assert last["error"].get("code") == "upstream_unavailable", f"error code is {last['error'].get('code')!r}"


# ---------------------------------------------------------------------------
# Response headers
# ---------------------------------------------------------------------------


def test_stream_response_headers_set(sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    upstream.enqueue(SseReply(text_events("Hello.")))

    response = stream_chat_raw(sidecar.port, chat_body("Say hello."))

    assert_complete_stream(response)
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith("text/event-stream"), f"content-type is {content_type!r}"
    assert response.headers.get("cache-control") == "no-cache", f"cache-control is {response.headers.get('cache-control')!r}"
    assert response.headers.get("x-accel-buffering") == "no", (
        f"x-accel-buffering is {response.headers.get('x-accel-buffering')!r}"
    )
