"""Context budgets on Anthropic Messages API requests, through the official `anthropic` SDK:
an over-budget conversation is trimmed before it reaches the upstream, and an upstream
"prompt is too long" error is retried once with a compacted request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from harness import (
    ANTHROPIC_MODEL,
    CLIENT_API_KEY,
    AnthropicSseReply,
    JsonReply,
    SidecarProcess,
    StubUpstream,
    anthropic_reply_text,
    load_recording,
    send_raw,
)

SYSTEM = "You track parcels."
LAST_QUESTION = "And parcel 9?"


@pytest.fixture(scope="module")
def truncate_sidecar(
    stub_server: StubUpstream, tmp_path_factory: pytest.TempPathFactory, started_sidecars: list[SidecarProcess]
) -> Iterator[SidecarProcess]:
    process = SidecarProcess(
        "context-truncate", "context-truncate", stub_server.base_url, tmp_path_factory.mktemp("context-truncate")
    )
    started_sidecars.append(process)
    process.start()
    yield process
    process.stop()


def client_for(process: SidecarProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=process.anthropic_base_url, api_key=CLIENT_API_KEY, max_retries=0, timeout=10.0)


def history() -> list[dict[str, Any]]:
    """Four long questions with answers, a tool round trip, and a short newest question."""
    messages: list[dict[str, Any]] = []
    for n in range(1, 5):
        messages.append({"role": "user", "content": f"Question {n}: where is parcel {n}? " * 12})
        messages.append({"role": "assistant", "content": f"Parcel {n} left the warehouse."})
    messages.append({"role": "user", "content": "Look up parcel 7."})
    messages.append(
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking it up."},
                {"type": "tool_use", "id": "toolu_7", "name": "track_parcel", "input": {"parcel": 7}},
            ],
        }
    )
    messages.append(
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_7", "content": "In Lyon."}]}
    )
    messages.append({"role": "assistant", "content": "Parcel 7 is in Lyon."})
    messages.append({"role": "user", "content": LAST_QUESTION})
    return messages


def block_types(message: dict[str, Any]) -> list[str]:
    content = message["content"]
    return ["text"] if isinstance(content, str) else [block["type"] for block in content]


def metric_value(process: SidecarProcess, sample: str) -> float:
    """Return the value of one sample line of GET /metrics, such as `name{label="x"}`, or 0."""
    text = send_raw(process.admin_port, "GET", "/metrics").body.decode()
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


def stream_reply_text(text: str) -> AnthropicSseReply:
    """An event stream whose only content block is `text`, in one delta."""
    recorded = load_recording("anthropic_stream_email_split")
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
    start, block_start, block_stop, message_delta, message_stop = (recorded[i] for i in (0, 1, 6, 8, 9))
    return AnthropicSseReply([start, block_start, delta, block_stop, message_delta, message_stop])


def overflow_error() -> JsonReply:
    return JsonReply(
        {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "prompt is too long: 208310 tokens > 200000 maximum"},
        },
        status=400,
    )


def test_over_budget_conversation_trimmed(truncate_sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    upstream.enqueue(anthropic_reply_text("Parcel 9 is on its way."))
    sent_history = history()
    with client_for(truncate_sidecar) as client:
        message = client.messages.create(model=ANTHROPIC_MODEL, max_tokens=100, system=SYSTEM, messages=sent_history)

    assert message.content[0].text == "Parcel 9 is on its way."
    (forwarded,) = upstream.messages_requests()
    kept = forwarded.body["messages"]
    assert len(kept) < len(sent_history)
    assert forwarded.body["system"] == SYSTEM
    assert kept[0]["role"] == "user", "the kept messages start with a user message"
    assert kept[-1] == {"role": "user", "content": LAST_QUESTION}
    assert "Question 1" not in json.dumps(kept), "the oldest turn is dropped"
    uses = [i for i, m in enumerate(kept) if "tool_use" in block_types(m)]
    results = [i for i, m in enumerate(kept) if "tool_result" in block_types(m)]
    assert uses, "the tool round trip fits the budget"
    assert results == [i + 1 for i in uses], "each tool_use is kept with its tool_result"
    assert metric_value(truncate_sidecar, 'agent_sidecar_context_window_actions_total{action="truncated"}') >= 1


def test_within_budget_conversation_unchanged(truncate_sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    upstream.enqueue(anthropic_reply_text("It left."))
    sent_history = history()[-5:]
    with client_for(truncate_sidecar) as client:
        client.messages.create(model=ANTHROPIC_MODEL, max_tokens=100, system=SYSTEM, messages=sent_history)

    (forwarded,) = upstream.messages_requests()
    assert forwarded.body["messages"] == sent_history


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_prompt_too_long_retried_compacted(sidecar: SidecarProcess, upstream: StubUpstream, stream: bool) -> None:
    reply = stream_reply_text if stream else anthropic_reply_text
    upstream.enqueue(overflow_error(), reply("Parcel 9 is on its way."))
    with client_for(sidecar) as client:
        if stream:
            with client.messages.stream(
                model=ANTHROPIC_MODEL, max_tokens=100, system=SYSTEM, messages=history()
            ) as events:
                text = events.get_final_text()
        else:
            message = client.messages.create(model=ANTHROPIC_MODEL, max_tokens=100, system=SYSTEM, messages=history())
            text = message.content[0].text

    assert text == "Parcel 9 is on its way."
    first, second = upstream.messages_requests()
    assert len(second.body["messages"]) < len(first.body["messages"])
    assert second.body["messages"][0]["role"] == "user"
    assert second.body["messages"][-1] == {"role": "user", "content": LAST_QUESTION}
    assert second.body["system"] == SYSTEM
    assert metric_value(sidecar, 'agent_sidecar_context_window_actions_total{action="overflow_retried"}') >= 1


def test_prompt_too_long_not_retried_twice(sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    upstream.enqueue(overflow_error(), overflow_error(), anthropic_reply_text("never sent"))
    with client_for(sidecar) as client, pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(model=ANTHROPIC_MODEL, max_tokens=100, system=SYSTEM, messages=history())

    assert "prompt is too long" in raised.value.message
    assert len(upstream.messages_requests()) == 2
