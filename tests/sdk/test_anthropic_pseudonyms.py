"""Pseudonyms on the Anthropic Messages API: placeholders upstream, original values restored for the agent."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import anthropic
import pytest

from harness import (
    ANTHROPIC_MODEL,
    CLIENT_API_KEY,
    EMAIL,
    PHONE,
    AnthropicSseReply,
    JsonReply,
    SidecarProcess,
    StubUpstream,
    load_recording,
    single_messages_request,
)

VAULT_KEY = "anthropic-e2e-vault-key-0123456789abcdef"


@pytest.fixture(scope="module")
def pseudonym_sidecar(
    stub_server: StubUpstream, tmp_path_factory: pytest.TempPathFactory, started_sidecars: list[SidecarProcess]
) -> Iterator[SidecarProcess]:
    process = SidecarProcess(
        "anthropic-pseudonymize",
        "pseudonymize",
        stub_server.base_url,
        tmp_path_factory.mktemp("anthropic-pseudonymize"),
        extra_env={"AGENT_SIDECAR_VAULT_KEY": VAULT_KEY},
    )
    started_sidecars.append(process)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def pseudonym_client(pseudonym_sidecar: SidecarProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=pseudonym_sidecar.anthropic_base_url, api_key=CLIENT_API_KEY, max_retries=0, timeout=10.0
    ) as client:
        yield client


def conversation_header() -> dict[str, str]:
    return {"x-agent-conversation-id": f"e2e-{uuid.uuid4()}"}


def test_pseudonyms_restored_in_message(pseudonym_client: anthropic.Anthropic, upstream: StubUpstream) -> None:
    reply = load_recording("anthropic_message_tool_use_lookup")
    reply["content"][0]["text"] = "I will mail <EMAIL_1> and call <PHONE_1>; <EMAIL_7> is unknown."
    reply["content"][1]["input"] = {"email": "<EMAIL_1>", "fields": ["<PHONE_1>"]}
    upstream.enqueue(JsonReply(reply))

    message = pseudonym_client.messages.create(
        model=ANTHROPIC_MODEL,
        max_tokens=128,
        messages=[{"role": "user", "content": f"Mail me at {EMAIL} or call {PHONE}."}],
        extra_headers=conversation_header(),
    )

    sent = single_messages_request(upstream).body
    assert sent["messages"][0]["content"] == "Mail me at <EMAIL_1> or call <PHONE_1>."
    assert EMAIL not in json.dumps(sent)
    assert message.content[0].text == f"I will mail {EMAIL} and call {PHONE}; <EMAIL_7> is unknown."
    assert message.content[1].input == {"email": EMAIL, "fields": [PHONE]}


def test_pseudonyms_restored_in_stream(pseudonym_client: anthropic.Anthropic, upstream: StubUpstream) -> None:
    events = load_recording("anthropic_stream_email_split")
    text_deltas = [event for event in events if event["type"] == "content_block_delta"]
    for event, text in zip(text_deltas, ["Noted <EMA", "IL_1> and <PH", "ONE_1>", "."], strict=True):
        event["delta"]["text"] = text
    tool = load_recording("anthropic_stream_tool_use_delete")
    tool_events = [event for event in tool if event.get("index") == 1]
    tool_events[0]["content_block"]["name"] = "send_mail"
    fragments = ["", '{"to": "<EMA', 'IL_1>"}', ""]
    for event, fragment in zip(tool_events[1:-1], fragments, strict=True):
        event["delta"]["partial_json"] = fragment
    upstream.enqueue(AnthropicSseReply(events[:-2] + tool_events + tool[-2:]))

    with pseudonym_client.messages.stream(
        model=ANTHROPIC_MODEL,
        max_tokens=128,
        messages=[{"role": "user", "content": f"I am {EMAIL}, phone {PHONE}."}],
        extra_headers=conversation_header(),
    ) as stream:
        final = stream.get_final_message()

    assert final.content[0].text == f"Noted {EMAIL} and {PHONE}."
    assert final.content[1].type == "tool_use"
    assert final.content[1].input == {"to": EMAIL}
