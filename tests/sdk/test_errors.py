"""Bad requests and a down upstream get OpenAI-shaped errors, and the sidecar keeps serving."""

from __future__ import annotations

import json

import openai
import pytest

from harness import (
    CLIENT_API_KEY,
    MODEL,
    RawResponse,
    SidecarProcess,
    StubUpstream,
    reply_text,
    send_raw,
    user_message,
)

OVERSIZED_BYTES = 11 * 1024 * 1024  # over the default request body limit of 10 MiB


def oversized_chat_body() -> bytes:
    return json.dumps({"model": MODEL, "messages": user_message("a" * OVERSIZED_BYTES)}).encode()


BAD_REQUESTS = [
    pytest.param(
        "/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": [', 400, "invalid_json", id="malformed-json"
    ),
    pytest.param(
        "/v1/chat/completions",
        json.dumps({"model": MODEL, "messages": "hi"}).encode(),
        400,
        "invalid_request",
        id="messages-string",
    ),
    pytest.param(
        "/v1/chat/completions",
        json.dumps({"model": 5, "messages": user_message("hi")}).encode(),
        400,
        "invalid_request",
        id="model-number",
    ),
    pytest.param("/v1/chat/completions", b"", 400, "invalid_json", id="empty-body"),
    pytest.param("/v1/chat/completions", oversized_chat_body(), 413, "request_too_large", id="oversized-body"),
    pytest.param(
        "/v1/chat/completions",
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "caf\xe9"}]}',
        400,
        "invalid_json",
        id="invalid-utf8",
    ),
    pytest.param(
        "/v1/embeddingz",
        json.dumps({"model": "text-embedding-3-small", "input": "hello"}).encode(),
        404,
        "unknown_path",
        id="unknown-path",
    ),
]


def assert_openai_error(response: RawResponse, status: int, code: str) -> None:
    """Assert that response is an OpenAI-shaped error with the given status and code."""
    assert response.status == status, f"status is {response.status}, body {response.body[:500]!r}"
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith("application/json"), f"content-type is {content_type!r}"
    body = response.json()
    assert isinstance(body.get("error"), dict), f"body has no error object: {body}"
    error = body["error"]
    assert error.get("code") == code, f"error code is {error.get('code')!r}"
    assert isinstance(error.get("message"), str), f"error message is {error.get('message')!r}"
    assert error["message"], "error message is empty"
    assert isinstance(error.get("type"), str), f"error type is {error.get('type')!r}"
    assert "param" in error, f"error has no param field: {error}"


@pytest.mark.parametrize(("path", "body", "status", "code"), BAD_REQUESTS)
def test_bad_request_gets_error_code(
    sidecar: SidecarProcess,
    client: openai.OpenAI,
    upstream: StubUpstream,
    path: str,
    body: bytes,
    status: int,
    code: str,
) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_API_KEY}"}

    response = send_raw(sidecar.port, "POST", path, body, headers, timeout=30.0)

    assert_openai_error(response, status, code)
    assert upstream.requests == [], "the bad request reached the upstream"

    upstream.enqueue(reply_text("Still here."))
    completion = client.chat.completions.create(model=MODEL, messages=user_message("Are you there?"))
    assert completion.choices[0].message.content == "Still here.", "good request after the bad one failed"


def test_unreachable_upstream_gets_502(unreachable_client: openai.OpenAI) -> None:
    for attempt in (1, 2):
        with pytest.raises(openai.InternalServerError) as raised:
            unreachable_client.chat.completions.create(model=MODEL, messages=user_message("Hello"))

        error = raised.value
        assert error.status_code == 502, f"attempt {attempt}: status is {error.status_code}"
        assert error.code == "upstream_unavailable", f"attempt {attempt}: error code is {error.code!r}"
        assert isinstance(error.body, dict), f"attempt {attempt}: error body is {error.body!r}"
        assert "param" in error.body, f"attempt {attempt}: error has no param field: {error.body}"
