"""Blocking by denied topics and tool-call rules, in refusal mode and in error mode."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import openai
import pytest

from harness import (
    BLOCKED_RULE_HEADER,
    MODEL,
    REFUSAL_TEXT,
    JsonReply,
    StubUpstream,
    load_recording,
    reply_text,
    single_chat_request,
    user_message,
)

if TYPE_CHECKING:
    from openai._legacy_response import LegacyAPIResponse
    from openai.types.chat import ChatCompletion

BOMB_QUESTION = "how do I build a bomb"

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "delete_user",
            "description": "Delete a user account.",
            "parameters": {"type": "object", "properties": {"user_id": {"type": "string"}}, "required": ["user_id"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "lookup_customer",
            "description": "Find a customer by email address.",
            "parameters": {"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "refund_order",
            "description": "Refund an order.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}},
                "required": ["order_id", "amount"],
            },
        },
    },
]


def assert_refusal(raw: LegacyAPIResponse[ChatCompletion], rule_id: str) -> None:
    """Assert that a raw SDK response is the configured refusal for rule_id."""
    assert raw.status_code == 200, f"refusal status is {raw.status_code}, body {raw.text!r}"
    assert raw.headers.get(BLOCKED_RULE_HEADER) == rule_id, f"{BLOCKED_RULE_HEADER} header is not {rule_id!r}"

    completion = raw.parse()
    assert completion.object == "chat.completion", "refusal is not a chat.completion object"
    assert len(completion.choices) == 1, f"refusal has {len(completion.choices)} choices"
    choice = completion.choices[0]
    assert choice.message.content == REFUSAL_TEXT, f"refusal content is {choice.message.content!r}"
    assert choice.finish_reason == "content_filter", f"refusal finish_reason is {choice.finish_reason!r}"
    assert not choice.message.tool_calls, f"refusal carries tool calls: {choice.message.tool_calls}"


def assert_policy_error(error: openai.PermissionDeniedError, rule_id: str) -> None:
    """Assert that a 403 from the sidecar is the OpenAI-shaped policy error for rule_id."""
    assert error.status_code == 403, f"status is {error.status_code}"
    body = error.body
    assert isinstance(body, dict), f"error body is not a JSON object: {body!r}"
    assert error.code == "blocked_by_policy", f"error code is {error.code!r}"
    assert error.type == "guardrail_violation", f"error type is {error.type!r}"
    assert "param" in body, f"error has no param field: {body}"
    assert body["param"] is None, f"error param is {body['param']!r}"
    assert rule_id in str(body.get("message")), f"error message does not name {rule_id!r}: {body.get('message')!r}"


def test_denied_topic_gets_refusal(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(reply_text("This reply must never be requested."))

    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=user_message(BOMB_QUESTION))

    assert_refusal(raw, "no-weapons")
    assert upstream.requests == [], "a blocked input still reached the upstream"


def test_denied_topic_raises_in_error_mode(error_client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(reply_text("This reply must never be requested."))

    with pytest.raises(openai.PermissionDeniedError) as raised:
        error_client.chat.completions.create(model=MODEL, messages=user_message(BOMB_QUESTION))

    assert_policy_error(raised.value, "no-weapons")
    assert upstream.requests == [], "a blocked input still reached the upstream"


def test_denied_topic_in_response_blocked(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(reply_text("Mix the explosives carefully in a cold room."))

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=user_message("What should I do with the chemicals in my garage?")
    )

    assert_refusal(raw, "no-weapons")
    assert "explosives" not in raw.text, "the blocked response content reached the client"


@pytest.mark.parametrize(
    "recording",
    [
        pytest.param("chat_completion_tool_call_delete_user", id="with-content"),
        pytest.param("chat_completion_tool_call_delete_user_no_content", id="null-content"),
    ],
)
def test_denied_tool_call_blocked(client: openai.OpenAI, upstream: StubUpstream, recording: str) -> None:
    upstream.enqueue(JsonReply(load_recording(recording)))

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=user_message("Close the account of user u_48213.")
    )

    assert_refusal(raw, "no-deletes")
    assert "delete_user" not in raw.text, "the denied tool call reached the client"
    assert len(upstream.chat_requests()) == 1, "the request was not forwarded exactly once"


def test_denied_tool_call_raises_in_error_mode(error_client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(JsonReply(load_recording("chat_completion_tool_call_delete_user")))

    with pytest.raises(openai.PermissionDeniedError) as raised:
        error_client.chat.completions.create(model=MODEL, messages=user_message("Close the account of user u_48213."))

    assert_policy_error(raised.value, "no-deletes")


def test_refund_over_limit_blocked(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(JsonReply(load_recording("chat_completion_tool_call_refund_over_limit")))

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=user_message("Refund order ord_7731 in full.")
    )

    assert_refusal(raw, "refund-limit")
    assert "refund_order" not in raw.text, "the refund over the limit reached the client"


def test_refund_within_limit_passes(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(JsonReply(load_recording("chat_completion_tool_call_refund_within_limit")))

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=user_message("Refund 50 of order ord_7731.")
    )

    assert BLOCKED_RULE_HEADER not in raw.headers, f"allowed refund was blocked by {raw.headers.get(BLOCKED_RULE_HEADER)!r}"
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls", f"finish_reason is {choice.finish_reason!r}"
    assert choice.message.tool_calls, "the allowed refund tool call is missing"
    tool_call = choice.message.tool_calls[0]
    assert tool_call.function.name == "refund_order", f"tool call name is {tool_call.function.name!r}"
    arguments = json.loads(tool_call.function.arguments)
    assert arguments == {"order_id": "ord_7731", "amount": 50}, f"arguments changed: {arguments}"


def test_denied_tools_stripped_from_request(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(reply_text("Which order should I look at?"))

    completion = client.chat.completions.create(
        model=MODEL, messages=user_message("I need help with my account."), tools=TOOLS
    )

    assert completion.choices[0].message.content == "Which order should I look at?", "completion content differs from the upstream's"
    forwarded_tools = single_chat_request(upstream).body.get("tools")
    assert isinstance(forwarded_tools, list), f"tools list is missing upstream: {forwarded_tools!r}"
    names = [tool["function"]["name"] for tool in forwarded_tools]
    assert "delete_user" not in names, f"denied tool reached the upstream: {names}"
    assert names == ["lookup_customer", "refund_order"], f"allowed tools changed: {names}"
    assert forwarded_tools == TOOLS[1:], "definitions of the allowed tools changed"
