"""Metrics as Prometheus sees them: `promtool check metrics` on the sidecar's output, and a
real Prometheus server that scrapes the sidecar and answers queries over its HTTP API.

Both need the Debian `prometheus` package, which `.ci/run` installs. Outside CI the tests
skip when it is missing; with CI=true they fail instead, so CI cannot pass without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from harness import (
    EMAIL,
    MODEL,
    SidecarProcess,
    SseReply,
    StubUpstream,
    free_port,
    load_recording,
    reply_text,
    send_raw,
    user_message,
)

SCRAPE_INTERVAL_SECONDS = 1
PROMETHEUS_START_TIMEOUT_SECONDS = 30.0
QUERY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0


def require_tool(name: str) -> str:
    """Return the path of a Prometheus tool; skip without it, or fail when CI=true."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} not found on PATH; install the Debian package `prometheus` (apt-get install prometheus)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; CI=true requires it, and .ci/run installs it")
    pytest.skip(message)


def send_traffic(client: openai.OpenAI, upstream: StubUpstream) -> None:
    """Send a redacted request, a plain one and a stream, so every metric family has samples."""
    upstream.enqueue(reply_text("Noted."), reply_text("Hello."), SseReply(load_recording("chat_stream_email_split")))
    client.chat.completions.create(model=MODEL, messages=user_message(f"Please write to {EMAIL}."))
    client.chat.completions.create(model=MODEL, messages=user_message("Hello there."))
    stream = client.chat.completions.create(model=MODEL, messages=user_message("Stream please."), stream=True)
    for _ in stream:
        pass


def test_metrics_pass_promtool(sidecar: SidecarProcess, client: openai.OpenAI, upstream: StubUpstream) -> None:
    promtool = require_tool("promtool")
    send_traffic(client, upstream)

    response = send_raw(sidecar.admin_port, "GET", "/metrics")
    assert response.status == 200, f"GET /metrics returned {response.status}"
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4"), response.headers
    text = response.body.decode()
    for family in (
        "agent_sidecar_guardrail_decisions_total",
        "agent_sidecar_guardrail_evaluation_duration_seconds_bucket",
        "gen_ai_client_token_usage_bucket",
        "gen_ai_client_operation_duration_seconds_bucket",
        "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
        "agent_sidecar_store_degraded",
    ):
        assert f"\n{family}" in text, f"no {family} sample in /metrics:\n{text}"

    checked = subprocess.run(
        [promtool, "check", "metrics"], input=response.body, capture_output=True, timeout=30
    )
    assert checked.returncode == 0, (
        f"promtool check metrics exited with {checked.returncode}:\n"
        f"{checked.stdout.decode()}{checked.stderr.decode()}"
    )


def test_openmetrics_on_request(sidecar: SidecarProcess) -> None:
    response = send_raw(
        sidecar.admin_port, "GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )

    assert response.status == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text"), response.headers
    assert response.body.decode().endswith("# EOF\n")


class PrometheusServer:
    """A `prometheus` process on a free loopback port that scrapes one sidecar's admin port."""

    def __init__(self, binary: str, target_port: int, data_dir: Path) -> None:
        self.binary = binary
        self.port = free_port()
        self.data_dir = data_dir
        self.config_path = data_dir / "prometheus.yml"
        self.log_path = data_dir / "prometheus.log"
        self.config_path.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL_SECONDS}s\n"
            "scrape_configs:\n"
            "  - job_name: agent-sidecar\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n",
            encoding="utf-8",
        )
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + PROMETHEUS_START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"prometheus exited with code {self._process.returncode}:\n{self.logs()}")
            try:
                if send_raw(self.port, "GET", "/-/ready", timeout=1.0).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus not ready within {PROMETHEUS_START_TIMEOUT_SECONDS} s:\n{self.logs()}")

    def stop(self) -> None:
        """Send SIGTERM to the server's PID, then SIGKILL if it has not exited in time."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=STOP_TIMEOUT_SECONDS)

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def query(self, expression: str) -> list[dict]:
        """Run an instant query through GET /api/v1/query and return its result vector."""
        path = "/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        response = send_raw(self.port, "GET", path)
        assert response.status == 200, f"query {expression!r} returned {response.status}: {response.body[:500]!r}"
        body = json.loads(response.body)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, expression: str) -> list[dict]:
        """Query until the result is non-empty; fail with the server's log otherwise."""
        deadline = time.monotonic() + QUERY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            result = self.query(expression)
            if result:
                return result
            time.sleep(0.5)
        pytest.fail(f"Prometheus returned no result for {expression!r} within {QUERY_TIMEOUT_SECONDS} s:\n{self.logs()}")


@pytest.fixture
def prometheus(sidecar: SidecarProcess, tmp_path: Path) -> Iterator[PrometheusServer]:
    server = PrometheusServer(require_tool("prometheus"), sidecar.admin_port, tmp_path)
    server.start()
    yield server
    server.stop()


def test_prometheus_scrapes_decisions(
    prometheus: PrometheusServer, client: openai.OpenAI, upstream: StubUpstream
) -> None:
    send_traffic(client, upstream)

    up = prometheus.wait_for('up{job="agent-sidecar"} == 1')
    assert up[0]["metric"]["instance"].startswith("127.0.0.1:"), up

    decisions = prometheus.wait_for(
        'agent_sidecar_guardrail_decisions_total{rule="contact-details",direction="input"} >= 1'
    )
    labels = decisions[0]["metric"]
    assert labels["kind"] == "pii", labels
    assert labels["outcome"] == "redact", labels
    assert labels["policy"] == "e2e-refusal", labels
    assert len(labels["policy_hash"]) == 12, labels

    tokens = prometheus.wait_for('sum by (gen_ai_token_type) (gen_ai_client_token_usage_sum{gen_ai_request_model="gpt-4o-mini"})')
    token_types = {sample["metric"]["gen_ai_token_type"] for sample in tokens}
    assert token_types == {"input", "output"}, tokens
