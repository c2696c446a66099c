"""Fixtures: one stub upstream and sidecars in front of it, each on its own loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from harness import CLIENT_API_KEY, SidecarProcess, StubUpstream, free_port


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "run_last: run after every other test, to inspect what the whole session left behind"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The sort is stable, so the other tests keep their order.
    items.sort(key=lambda item: item.get_closest_marker("run_last") is not None)


@pytest.fixture(scope="session")
def stub_server() -> Iterator[StubUpstream]:
    stub = StubUpstream()
    stub.start()
    yield stub
    stub.stop()


@pytest.fixture
def upstream(stub_server: StubUpstream) -> Iterator[StubUpstream]:
    """The shared stub upstream, with no recorded requests and no queued replies."""
    stub_server.reset()
    yield stub_server
    stub_server.reset()


@pytest.fixture(scope="session")
def started_sidecars() -> list[SidecarProcess]:
    """Every sidecar that this session started, so that a test can read all of their logs."""
    return []


def _start_sidecar(
    name: str,
    policy: str,
    upstream_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    started_sidecars: list[SidecarProcess],
) -> SidecarProcess:
    sidecar = SidecarProcess(name, policy, upstream_url, tmp_path_factory.mktemp(name))
    started_sidecars.append(sidecar)
    sidecar.start()
    return sidecar


@pytest.fixture(scope="session")
def sidecar(
    stub_server: StubUpstream,
    tmp_path_factory: pytest.TempPathFactory,
    started_sidecars: list[SidecarProcess],
) -> Iterator[SidecarProcess]:
    """A sidecar with the refusal-mode policy in front of the stub upstream."""
    process = _start_sidecar("refusal", "refusal", stub_server.base_url, tmp_path_factory, started_sidecars)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def error_sidecar(
    stub_server: StubUpstream,
    tmp_path_factory: pytest.TempPathFactory,
    started_sidecars: list[SidecarProcess],
) -> Iterator[SidecarProcess]:
    """A sidecar with the error-mode policy in front of the stub upstream."""
    process = _start_sidecar("error", "error", stub_server.base_url, tmp_path_factory, started_sidecars)
    yield process
    process.stop()


@pytest.fixture
def unreachable_sidecar(
    tmp_path_factory: pytest.TempPathFactory,
    started_sidecars: list[SidecarProcess],
) -> Iterator[SidecarProcess]:
    """A sidecar whose upstream is a loopback port that nothing listens on."""
    closed_port = free_port()
    upstream_url = f"http://127.0.0.1:{closed_port}/v1"
    process = _start_sidecar("unreachable", "refusal", upstream_url, tmp_path_factory, started_sidecars)
    yield process
    process.stop()


def _make_client(sidecar: SidecarProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=sidecar.base_url, api_key=CLIENT_API_KEY, max_retries=0, timeout=10.0)


@pytest.fixture
def client(sidecar: SidecarProcess) -> Iterator[openai.OpenAI]:
    """An SDK client that talks to the refusal-mode sidecar."""
    with _make_client(sidecar) as sdk_client:
        yield sdk_client


@pytest.fixture
def error_client(error_sidecar: SidecarProcess) -> Iterator[openai.OpenAI]:
    """An SDK client that talks to the error-mode sidecar."""
    with _make_client(error_sidecar) as sdk_client:
        yield sdk_client


@pytest.fixture
def unreachable_client(unreachable_sidecar: SidecarProcess) -> Iterator[openai.OpenAI]:
    """An SDK client that talks to the sidecar whose upstream is down."""
    with _make_client(unreachable_sidecar) as sdk_client:
        yield sdk_client


def _make_anthropic_client(sidecar: SidecarProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=sidecar.anthropic_base_url, api_key=CLIENT_API_KEY, max_retries=0, timeout=10.0
    )


@pytest.fixture
def anthropic_client(sidecar: SidecarProcess) -> Iterator[anthropic.Anthropic]:
    """An Anthropic SDK client that talks to the refusal-mode sidecar."""
    with _make_anthropic_client(sidecar) as sdk_client:
        yield sdk_client


@pytest.fixture
def anthropic_error_client(error_sidecar: SidecarProcess) -> Iterator[anthropic.Anthropic]:
    """An Anthropic SDK client that talks to the error-mode sidecar."""
    with _make_anthropic_client(error_sidecar) as sdk_client:
        yield sdk_client
