"""Policy hot reload: a sidecar watching a ConfigMap-style directory keeps its last valid
policy when an invalid one is written and enforces a valid change without a restart."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest

from harness import (
    BLOCKED_RULE_HEADER,
    CLIENT_API_KEY,
    MODEL,
    SidecarProcess,
    StubUpstream,
    reply_text,
    send_raw,
    user_message,
)

RELOAD_INTERVAL_MS = 100
RELOAD_TIMEOUT_SECONDS = 10.0
REJECTED_LOG_MESSAGE = "policy reload rejected"

POLICY_TEMPLATE = """\
apiVersion: agent-sidecar.io/v1alpha1
kind: GuardrailPolicy
metadata:
  name: {name}
spec:
  onBlock:
    response: refusal
    refusal: "Sorry, I can't help with that."
  topics:
    - id: {rule}
      phrases: ["{phrase}"]
"""

# Two problems, so the test can check that the log reports every one of them.
INVALID_POLICY = """\
apiVersion: agent-sidecar.io/v1alpha1
kind: GuardrailPolicy
metadata:
  name: broken
spec:
  topics:
    - id: bad-pattern
      patterns: ['(unclosed']
  pii:
    - id: bad-entity
      entities: [NOT_AN_ENTITY]
"""


class ConfigMapDirectory:
    """A directory laid out like a Kubernetes ConfigMap volume.

    Each version is a hidden directory; `..data` is a symlink to the current one, and
    `policy.yaml` is a symlink through `..data`. A new version is published by renaming a
    fresh symlink over `..data`, which is atomic, as the kubelet does.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._versions = 0

    def publish(self, text: str) -> None:
        self._versions += 1
        version = self.root / f"..version_{self._versions}"
        version.mkdir()
        (version / "policy.yaml").write_text(text, encoding="utf-8")
        staging = self.root / "..data_tmp"
        os.symlink(version.name, staging)
        os.replace(staging, self.root / "..data")
        link = self.root / "policy.yaml"
        if not link.is_symlink():
            os.symlink("..data/policy.yaml", link)


def readyz(sidecar: SidecarProcess) -> tuple[int, dict]:
    response = send_raw(sidecar.admin_port, "GET", "/readyz")
    return response.status, json.loads(response.body)


def wait_for_policy(sidecar: SidecarProcess, condition: Callable[[dict], bool], what: str) -> dict:
    """Poll /readyz until condition holds for its policy check; return that check."""
    deadline = time.monotonic() + RELOAD_TIMEOUT_SECONDS
    policy: dict = {}
    while time.monotonic() < deadline:
        _, body = readyz(sidecar)
        policy = body["checks"]["policy"]
        if condition(policy):
            return policy
        time.sleep(0.05)
    pytest.fail(f"/readyz never showed {what} within {RELOAD_TIMEOUT_SECONDS} s; last policy check: {policy}")


def reload_count(sidecar: SidecarProcess, outcome: str) -> float:
    text = send_raw(sidecar.admin_port, "GET", "/metrics").body.decode()
    prefix = f'agent_sidecar_policy_reloads_total{{outcome="{outcome}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


def blocked_rule(client: openai.OpenAI, text: str) -> str | None:
    response = client.chat.completions.with_raw_response.create(model=MODEL, messages=user_message(text))
    return response.headers.get(BLOCKED_RULE_HEADER)


@pytest.fixture
def policy_dir(tmp_path: Path) -> ConfigMapDirectory:
    root = tmp_path / "policy"
    root.mkdir()
    directory = ConfigMapDirectory(root)
    directory.publish(POLICY_TEMPLATE.format(name="reload-first", rule="no-alpha", phrase="alpha plan"))
    return directory


