"""Admin endpoints, metrics, and the absence of PII in the sidecars' logs."""

from __future__ import annotations

import json
import re

import openai
import pytest

from harness import (
    CARD_WITH_SPACES,
    EMAIL,
    MODEL,
    PII_VALUES,
    SidecarProcess,
    StubUpstream,
    reply_text,
    send_raw,
    user_message,
)

DECISIONS_METRIC = "agent_sidecar_guardrail_decisions_total"


def test_admin_probes_return_ok(sidecar: SidecarProcess) -> None:
    livez = send_raw(sidecar.admin_port, "GET", "/livez")
    assert livez.status == 200, f"GET /livez returned {livez.status}"

    readyz = send_raw(sidecar.admin_port, "GET", "/readyz")
    assert readyz.status == 200, f"GET /readyz returned {readyz.status}"
    try:
        json.loads(readyz.body)
    except ValueError:
        pytest.fail(f"GET /readyz body is not JSON: {readyz.body[:200]!r}")


def test_metrics_count_redaction_decision(
    sidecar: SidecarProcess, client: openai.OpenAI, upstream: StubUpstream
) -> None:
    upstream.enqueue(reply_text("Noted."))
    client.chat.completions.create(model=MODEL, messages=user_message(f"Please write to {EMAIL}."))

    response = send_raw(sidecar.admin_port, "GET", "/metrics")

    assert response.status == 200, f"GET /metrics returned {response.status}"
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith(("text/plain", "application/openmetrics-text")), f"content-type is {content_type!r}"
    text = response.body.decode()
    samples = [line for line in text.splitlines() if line.startswith(DECISIONS_METRIC + "{")]
    assert samples, f"no {DECISIONS_METRIC} samples in /metrics:\n{text}"
    contact_samples = [line for line in samples if 'rule="contact-details"' in line]
    assert contact_samples, f'no {DECISIONS_METRIC} sample with rule="contact-details":\n' + "\n".join(samples)
    values = [float(re.split(r"\}\s*", line, maxsplit=1)[1].split()[0]) for line in contact_samples]
    assert sum(values) >= 1, f'{DECISIONS_METRIC}{{rule="contact-details"}} values are {values}'


@pytest.mark.run_last
def test_sidecar_logs_contain_no_pii(
    sidecar: SidecarProcess,
    client: openai.OpenAI,
    upstream: StubUpstream,
    started_sidecars: list[SidecarProcess],
) -> None:
    # Send PII both ways so that this test checks something even when it runs alone.
    upstream.enqueue(reply_text(f"I will write to {EMAIL}."))
    client.chat.completions.create(
        model=MODEL, messages=user_message(f"My email is {EMAIL} and my card is {CARD_WITH_SPACES}.")
    )

    for process in started_sidecars:
        for log_path in process.log_paths:
            assert log_path.exists(), f"log file {log_path} of sidecar {process.name!r} is missing"
            log_text = log_path.read_text(encoding="utf-8", errors="replace")
            for value in PII_VALUES:
                assert value not in log_text, f"{value!r} appears in {log_path.name} of sidecar {process.name!r}"

    logged_bytes = sum(path.stat().st_size for path in sidecar.log_paths)
    assert logged_bytes > 0, "the sidecar logged nothing at RUST_LOG=info, so the PII check proved nothing"
