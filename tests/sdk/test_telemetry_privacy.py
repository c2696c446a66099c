"""Seeded PII and secrets, sent with debug logging switched on through the admin port,
appear in none of the sidecar's logs, metrics or exported spans."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import openai
import pytest

from harness import (
    CARD_WITH_SPACES,
    CLIENT_API_KEY,
    EMAIL,
    IBAN,
    MODEL,
    PHONE,
    SidecarProcess,
    SseReply,
    StubUpstream,
    load_recording,
    reply_text,
    send_raw,
    user_message,
)
from otlp import OtlpCollector

AWS_ACCESS_KEY_ID = "AKIAZ3MHQW7RT5VJ2KPL"
GITHUB_TOKEN = "ghp_R8x2Lm4Qw9Zt6Yp1Vb3Nc7Hd5Kf0Js2Ga8Ue"
REPLY_EMAIL = "carol.lee@example.net"
SEEDED_VALUES = (
    EMAIL,
    CARD_WITH_SPACES,
    "4111111111111111",
    IBAN,
    PHONE,
    AWS_ACCESS_KEY_ID,
    GITHUB_TOKEN,
    REPLY_EMAIL,
)
SPANS_EXPECTED = 3
SPAN_WAIT_SECONDS = 15.0


@pytest.fixture(scope="module")
def privacy_collector() -> Iterator[OtlpCollector]:
    server = OtlpCollector()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def privacy_sidecar(
    privacy_collector: OtlpCollector,
    stub_server: StubUpstream,
    tmp_path_factory: pytest.TempPathFactory,
    started_sidecars: list[SidecarProcess],
) -> Iterator[SidecarProcess]:
    process = SidecarProcess(
        "privacy",
        "refusal",
        stub_server.base_url,
        tmp_path_factory.mktemp("privacy"),
        extra_env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": privacy_collector.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    started_sidecars.append(process)
    process.start()
    yield process
    process.stop()


def test_debug_level_set_at_runtime(privacy_sidecar: SidecarProcess) -> None:
    assert send_raw(privacy_sidecar.admin_port, "GET", "/loglevel").body.decode().strip() == "info"

    changed = send_raw(privacy_sidecar.admin_port, "PUT", "/loglevel", body=b"debug")

    assert changed.status == 200, changed.body
    assert json.loads(changed.body) == {"previous": "info", "current": "debug"}
    assert send_raw(privacy_sidecar.admin_port, "GET", "/loglevel").body.decode().strip() == "debug"


def test_invalid_log_level_rejected(privacy_sidecar: SidecarProcess) -> None:
    before = send_raw(privacy_sidecar.admin_port, "GET", "/loglevel").body

    rejected = send_raw(privacy_sidecar.admin_port, "PUT", "/loglevel", body=b"info,agent_sidecar=[loud")

    assert rejected.status == 400
    assert "invalid log filter" in json.loads(rejected.body)["error"]
    assert send_raw(privacy_sidecar.admin_port, "GET", "/loglevel").body == before


def test_seeded_values_absent_everywhere(
    privacy_sidecar: SidecarProcess, privacy_collector: OtlpCollector, upstream: StubUpstream
) -> None:
    assert send_raw(privacy_sidecar.admin_port, "PUT", "/loglevel", body=b"debug").status == 200
    client = openai.OpenAI(base_url=privacy_sidecar.base_url, api_key=CLIENT_API_KEY, max_retries=0, timeout=10.0)
    upstream.enqueue(
        reply_text(f"I will write to {REPLY_EMAIL} with token {GITHUB_TOKEN}."),
        SseReply(load_recording("chat_stream_email_split")),
    )

    client.chat.completions.create(
        model=MODEL,
        messages=user_message(
            f"Mail {EMAIL}, call {PHONE}, card {CARD_WITH_SPACES}, IBAN {IBAN}."
        ),
        extra_headers={"x-agent-conversation-id": "privacy-1"},
    )
    blocked = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=user_message(f"My key is {AWS_ACCESS_KEY_ID}.")
    )
    assert blocked.headers.get("x-agent-sidecar-blocked-rule") == "credentials"
    for _ in client.chat.completions.create(model=MODEL, messages=user_message(f"Stream to {EMAIL}."), stream=True):
        pass

    deadline = time.monotonic() + SPAN_WAIT_SECONDS
    while sum(span.name == "POST /v1/chat/completions" for span in privacy_collector.spans) < SPANS_EXPECTED:
        assert time.monotonic() < deadline, f"only {len(privacy_collector.spans)} spans arrived"
        time.sleep(0.05)
    metrics = send_raw(privacy_sidecar.admin_port, "GET", "/metrics").body
    openmetrics = send_raw(
        privacy_sidecar.admin_port, "GET", "/metrics", headers={"Accept": "application/openmetrics-text"}
    ).body
    privacy_sidecar.stop()
    logs = privacy_sidecar.stdout_path.read_bytes() + privacy_sidecar.stderr_path.read_bytes()
    spans = privacy_collector.raw_bodies

    # The checks below must have material to search: debug lines, guardrail spans, samples.
    assert b"DEBUG" in logs, "debug logging did not take effect"
    assert b"guardrails evaluated" in logs, "the guardrail debug line is missing"
    assert b"request finished" in logs, "the per-request info line is missing"
    assert any(span.name == "guardrail input" for span in privacy_collector.spans), "no guardrail span arrived"
    assert b"agent_sidecar_guardrail_decisions_total" in metrics
    for value in SEEDED_VALUES:
        encoded = value.encode()
        assert encoded not in logs, f"{value!r} appears in the sidecar's logs"
        assert encoded not in metrics, f"{value!r} appears in /metrics"
        assert encoded not in openmetrics, f"{value!r} appears in /metrics (OpenMetrics)"
        assert encoded not in spans, f"{value!r} appears in the exported spans"
