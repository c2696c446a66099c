"""The sidecar in front of a real OpenAI-compatible model server (llama.cpp).

Opt-in: set AGENT_SIDECAR_REALMODEL_URL to the server's base URL, for example
http://127.0.0.1:18080/v1 after running tests/realmodel/start.sh. The server's answers
are a small base model's, so the checks are about the plumbing: valid responses, guarded
input, a streamed answer that reassembles, and a tool call whose arguments stay JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import openai
import pytest

from conftest import _start_sidecar
from harness import CLIENT_API_KEY, EMAIL, REFUSAL_TEXT, SidecarProcess, send_raw

REALMODEL_URL = os.environ.get("AGENT_SIDECAR_REALMODEL_URL")
MODEL = "gemma-3-270m"

pytestmark = pytest.mark.skipif(
    not REALMODEL_URL, reason="set AGENT_SIDECAR_REALMODEL_URL to run against a real model server"
)


@pytest.fixture(scope="module")
def realmodel_sidecar(
    tmp_path_factory: pytest.TempPathFactory, started_sidecars: list[SidecarProcess]
) -> Iterator[SidecarProcess]:
    assert REALMODEL_URL is not None
    process = _start_sidecar("realmodel", "refusal", REALMODEL_URL, tmp_path_factory, started_sidecars)
    yield process
    process.stop()


@pytest.fixture
def real_client(realmodel_sidecar: SidecarProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=realmodel_sidecar.base_url, api_key=CLIENT_API_KEY, max_retries=0, timeout=120.0
    ) as client:
        yield client


def test_real_model_answers_non_streaming(real_client: openai.OpenAI) -> None:
    completion = real_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"Write one short sentence to {EMAIL}."}],
        max_tokens=24,
        temperature=0,
    )
    choice = completion.choices[0]
    assert isinstance(choice.message.content, str), "content must be text"
    assert choice.finish_reason in ("stop", "length"), choice.finish_reason
    assert completion.usage is not None and completion.usage.prompt_tokens > 0, "usage must be reported"
    assert EMAIL not in choice.message.content, "the model never saw the email, so it cannot repeat it"


def test_real_model_streams_through_guard(real_client: openai.OpenAI) -> None:
    stream = real_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text.strip(), "the streamed answer must reassemble into text"
    assert finish and finish[-1] in ("stop", "length"), finish


def test_real_model_denied_topic_is_refused(real_client: openai.OpenAI) -> None:
    completion = real_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "how do I build a bomb"}],
        max_tokens=8,
    )
    assert completion.choices[0].message.content == REFUSAL_TEXT
    assert completion.choices[0].finish_reason == "content_filter"


def test_real_model_tool_call_arguments_stay_json(real_client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup_customer",
                "description": "Find a customer by email address.",
                "parameters": {
                    "type": "object",
                    "properties": {"email": {"type": "string"}},
                    "required": ["email"],
                },
            },
        }
    ]
    completion = real_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Look up the customer jane.doe@example.com"}],
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "lookup_customer"}},
        max_tokens=48,
        temperature=0,
    )
    calls = completion.choices[0].message.tool_calls or []
    assert calls, "tool_choice forces a call on this server"
    arguments = json.loads(calls[0].function.arguments)
    assert isinstance(arguments, dict), arguments
    assert EMAIL not in calls[0].function.arguments, "email in returned arguments must be redacted"


def test_real_model_streamed_tool_call_arrives_whole(
    real_client: openai.OpenAI, realmodel_sidecar: SidecarProcess
) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup_customer",
                "description": "Find a customer by email address.",
                "parameters": {
                    "type": "object",
                    "properties": {"email": {"type": "string"}},
                    "required": ["email"],
                },
            },
        }
    ]
    stream = real_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Look up the customer jane.doe@example.com"}],
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "lookup_customer"}},
        max_tokens=48,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    deltas = [call for chunk in chunks if chunk.choices for call in (chunk.choices[0].delta.tool_calls or [])]
    assert len(deltas) == 1, f"the call must arrive as one delta, got {len(deltas)}"
    call = deltas[0]
    assert call.function.name == "lookup_customer", f"name is {call.function.name!r}"
    assert isinstance(json.loads(call.function.arguments), dict), call.function.arguments
    assert EMAIL not in call.function.arguments, "email in streamed arguments must be redacted"

    # This server reports no usage in streams, so the sidecar counts the tokens itself.
    metrics = send_raw(realmodel_sidecar.admin_port, "GET", "/metrics").body.decode()
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith("gen_ai_client_token_usage_sum")
        and 'token_source="sidecar"' in line
        and 'gen_ai_token_type="output"' in line
    ]
    assert counted, f"no sidecar-counted output tokens in metrics:\n{metrics}"
    assert float(counted[0].rsplit(" ", 1)[1]) > 0, counted[0]
