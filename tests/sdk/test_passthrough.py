"""What the sidecar forwards unchanged, and the credentials it forwards with it."""

from __future__ import annotations

import openai

from harness import (
    CLIENT_API_KEY,
    MODEL,
    UPSTREAM_API_KEY,
    StubUpstream,
    forwarded_messages,
    reply_text,
    single_chat_request,
    user_message,
)


def test_special_token_text_forwarded_unchanged(client: openai.OpenAI, upstream: StubUpstream) -> None:
    text = "Why does my log contain <|endoftext|> after every answer?"
    upstream.enqueue(reply_text("It marks the end of a document."))

    completion = client.chat.completions.create(model=MODEL, messages=user_message(text))

    assert completion.choices[0].message.content == "It marks the end of a document.", "completion content differs from the upstream's"
    forwarded = forwarded_messages(single_chat_request(upstream))
    assert forwarded[0]["content"] == text, f"text was changed on the way: {forwarded[0]['content']!r}"


def test_upstream_gets_sidecar_api_key(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(reply_text("Hello!"))

    client.chat.completions.create(model=MODEL, messages=user_message("Hello"))

    headers = single_chat_request(upstream).headers
    authorization = headers.get("authorization")
    assert authorization == f"Bearer {UPSTREAM_API_KEY}", f"upstream Authorization is {authorization!r}"
    for name, value in headers.items():
        assert CLIENT_API_KEY not in value, f"client key reached the upstream in header {name!r}"


def test_unknown_request_fields_forwarded(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(reply_text("Hello!"))

    client.chat.completions.create(
        model=MODEL,
        messages=user_message("Hello"),
        extra_body={"custom_field": {"a": 1}},
    )

    body = single_chat_request(upstream).body
    assert "custom_field" in body, f"custom_field is missing upstream: {body}"
    assert body["custom_field"] == {"a": 1}, f"custom_field changed: {body['custom_field']!r}"
    assert body.get("model") == MODEL, f"model changed: {body.get('model')!r}"


def test_conversation_id_header_accepted(client: openai.OpenAI, upstream: StubUpstream) -> None:
    upstream.enqueue(reply_text("Hello again!"))

    completion = client.chat.completions.create(
        model=MODEL,
        messages=user_message("Hello"),
        extra_headers={"x-agent-conversation-id": "conv-5f2c9a"},
    )

    assert completion.choices[0].message.content == "Hello again!", "completion content differs from the upstream's"
    assert len(upstream.chat_requests()) == 1, "the request was not forwarded exactly once"


def test_models_list_passes_through(client: openai.OpenAI, upstream: StubUpstream) -> None:
    models = client.models.list()

    ids = [model.id for model in models.data]
    expected_ids = [model["id"] for model in upstream.models["data"]]
    assert ids == expected_ids, f"model ids are {ids}"
    model_requests = [request for request in upstream.requests if request.path == "/v1/models"]
    assert len(model_requests) == 1, f"upstream got {len(model_requests)} GET /v1/models requests"
    assert model_requests[0].method == "GET", f"upstream got {model_requests[0].method} /v1/models"
    authorization = model_requests[0].headers.get("authorization")
    assert authorization == f"Bearer {UPSTREAM_API_KEY}", f"upstream Authorization is {authorization!r}"
