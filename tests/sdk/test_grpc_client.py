"""The gRPC API from Python: stubs generated from proto/ with grpcio-tools at test time,
calling CheckInput and CheckAction on a sidecar over a loopback socket."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from grpc_tools import protoc

from harness import EMAIL, REPO_ROOT, SidecarProcess, free_port

PROTO_ROOT = REPO_ROOT / "proto"


def generate_stubs(out_dir: Path) -> None:
    """Compile every .proto under proto/ into Python modules in `out_dir`."""
    well_known = resources.files("grpc_tools") / "_proto"
    files = sorted(str(path.relative_to(PROTO_ROOT)) for path in PROTO_ROOT.rglob("*.proto"))
    exit_code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *files,
        ]
    )
    assert exit_code == 0, f"protoc failed with exit code {exit_code} on {files}"


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ModuleType]]:
    out_dir = tmp_path_factory.mktemp("grpc-stubs")
    generate_stubs(out_dir)
    sys.path.insert(0, str(out_dir))
    try:
        yield {
            name: importlib.import_module(f"agent_sidecar.v1.{name}")
            for name in ("common_pb2", "guardrails_pb2", "guardrails_pb2_grpc")
        }
    finally:
        sys.path.remove(str(out_dir))


@pytest.fixture(scope="module")
def grpc_channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    grpc_port = free_port()
    # Nothing listens on port 9 (discard) on loopback; these calls never reach a model.
    sidecar = SidecarProcess(
        "grpc-client",
        "grpc",
        "http://127.0.0.1:9/v1",
        tmp_path_factory.mktemp("grpc-client"),
        extra_args=("--grpc-listen", f"127.0.0.1:{grpc_port}"),
    )
    sidecar.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield channel
    finally:
        channel.close()
        sidecar.stop()


def test_check_input_redacts_email(stubs: dict[str, ModuleType], grpc_channel: grpc.Channel) -> None:
    guardrails = stubs["guardrails_pb2_grpc"].GuardrailsStub(grpc_channel)
    common = stubs["common_pb2"]
    request = stubs["guardrails_pb2"].CheckInputRequest(text=f"Write to {EMAIL} today")

    response = guardrails.CheckInput(request, timeout=10)

    assert response.verdict == common.VERDICT_TRANSFORM
    assert response.text == "Write to [EMAIL] today"
    assert [finding.rule_id for finding in response.findings] == ["contact-details"]
    assert response.findings[0].entity == "EMAIL"
    assert response.findings[0].span.start == len("Write to ")


def test_check_action_decisions(stubs: dict[str, ModuleType], grpc_channel: grpc.Channel) -> None:
    guardrails = stubs["guardrails_pb2_grpc"].GuardrailsStub(grpc_channel)
    messages = stubs["guardrails_pb2"]
    cases = [
        ("get_weather", '{"city": "Oslo"}', messages.ACTION_DECISION_ALLOW, "actions-default"),
        ("delete_user", '{"id": 7}', messages.ACTION_DECISION_DENY, "no-deletes"),
        ("wire_transfer", '{"amount": 5000}', messages.ACTION_DECISION_ESCALATE, "wire-review"),
    ]
    for tool, arguments, decision, rule in cases:
        request = messages.CheckActionRequest(
            conversation_id="python-client", tool_name=tool, arguments_json=arguments
        )

        response = guardrails.CheckAction(request, timeout=10)

        assert response.decision == decision, tool
        assert response.rule_id == rule, tool


def test_check_action_rejects_invalid_json(stubs: dict[str, ModuleType], grpc_channel: grpc.Channel) -> None:
    guardrails = stubs["guardrails_pb2_grpc"].GuardrailsStub(grpc_channel)
    request = stubs["guardrails_pb2"].CheckActionRequest(
        conversation_id="python-client", tool_name="refund_order", arguments_json="{oops"
    )

    with pytest.raises(grpc.RpcError) as raised:
        guardrails.CheckAction(request, timeout=10)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "arguments_json" in raised.value.details()
