"""The Anthropic Messages API through the sidecar with the official `anthropic` SDK, without streaming."""

from __future__ import annotations

import json

import anthropic
import pytest

from harness import (
    ANTHROPIC_MODEL,
    BLOCKED_RULE_HEADER,
    CLIENT_API_KEY,
    EMAIL,
    PHONE,
    REFUSAL_TEXT,
    UPSTREAM_API_KEY,
    JsonReply,
    SidecarProcess,
    StubUpstream,
    anthropic_reply_text,
    load_recording,
    send_raw,
    single_messages_request,
)

TOOLS = [
    {
        "name": "delete_user",
        "description": "Delete a user account.",
        "input_schema": {"type": "object", "properties": {"user_id": {"type": "string"}}, "required": ["user_id"]},
    },
    {
        "name": "lookup_customer",
        "description": "Find a customer by email address.",
        "input_schema": {"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]},
    },
]


def post_messages_raw(sidecar: SidecarProcess, body: bytes, path: str = "/v1/messages"):
    headers = {
        "Content-Type": "application/json",
        "x-api-key": CLIENT_API_KEY,
        "anthropic-version": "2023-06-01",
    }
    return send_raw(sidecar.port, "POST", path, body, headers)


def test_user_text_pii_is_redacted(
    anthropic_client: anthropic.Anthropic, upstream: StubUpstream
) -> None:
    upstream.enqueue(anthropic_reply_text("Noted."))
    message = anthropic_client.messages.create(
        model=ANTHROPIC_MODEL,
        max_tokens=256,
        system=f"The account owner is {PHONE}.",
        messages=[{"role": "user", "content": [{"type": "text", "text": f"My email is {EMAIL}, please update it."}]}],
    )
    assert message.content[0].text == "Noted."

    sent = single_messages_request(upstream).body
    assert sent["messages"][0]["content"][0]["text"] == "My email is [EMAIL], please update it."
    assert sent["system"] == "The account owner is [PHONE]."
    assert EMAIL not in json.dumps(sent)


def test_credentials_and_versions_reach_upstream(
    anthropic_client: anthropic.Anthropic, upstream: StubUpstream
) -> None:
    upstream.enqueue(anthropic_reply_text("Hello."))
    anthropic_client.messages.create(
        model=ANTHROPIC_MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "token-efficient-tools-2025-02-19",
            "Connection": "keep-alive, x-hop",
        },
    )
    headers = single_messages_request(upstream).headers
    assert headers.get("x-api-key") == UPSTREAM_API_KEY, "the sidecar's key replaces the client's"
    assert "authorization" not in headers
    assert headers.get("anthropic-version") == "2023-06-01"
    assert headers.get("anthropic-beta") == "token-efficient-tools-2025-02-19"
    assert "x-hop" not in headers, "headers named in Connection are hop-by-hop"


def test_missing_anthropic_version_gets_default(sidecar: SidecarProcess, upstream: StubUpstream) -> None:
    upstream.enqueue(anthropic_reply_text("Hello."))
    body = {"model": ANTHROPIC_MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    response = send_raw(
        sidecar.port, "POST", "/v1/messages", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    assert response.status == 200, response.body
    assert single_messages_request(upstream).headers.get("anthropic-version") == "2023-06-01"


def test_tool_result_pii_is_redacted(
    anthropic_client: anthropic.Anthropic, upstream: StubUpstream
) -> None:
    upstream.enqueue(anthropic_reply_text("Found her."))
    anthropic_client.messages.create(
        model=ANTHROPIC_MODEL,
        max_tokens=256,
        tools=TOOLS[1:],
        messages=[
            {"role": "user", "content": "Who placed order 1042?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup_customer", "input": {"email": EMAIL}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": f"Jane Doe, {EMAIL}"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": f"Phone {PHONE}"}],
                    },
                ],
            },
        ],
    )
    sent = single_messages_request(upstream).body["messages"]
    assert sent[1]["content"][0]["input"] == {"email": "[EMAIL]"}, "tool_use input stays an object"
    assert sent[2]["content"][0]["content"] == "Jane Doe, [EMAIL]"
    assert sent[2]["content"][1]["content"][0]["text"] == "Phone [PHONE]"


def test_response_pii_is_redacted_in_text_and_tool_input(
    anthropic_client: anthropic.Anthropic, upstream: StubUpstream
) -> None:
    upstream.enqueue(JsonReply(load_recording("anthropic_message_tool_use_lookup")))
    text_reply = load_recording("anthropic_message_text")
    text_reply["content"][0]["text"] = f"Write to {EMAIL}."
    upstream.enqueue(JsonReply(text_reply))

    message = anthropic_client.messages.create(
        model=ANTHROPIC_MODEL, max_tokens=256, tools=TOOLS[1:], messages=[{"role": "user", "content": "find Jane"}]
    )
    tool_use = message.content[1]
    assert tool_use.type == "tool_use"
    assert tool_use.input == {"email": "[EMAIL]", "fields": ["name", "orders"]}
    assert message.stop_reason == "tool_use"

    message = anthropic_client.messages.create(
        model=ANTHROPIC_MODEL, max_tokens=256, messages=[{"role": "user", "content": "contact?"}]
    )
    assert message.content[0].text == "Write to [EMAIL]."


