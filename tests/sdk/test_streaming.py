"""Streamed responses (`stream=True`) are guarded before the client sees them."""

from __future__ import annotations

import json

import openai

from harness import (
    EMAIL,
    MODEL,
    SidecarProcess,
    SseReply,
    StubUpstream,
    load_recording,
    post_chat_raw,
    single_chat_request,
    user_message,
)

GUARDED_STREAM_TEXT = "Write to [EMAIL] today"


def test_split_email_redacted_in_stream(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(SseReply(load_recording("chat_stream_email_split")))

    stream = client.chat.completions.create(
        model=MODEL, messages=user_message("Where should I send the contract?"), stream=True
    )
    chunks = list(stream)

    assert chunks, "the stream contained no chunks"
    deltas = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    for delta in deltas:
        assert "jane.d" not in delta, f"first part of the email reached the client: {delta!r}"
        assert "oe@example.com" not in delta, f"second part of the email reached the client: {delta!r}"
    assert "".join(deltas) == GUARDED_STREAM_TEXT, f"streamed text is {''.join(deltas)!r}"

    finish_reasons = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finish_reasons[-1] == "stop", f"stream did not finish with 'stop': {finish_reasons}"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks), "a streamed item is not a chunk"

    request_body = single_chat_request(upstream).body
    assert request_body.get("stream") is True, f"upstream request has stream={request_body.get('stream')!r}"


def test_stream_ends_with_done_event(sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    upstream.enqueue(SseReply(load_recording("chat_stream_email_split")))
    body = json.dumps(
        {"model": MODEL, "messages": user_message("Where should I send the contract?"), "stream": True}
    ).encode()

    response = post_chat_raw(sidecar.port, body)

    assert response.status == 200, f"status is {response.status}, body {response.body[:500]!r}"
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith("text/event-stream"), f"content-type is {content_type!r}"
    text = response.body.decode()
    assert EMAIL not in text, "the email reached the client"

    events = [event for event in text.replace("\r\n", "\n").split("\n\n") if event.strip()]
    assert all(event.startswith("data:") for event in events), f"an event is not a data event: {events}"
    # The SSE format allows one optional space after "data:".
    data_lines = [event.removeprefix("data:").removeprefix(" ") for event in events]
    assert data_lines[-1] == "[DONE]", f"last event is {events[-1]!r}"
    chunks = [json.loads(data) for data in data_lines[:-1]]
    assert chunks, "no chunk came before [DONE]"
    assert all(chunk.get("object") == "chat.completion.chunk" for chunk in chunks), "an event is not a chunk"
    streamed_text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    assert streamed_text == GUARDED_STREAM_TEXT, f"streamed text is {streamed_text!r}"
