"""PII redaction on the way to the upstream and on the way back to the client."""

from __future__ import annotations

import json

import openai
import pytest

from harness import (
    CARD_WITH_DASHES,
    CARD_WITH_SPACES,
    EMAIL,
    IBAN,
    MODEL,
    JsonReply,
    StubUpstream,
    forwarded_messages,
    load_recording,
    reply_text,
    single_chat_request,
    user_message,
)


def forwarded_user_text(upstream: StubUpstream) -> str:
    """Return the content of the last message in the single chat request that the upstream received."""
    messages = forwarded_messages(single_chat_request(upstream))
    content = messages[-1].get("content")
    assert isinstance(content, str), f"forwarded message content is not a string: {messages[-1]}"
    return content


def test_email_and_card_redacted_upstream(client: openai.OpenAI, upstream: StubUpstream) -> None:
    recording = load_recording("chat_completion_text")
    upstream.enqueue(JsonReply(recording))

    completion = client.chat.completions.create(
        model=MODEL,
        messages=user_message(f"My email is {EMAIL} and my card is {CARD_WITH_SPACES}, please update my account."),
    )

    forwarded = forwarded_user_text(upstream)
    assert "[EMAIL]" in forwarded, f"no [EMAIL] placeholder in {forwarded!r}"
    assert "[CREDIT_CARD]" in forwarded, f"no [CREDIT_CARD] placeholder in {forwarded!r}"
    assert EMAIL not in forwarded, f"email reached the upstream: {forwarded!r}"
    assert CARD_WITH_SPACES not in forwarded, f"card number reached the upstream: {forwarded!r}"
    assert "4111" not in forwarded, f"part of the card number reached the upstream: {forwarded!r}"
    assert "update my account" in forwarded, f"text around the PII was lost: {forwarded!r}"

    expected_content = recording["choices"][0]["message"]["content"]
    assert completion.id == recording["id"], "completion id differs from the upstream's"
    assert completion.choices[0].message.content == expected_content, "completion content differs from the upstream's"
    assert completion.choices[0].finish_reason == "stop", "finish_reason differs from the upstream's"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("Order 1234-5678-1234-5678 is delayed.", id="luhn-invalid-card"),
        pytest.param("Event at 1548138160707 failed.", id="epoch-millis"),
        pytest.param("Trace 110bcd25-a55d-453a-8046-1297901ea002 has an error.", id="uuid"),
    ],
)
def test_non_pii_numbers_forwarded_unchanged(client: openai.OpenAI, upstream: StubUpstream, text: str) -> None:
    upstream.enqueue(reply_text("Noted."))

    client.chat.completions.create(model=MODEL, messages=user_message(text))

    assert forwarded_user_text(upstream) == text, "text without PII was changed on the way to the upstream"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(f"ref 99 {CARD_WITH_DASHES} 2", "ref 99 [CREDIT_CARD] 2", id="card-between-numbers"),
        pytest.param(f"{IBAN} ALL CAPS", "[IBAN] ALL CAPS", id="iban-before-capitals"),
    ],
)
def test_pii_replaced_by_placeholder_exactly(
    client: openai.OpenAI, upstream: StubUpstream, text: str, expected: str
) -> None:
    upstream.enqueue(reply_text("Noted."))

    client.chat.completions.create(model=MODEL, messages=user_message(text))

    assert forwarded_user_text(upstream) == expected, "placeholder does not replace exactly the PII value"


def test_system_and_content_parts_redacted(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(reply_text("Noted."))

    client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": f"Escalations go to {EMAIL}."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Please charge my card."},
                    {"type": "text", "text": f"It is {CARD_WITH_SPACES}."},
                ],
            },
        ],
    )

    messages = forwarded_messages(single_chat_request(upstream))
    assert messages[0]["content"] == "Escalations go to [EMAIL].", "system message was not redacted"
    parts = messages[1]["content"]
    assert isinstance(parts, list), f"content-part array was not forwarded as an array: {parts!r}"
    assert parts[0] == {"type": "text", "text": "Please charge my card."}, "text part without PII was changed"
    assert parts[1] == {"type": "text", "text": "It is [CREDIT_CARD]."}, "text part with a card was not redacted"


def test_tool_call_arguments_redacted_in_response(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(JsonReply(load_recording("chat_completion_tool_call_lookup_email")))

    completion = client.chat.completions.create(
        model=MODEL,
        messages=user_message("Find the customer who wrote to us yesterday."),
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", "redaction changed the finish_reason"
    assert choice.message.tool_calls, "the redacted tool call is missing from the response"
    tool_call = choice.message.tool_calls[0]
    assert tool_call.function.name == "lookup_customer", "tool call name changed"
    arguments_text = tool_call.function.arguments
    assert EMAIL not in arguments_text, f"email reached the client in tool-call arguments: {arguments_text!r}"
    arguments = json.loads(arguments_text)
    assert arguments == {"email": "[EMAIL]"}, f"arguments are not the redacted JSON object: {arguments_text!r}"


def test_tool_result_redacted_before_upstream(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(reply_text("I found Jane's account."))

    client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "Look up the customer for order ord_7731."},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_Lp9wRs4yM3qX2nKt8jVe5cHf",
                        "type": "function",
                        "function": {"name": "lookup_customer", "arguments": json.dumps({"email": EMAIL})},
                    }
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "call_Lp9wRs4yM3qX2nKt8jVe5cHf",
                "content": f"Customer: Jane Doe, email {EMAIL}, card {CARD_WITH_SPACES}",
            },
        ],
    )

    request = single_chat_request(upstream)
    assert EMAIL not in request.raw_body.decode(), "email reached the upstream"
    assert CARD_WITH_SPACES not in request.raw_body.decode(), "card number reached the upstream"

    messages = forwarded_messages(request)
    tool_result = messages[2]["content"]
    assert tool_result == "Customer: Jane Doe, email [EMAIL], card [CREDIT_CARD]", "tool result was not redacted"
    arguments_text = messages[1]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments_text) == {"email": "[EMAIL]"}, f"assistant tool-call arguments: {arguments_text!r}"


def test_email_in_response_redacted(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(reply_text(f"You can reach Jane at {EMAIL} until Friday."))

    completion = client.chat.completions.create(model=MODEL, messages=user_message("How can I reach Jane?"))

    content = completion.choices[0].message.content
    assert content == "You can reach Jane at [EMAIL] until Friday.", f"response content was not redacted: {content!r}"
    assert completion.choices[0].finish_reason == "stop", "redaction changed the finish_reason"


def test_verdict_header_reads_transform_when_only_input_changed(
    client: openai.OpenAI, upstream: StubUpstream
) -> None:
    upstream.enqueue(JsonReply(load_recording("chat_completion_text")))

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=user_message(f"My email is {EMAIL}, where is my order?"),
    )

    assert raw.headers.get("x-agent-sidecar-verdict") == "transform", dict(raw.headers)
    assert "[EMAIL]" in forwarded_user_text(upstream)


def test_verdict_header_reads_allow_when_nothing_changed(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(JsonReply(load_recording("chat_completion_text")))

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=user_message("Where is my order?"),
    )

    assert raw.headers.get("x-agent-sidecar-verdict") == "allow", dict(raw.headers)
