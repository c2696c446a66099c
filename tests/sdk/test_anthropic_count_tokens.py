"""POST /v1/messages/count_tokens, which the sidecar counts itself without calling the upstream."""

from __future__ import annotations

import anthropic
import pytest

from harness import ANTHROPIC_MODEL, StubUpstream

TOOLS = [
    {
        "name": "lookup_customer",
        "description": "Find a customer by email address.",
        "input_schema": {"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]},
    }
]


def test_count_is_local_estimate(anthropic_client: anthropic.Anthropic, upstream: StubUpstream) -> None:
    short = anthropic_client.messages.count_tokens(
        model=ANTHROPIC_MODEL, messages=[{"role": "user", "content": "Hello there."}]
    )
    longer = anthropic_client.messages.count_tokens(
        model=ANTHROPIC_MODEL,
        system="You are a support agent for an online shop.",
        messages=[
            {"role": "user", "content": "Hello there."},
            {"role": "assistant", "content": "Hi! How can I help?"},
            {"role": "user", "content": [{"type": "text", "text": "Where is my order 1042?"}]},
        ],
        tools=TOOLS,
    )
    assert short.input_tokens > 0
    assert longer.input_tokens > short.input_tokens, "system, history and tools add tokens"
    assert upstream.requests == [], "count_tokens is answered without the upstream"


def test_count_tokens_validates_request(anthropic_client: anthropic.Anthropic, upstream: StubUpstream) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        anthropic_client.messages.count_tokens(
            model=ANTHROPIC_MODEL, messages=[{"role": "user", "content": [{"type": "tool_use", "id": "t"}]}]
        )
    body = raised.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "messages.0.content.0.type" in body["error"]["message"]
    assert upstream.requests == []