@pytest.fixture
def reloading_sidecar(
    policy_dir: ConfigMapDirectory,
    stub_server: StubUpstream,
    tmp_path: Path,
    started_sidecars: list[SidecarProcess],
) -> Iterator[SidecarProcess]:
    process = SidecarProcess(
        "reload",
        "refusal",
        stub_server.base_url,
        tmp_path,
        extra_args=("--policy-reload-interval-ms", str(RELOAD_INTERVAL_MS)),
    )
    process.policy_path = str(policy_dir.root)
    started_sidecars.append(process)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def reload_client(reloading_sidecar: SidecarProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=reloading_sidecar.base_url, api_key=CLIENT_API_KEY, max_retries=0, timeout=10.0
    ) as sdk_client:
        yield sdk_client


def test_invalid_policy_keeps_last_valid(
    reloading_sidecar: SidecarProcess,
    reload_client: openai.OpenAI,
    policy_dir: ConfigMapDirectory,
    upstream: StubUpstream,
) -> None:
    first = wait_for_policy(reloading_sidecar, lambda p: p["name"] == "reload-first", "the first policy")
    assert blocked_rule(reload_client, "Tell me the alpha plan.") == "no-alpha"

    policy_dir.publish(INVALID_POLICY)

    failed = wait_for_policy(reloading_sidecar, lambda p: p["status"] == "reload_failed", "the failed reload")
    assert failed["name"] == "reload-first", f"the enforced policy changed: {failed}"
    assert failed["hash"] == first["hash"], f"the enforced policy changed: {failed}"
    assert len(failed["reload"]["errors"]) == 2, f"expected both problems: {failed['reload']}"
    status, _ = readyz(reloading_sidecar)
    assert status == 200, "a rejected reload must not make the pod unready"
    assert reload_count(reloading_sidecar, "failure") == 1
    assert blocked_rule(reload_client, "Tell me the alpha plan.") == "no-alpha", "the last valid policy stopped blocking"
    assert upstream.chat_requests() == [], "a blocked request reached the upstream"

    # Several more polls of the same invalid files must not log the rejection again.
    time.sleep(5 * RELOAD_INTERVAL_MS / 1000)
    log = reloading_sidecar.stderr_path.read_text(encoding="utf-8")
    assert log.count(REJECTED_LOG_MESSAGE) == 1, f"rejection logged {log.count(REJECTED_LOG_MESSAGE)} times:\n{log}"
    rejection = next(line for line in log.splitlines() if REJECTED_LOG_MESSAGE in line)
    assert "spec.topics[0].patterns[0]" in rejection, f"the pattern problem is not in the log line:\n{rejection}"
    assert "spec.pii[0]" in rejection, f"the PII rule problem is not in the log line:\n{rejection}"


def test_valid_change_applies_without_restart(
    reloading_sidecar: SidecarProcess,
    reload_client: openai.OpenAI,
    policy_dir: ConfigMapDirectory,
    upstream: StubUpstream,
) -> None:
    wait_for_policy(reloading_sidecar, lambda p: p["name"] == "reload-first", "the first policy")
    policy_dir.publish(INVALID_POLICY)
    wait_for_policy(reloading_sidecar, lambda p: p["status"] == "reload_failed", "the failed reload")

    policy_dir.publish(POLICY_TEMPLATE.format(name="reload-second", rule="no-beta", phrase="beta plan"))

    second = wait_for_policy(reloading_sidecar, lambda p: p["name"] == "reload-second", "the second policy")
    assert second["status"] == "ok", f"the rejection was not cleared: {second}"
    assert reload_count(reloading_sidecar, "success") == 1
    assert blocked_rule(reload_client, "Tell me the beta plan.") == "no-beta", "the new policy does not block"
    upstream.enqueue(reply_text("Here is the alpha plan."))
    assert blocked_rule(reload_client, "Tell me the alpha plan.") is None, "the old policy still blocks"
    assert len(upstream.chat_requests()) == 1, "the allowed request did not reach the upstream"
    assert reloading_sidecar._process is not None and reloading_sidecar._process.poll() is None
