"""Conversation state through the official SDK: pseudonyms restored in replies (also after a
sidecar restart with Redis), context budgets enforced, and conversations summarized."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from harness import (
    EMAIL,
    MODEL,
    PHONE,
    SECOND_EMAIL,
    JsonReply,
    RedisServer,
    SidecarProcess,
    SseReply,
    StubUpstream,
    forwarded_messages,
    load_recording,
    send_raw,
    single_chat_request,
)
from test_streaming_guard import call_fragment, call_head, chunk, text_events, tool_chunk

# At least 32 bytes, as the sidecar requires of a vault key.
VAULT_KEY = "e2e-vault-key-0123456789abcdefghijklmnopqrstuvwxyz"
SUMMARY_PROMPT = "Summarize the conversation for the e2e test."
SUMMARY_TEXT = "The customer asked about two parcels; both left the warehouse."
SUMMARY_INTRO = "Summary of the earlier part of this conversation:\n"
# Seconds to wait for the background summarization to reach the stub and be stored.
SUMMARY_WAIT_SECONDS = 5.0


def _sidecar(
    name: str,
    policy: str,
    stub: StubUpstream,
    factory: pytest.TempPathFactory,
    started: list[SidecarProcess],
    extra_args: tuple[str, ...] = (),
) -> SidecarProcess:
    process = SidecarProcess(
        name,
        policy,
        stub.base_url,
        factory.mktemp(name),
        extra_args=extra_args,
        extra_env={"AGENT_SIDECAR_VAULT_KEY": VAULT_KEY},
    )
    started.append(process)
    process.start()
    return process


@pytest.fixture(scope="module")
def pseudonym_sidecar(
    stub_server: StubUpstream, tmp_path_factory: pytest.TempPathFactory, started_sidecars: list[SidecarProcess]
) -> Iterator[SidecarProcess]:
    process = _sidecar("pseudonymize", "pseudonymize", stub_server, tmp_path_factory, started_sidecars)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def summarize_sidecar(
    stub_server: StubUpstream, tmp_path_factory: pytest.TempPathFactory, started_sidecars: list[SidecarProcess]
) -> Iterator[SidecarProcess]:
    process = _sidecar("summarize", "context-summarize", stub_server, tmp_path_factory, started_sidecars)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def reject_sidecar(
    stub_server: StubUpstream, tmp_path_factory: pytest.TempPathFactory, started_sidecars: list[SidecarProcess]
) -> Iterator[SidecarProcess]:
    process = _sidecar("reject", "context-reject", stub_server, tmp_path_factory, started_sidecars)
    yield process
    process.stop()


def sdk_client(process: SidecarProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=process.base_url, api_key="client-key", max_retries=0, timeout=10.0)


def conversation_header() -> dict[str, str]:
    return {"x-agent-conversation-id": f"e2e-{uuid.uuid4()}"}


def reply(text: str, tool_calls: list[dict[str, Any]] | None = None) -> JsonReply:
    body = load_recording("chat_completion_text")
    body["choices"][0]["message"]["content"] = text
    if tool_calls:
        body["choices"][0]["message"]["tool_calls"] = tool_calls
        body["choices"][0]["finish_reason"] = "tool_calls"
    return JsonReply(body)


def upstream_text(request: Any) -> str:
    return json.dumps(request.body)


def metric_value(process: SidecarProcess, sample: str) -> float:
    """Return the value of one sample line of GET /metrics, such as `name{label="x"}`, or 0."""
    text = send_raw(process.admin_port, "GET", "/metrics").body.decode()
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


# ---------------------------------------------------------------------------
# Pseudonyms
# ---------------------------------------------------------------------------


def test_pseudonyms_restored_in_reply(pseudonym_sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "send_mail", "arguments": json.dumps({"to": "<EMAIL_1>", "phone": "<PHONE_1>"})},
    }
    upstream.enqueue(reply("I will mail <EMAIL_1> and call <PHONE_1>; <EMAIL_7> is unknown.", [call]))
    with sdk_client(pseudonym_sidecar) as client:
        completion = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Mail me at {EMAIL} or call {PHONE}."}],
            extra_headers=conversation_header(),
        )

    sent = upstream_text(single_chat_request(upstream))
    assert EMAIL not in sent
    assert PHONE not in sent
    assert forwarded_messages(single_chat_request(upstream))[0]["content"] == "Mail me at <EMAIL_1> or call <PHONE_1>."
    message = completion.choices[0].message
    assert message.content == f"I will mail {EMAIL} and call {PHONE}; <EMAIL_7> is unknown."
    assert message.tool_calls is not None
    assert json.loads(message.tool_calls[0].function.arguments) == {"to": EMAIL, "phone": PHONE}


def test_pseudonyms_without_conversation(pseudonym_sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    upstream.enqueue(reply("Noted <EMAIL_1>."))
    with sdk_client(pseudonym_sidecar) as client:
        completion = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"I am {EMAIL}."}]
        )

    assert forwarded_messages(single_chat_request(upstream))[0]["content"] == "I am <EMAIL_1>."
    assert completion.choices[0].message.content == f"Noted {EMAIL}."


def test_pseudonym_stable_across_turns(pseudonym_sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    header = conversation_header()
    history: list[dict[str, Any]] = [{"role": "user", "content": f"I am {EMAIL}."}]
    upstream.enqueue(reply("Noted <EMAIL_1>."), reply("Both <EMAIL_1> and <EMAIL_2>."))
    with sdk_client(pseudonym_sidecar) as client:
        first = client.chat.completions.create(model=MODEL, messages=history, extra_headers=header)
        history.append({"role": "assistant", "content": first.choices[0].message.content})
        history.append({"role": "user", "content": f"Also copy {SECOND_EMAIL}, not {EMAIL} twice."})
        second = client.chat.completions.create(model=MODEL, messages=history, extra_headers=header)

    assert first.choices[0].message.content == f"Noted {EMAIL}."
    assert second.choices[0].message.content == f"Both {EMAIL} and {SECOND_EMAIL}."
    sent = forwarded_messages(upstream.chat_requests()[1])
    assert sent[-1]["content"] == "Also copy <EMAIL_2>, not <EMAIL_1> twice."
    assert sent[1]["content"] == "Noted <EMAIL_1>.", "the restored reply goes upstream as placeholders again"


def test_pseudonyms_restored_in_stream(pseudonym_sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    events = text_events("Sure, I will mail <EMA", "IL_1> and call <PH", "ONE_", "1> now.")
    # Replace the finish chunk with a tool call whose arguments are split inside a placeholder.
    events = events[:-1] + [
        tool_chunk(call_head(0, "call_1", "send_mail")),
        tool_chunk(call_fragment(0, '{"to": "<EMAIL')),
        tool_chunk(call_fragment(0, '_1>"}')),
        chunk({}, "tool_calls"),
    ]
    upstream.enqueue(SseReply(events))
    with sdk_client(pseudonym_sidecar) as client:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Mail {EMAIL}, call {PHONE}."}],
            stream=True,
            extra_headers=conversation_header(),
        )
        chunks = list(stream)

    sent = upstream_text(single_chat_request(upstream))
    assert EMAIL not in sent
    assert PHONE not in sent
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"Sure, I will mail {EMAIL} and call {PHONE} now."
    calls = [call for c in chunks if c.choices for call in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1
    assert json.loads(calls[0].function.arguments) == {"to": EMAIL}


def test_pseudonyms_survive_restart(
    stub_server: StubUpstream,
    tmp_path_factory: pytest.TempPathFactory,
    started_sidecars: list[SidecarProcess],
) -> None:
    stub_server.reset()
    redis = RedisServer(tmp_path_factory.mktemp("redis"))
    redis.start()
    try:
        process = _sidecar(
            "pseudonymize-redis",
            "pseudonymize",
            stub_server,
            tmp_path_factory,
            started_sidecars,
            extra_args=("--redis-url", redis.url),
        )
        header = conversation_header()
        try:
            stub_server.enqueue(SseReply(text_events("Noted <EMA", "IL_1>.")))
            with sdk_client(process) as client:
                stream = client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"I am {EMAIL}."}],
                    stream=True,
                    extra_headers=header,
                )
                first_text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            process.restart()
            # Only the new message is sent: the vault loaded from Redis must supply <EMAIL_1>.
            stub_server.enqueue(reply("Writing to <EMAIL_1> and <EMAIL_2>."))
            with sdk_client(process) as client:
                completion = client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"Also copy {SECOND_EMAIL}."}],
                    extra_headers=header,
                )
        finally:
            process.stop()
        stored = redis.stored_text()
    finally:
        redis.stop()

    requests = stub_server.chat_requests()
    stub_server.reset()
    assert len(requests) == 2
    assert forwarded_messages(requests[1])[-1]["content"] == "Also copy <EMAIL_2>."
    assert first_text == f"Noted {EMAIL}."
    assert completion.choices[0].message.content == f"Writing to {EMAIL} and {SECOND_EMAIL}."
    assert "Noted <EMAIL_1>." in stored, "the streamed reply is stored with its placeholder"
    assert EMAIL not in stored
    assert SECOND_EMAIL not in stored


# ---------------------------------------------------------------------------
# Context windows
# ---------------------------------------------------------------------------


def test_over_budget_request_rejected(reject_sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    long_text = "The parcel with order number 1234 left the warehouse on Monday. " * 10
    with sdk_client(reject_sidecar) as client, pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long_text}])

    assert raised.value.code == "context_length_exceeded"
    assert "over this sidecar's context budget of 50 tokens" in raised.value.message
    assert upstream.chat_requests() == []
    assert metric_value(reject_sidecar, 'agent_sidecar_context_window_actions_total{action="rejected"}') >= 1


def summarizer_requests(upstream: StubUpstream) -> list[Any]:
    return [r for r in upstream.chat_requests() if forwarded_messages(r)[0].get("content") == SUMMARY_PROMPT]


def wait_for_summarizer_requests(upstream: StubUpstream, count: int) -> list[Any]:
    """Wait until `count` summarizer requests reached the stub and return them."""
    deadline = time.monotonic() + SUMMARY_WAIT_SECONDS
    while time.monotonic() < deadline:
        requests = summarizer_requests(upstream)
        if len(requests) >= count:
            return requests
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} summarizer requests reached the stub within {SUMMARY_WAIT_SECONDS} s")


def test_conversation_summarized_past_trigger(summarize_sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    header = conversation_header()
    turns = [
        f"Question {n}: " + "The parcel with order number 1234 left the warehouse on Monday. " * 6
        for n in range(1, 4)
    ]
    history: list[dict[str, Any]] = [{"role": "system", "content": "You track parcels."}]
    with sdk_client(summarize_sidecar) as client:
        history.append({"role": "user", "content": turns[0]})
        upstream.enqueue(reply("First answer."))
        client.chat.completions.create(model=MODEL, messages=history, extra_headers=header)
        history.append({"role": "assistant", "content": "First answer."})

        # The second turn crosses the trigger, so the summary reply is queued after its reply.
        history.append({"role": "user", "content": turns[1]})
        upstream.enqueue(reply("Second answer."), reply(SUMMARY_TEXT))
        client.chat.completions.create(model=MODEL, messages=history, extra_headers=header)
        history.append({"role": "assistant", "content": "Second answer."})
        summarizer = wait_for_summarizer_requests(upstream, 1)[0]
        # The summary is stored after the stub replies, so wait a moment for the store.
        time.sleep(0.5)

        history.append({"role": "user", "content": turns[2]})
        # The third turn is past the trigger too; its summary reply keeps the retry quiet.
        upstream.enqueue(reply("Third answer."), reply(SUMMARY_TEXT))
        completion = client.chat.completions.create(model=MODEL, messages=history, extra_headers=header)
        wait_for_summarizer_requests(upstream, 2)

    assert completion.choices[0].message.content == "Third answer."
    summarizer_messages = forwarded_messages(summarizer)
    assert summarizer.body["model"] == MODEL
    assert "Question 1" in summarizer_messages[1]["content"]
    assert "Question 2" not in summarizer_messages[1]["content"], "the newest turn stays verbatim"

    client_requests = [r for r in upstream.chat_requests() if forwarded_messages(r)[0].get("content") != SUMMARY_PROMPT]
    last = forwarded_messages(client_requests[-1])
    assert last[0] == {"role": "system", "content": "You track parcels."}
    assert last[1] == {"role": "system", "content": SUMMARY_INTRO + SUMMARY_TEXT}
    contents = [m["content"] for m in last]
    assert turns[0] not in contents, "the summarized turn is not resent"
    assert turns[1] in contents
    assert contents[-1] == turns[2]
    # About four characters per token: the request sent stays inside the 300-token budget.
    assert len(json.dumps(last)) < 300 * 4
    assert metric_value(summarize_sidecar, 'agent_sidecar_context_window_actions_total{action="summarized"}') == 1
    assert metric_value(summarize_sidecar, 'agent_sidecar_summarization_attempts_total{outcome="success"}') >= 1


def overflow_error() -> JsonReply:
    message = "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens."
    return JsonReply(
        {"error": {"message": message, "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}},
        status=400,
    )


def long_history() -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = [{"role": "system", "content": "You track parcels."}]
    for n in range(1, 5):
        history.append({"role": "user", "content": f"Question {n}: where is parcel {n}? " * 5})
        history.append({"role": "assistant", "content": f"Parcel {n} left the warehouse."})
    history.append({"role": "user", "content": "And parcel 5?"})
    return history


def test_overflow_retried_once_compacted(pseudonym_sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    upstream.enqueue(overflow_error(), reply("Parcel 5 is on its way."))
    with sdk_client(pseudonym_sidecar) as client:
        completion = client.chat.completions.create(model=MODEL, messages=long_history())

    assert completion.choices[0].message.content == "Parcel 5 is on its way."
    first, second = upstream.chat_requests()
    assert len(forwarded_messages(second)) < len(forwarded_messages(first))
    assert forwarded_messages(second)[0]["content"] == "You track parcels."
    assert forwarded_messages(second)[-1]["content"] == "And parcel 5?"
    assert metric_value(pseudonym_sidecar, 'agent_sidecar_context_window_actions_total{action="overflow_retried"}') >= 1


def test_overflow_not_retried_twice(pseudonym_sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    upstream.enqueue(overflow_error(), overflow_error(), reply("never sent"))
    with sdk_client(pseudonym_sidecar) as client, pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=long_history(), stream=True)

    assert raised.value.code == "context_length_exceeded"
    assert len(upstream.chat_requests()) == 2