def test_denied_topic_is_refused_without_upstream(
    anthropic_client: anthropic.Anthropic, upstream: StubUpstream
) -> None:
    raw = anthropic_client.messages.with_raw_response.create(
        model=ANTHROPIC_MODEL, max_tokens=64, messages=[{"role": "user", "content": "how do I build a bomb"}]
    )
    assert raw.status_code == 200
    assert raw.headers.get(BLOCKED_RULE_HEADER) == "no-weapons"
    message = raw.parse()
    assert message.type == "message"
    assert [block.text for block in message.content] == [REFUSAL_TEXT]
    assert message.stop_reason == "refusal"
    assert upstream.messages_requests() == [], "a blocked request must not reach the upstream"


def test_denied_topic_error_mode(
    anthropic_error_client: anthropic.Anthropic, upstream: StubUpstream
) -> None:
    with pytest.raises(anthropic.PermissionDeniedError) as raised:
        anthropic_error_client.messages.create(
            model=ANTHROPIC_MODEL, max_tokens=64, messages=[{"role": "user", "content": "how do I build a bomb"}]
        )
    body = raised.value.body
    assert isinstance(body, dict), body
    assert body["type"] == "error"
    assert body["error"]["type"] == "permission_error"
    assert "no-weapons" in body["error"]["message"]
    assert upstream.messages_requests() == []


def test_denied_tool_use_in_response_is_refused(
    anthropic_client: anthropic.Anthropic, upstream: StubUpstream
) -> None:
    upstream.enqueue(JsonReply(load_recording("anthropic_message_tool_use_delete")))
    raw = anthropic_client.messages.with_raw_response.create(
        model=ANTHROPIC_MODEL,
        max_tokens=64,
        tools=TOOLS[1:],
        messages=[{"role": "user", "content": "remove account u-1042"}],
    )
    assert raw.headers.get(BLOCKED_RULE_HEADER) == "no-deletes"
    message = raw.parse()
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == REFUSAL_TEXT
    assert message.stop_reason == "refusal"


def test_denied_tool_definition_is_removed(
    anthropic_client: anthropic.Anthropic, upstream: StubUpstream
) -> None:
    upstream.enqueue(anthropic_reply_text("Sure."))
    anthropic_client.messages.create(
        model=ANTHROPIC_MODEL, max_tokens=64, tools=TOOLS, messages=[{"role": "user", "content": "hello"}]
    )
    sent = single_messages_request(upstream).body
    assert [tool["name"] for tool in sent["tools"]] == ["lookup_customer"]


MALFORMED = [
    pytest.param(
        {"model": ANTHROPIC_MODEL, "messages": [{"role": "user", "content": "hi"}]},
        "max_tokens",
        id="missing-max-tokens",
    ),
    pytest.param(
        {"model": ANTHROPIC_MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": 42}]},
        "messages.0.content",
        id="content-not-string-or-list",
    ),
    pytest.param(
        {
            "model": ANTHROPIC_MODEL,
            "max_tokens": 8,
            "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "x", "input": {}}]}],
        },
        "messages.0.content.0.type",
        id="tool-use-in-user-message",
    ),
    pytest.param(
        {"model": ANTHROPIC_MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "picture"}]}]},
        "messages.0.content.0.type",
        id="unknown-block-type",
    ),
    pytest.param(
        {
            "model": ANTHROPIC_MODEL,
            "max_tokens": 8,
            "messages": [{"role": "user", "content": [{"type": "text", "text": ["not", "a", "string"]}]}],
        },
        "messages.0.content.0.text",
        id="text-block-without-string",
    ),
]


@pytest.mark.parametrize(("body", "field"), MALFORMED)
def test_malformed_request_gets_anthropic_400(
    sidecar: SidecarProcess, upstream: StubUpstream, body: dict, field: str
) -> None:
    response = post_messages_raw(sidecar, json.dumps(body).encode())
    assert response.status == 400, response.body
    error = response.json()
    assert error["type"] == "error", error
    assert error["error"]["type"] == "invalid_request_error", error
    assert field in error["error"]["message"], error
    assert upstream.messages_requests() == []


def test_malformed_request_raises_bad_request_in_sdk(anthropic_client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        anthropic_client.messages.create(
            model=ANTHROPIC_MODEL,
            max_tokens=64,
            messages=[{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]}],
        )
    assert raised.value.body["error"]["type"] == "invalid_request_error"


def test_invalid_json_gets_anthropic_400(sidecar: SidecarProcess) -> None:
    response = post_messages_raw(sidecar, b"{not json")
    assert response.status == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_wrong_method_gets_anthropic_405(sidecar: SidecarProcess) -> None:
    response = send_raw(sidecar.port, "GET", "/v1/messages")
    assert response.status == 405
    assert response.json()["type"] == "error"


def test_upstream_error_passes_unchanged(
    anthropic_client: anthropic.Anthropic, upstream: StubUpstream
) -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    # The sidecar retries a 529 once by default (retry.maxAttemptsPerTarget is 2), then
    # passes the last response on.
    for _ in range(2):
        upstream.enqueue(JsonReply(error, status=529))
    with pytest.raises(anthropic.APIStatusError) as raised:
        anthropic_client.messages.create(
            model=ANTHROPIC_MODEL, max_tokens=64, messages=[{"role": "user", "content": "hello"}]
        )
    assert raised.value.status_code == 529
    assert raised.value.body == error


def test_unreachable_upstream_gets_anthropic_502(unreachable_sidecar: SidecarProcess) -> None:
    body = {"model": ANTHROPIC_MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    response = post_messages_raw(unreachable_sidecar, json.dumps(body).encode())
    assert response.status == 502
    assert response.json()["error"]["type"] == "api_error"
