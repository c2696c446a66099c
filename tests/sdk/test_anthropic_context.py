"""Context budgets on Anthropic Messages API requests, through the official `anthropic` SDK.

An over-budget conversation is trimmed before it reaches the upstream, and a stored summary
is appended to `system`. An upstream "prompt is too long" error is retried once with a
compacted request."""

from __future__ import annotations

import json
import time
import uuid
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
    forwarded_messages,
    load_recording,
    send_raw,
)

SYSTEM = "You track parcels."
LAST_QUESTION = "And parcel 9?"
# The summarizer prompt of the context-summarize policy.
SUMMARY_PROMPT = "Summarize the conversation for the e2e test."
SUMMARY_TEXT = "The customer asked about two parcels; both left the warehouse."
SUMMARY_INTRO = "Summary of the earlier part of this conversation:\n"
# Seconds to wait for the background summarization to reach the stub and be stored.
SUMMARY_WAIT_SECONDS = 5.0


def start_sidecar(
    policy: str, stub: StubUpstream, factory: pytest.TempPathFactory, started: list[SidecarProcess]
) -> SidecarProcess:
    process = SidecarProcess(policy, policy, stub.base_url, factory.mktemp(policy))
    started.append(process)
    process.start()
    return process


@pytest.fixture(scope="module")
def truncate_sidecar(
    stub_server: StubUpstream, tmp_path_factory: pytest.TempPathFactory, started_sidecars: list[SidecarProcess]
) -> Iterator[SidecarProcess]:
    process = start_sidecar("context-truncate", stub_server, tmp_path_factory, started_sidecars)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def summarize_sidecar(
    stub_server: StubUpstream, tmp_path_factory: pytest.TempPathFactory, started_sidecars: list[SidecarProcess]
) -> Iterator[SidecarProcess]:
    process = start_sidecar("context-summarize", stub_server, tmp_path_factory, started_sidecars)
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


def summary_reply() -> JsonReply:
    """A Chat Completions reply with the summary text, for the summarizer's request."""
    body = load_recording("chat_completion_text")
    body["choices"][0]["message"]["content"] = SUMMARY_TEXT
    return JsonReply(body)


def wait_for_summarizer_requests(upstream: StubUpstream, count: int) -> None:
    """Wait until `count` summarizer requests reached the stub."""
    deadline = time.monotonic() + SUMMARY_WAIT_SECONDS
    while time.monotonic() < deadline:
        requests = [r for r in upstream.chat_requests() if forwarded_messages(r)[0].get("content") == SUMMARY_PROMPT]
        if len(requests) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} summarizer requests reached the stub within {SUMMARY_WAIT_SECONDS} s")


def test_summary_appended_to_system(summarize_sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    header = {"x-agent-conversation-id": f"e2e-{uuid.uuid4()}"}
    turns = [
        f"Question {n}: " + "The parcel with order number 1234 left the warehouse on Monday. " * 6
        for n in range(1, 4)
    ]
    history: list[dict[str, Any]] = []
    with client_for(summarize_sidecar) as client:

        def send(text: str) -> None:
            history.append({"role": "user", "content": text})
            client.messages.create(
                model=ANTHROPIC_MODEL, max_tokens=100, system=SYSTEM, messages=history, extra_headers=header
            )

        upstream.enqueue(anthropic_reply_text("First answer."))
        send(turns[0])
        history.append({"role": "assistant", "content": "First answer."})

        # The second turn crosses the trigger, so the summary reply is queued after its reply.
        upstream.enqueue(anthropic_reply_text("Second answer."), summary_reply())
        send(turns[1])
        history.append({"role": "assistant", "content": "Second answer."})
        wait_for_summarizer_requests(upstream, 1)
        # The summary is stored after the stub replies, so wait a moment for the store.
        time.sleep(0.5)

        # The third turn is past the trigger too, so a second summary reply is queued for it.
        upstream.enqueue(anthropic_reply_text("Third answer."), summary_reply())
        send(turns[2])
        wait_for_summarizer_requests(upstream, 2)

    last = upstream.messages_requests()[-1].body
    assert last["system"] == f"{SYSTEM}\n\n{SUMMARY_INTRO}{SUMMARY_TEXT}"
    contents = [m["content"] for m in last["messages"]]
    assert all(m["role"] != "system" for m in last["messages"])
    assert turns[0] not in contents, "the summarized turn is not resent"
    assert last["messages"][0] == {"role": "user", "content": turns[1]}
    assert contents[-1] == turns[2]
    assert metric_value(summarize_sidecar, 'agent_sidecar_context_window_actions_total{action="summarized"}') == 1


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
