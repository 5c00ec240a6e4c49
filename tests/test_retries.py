"""Retries: only where no answer came, with the same Idempotency-Key, counted in the result."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.commands.demo.demoserver import DemoServer
from agent.config.config import load_config
from agent.engine.engine import Engine
from tests.support.configs import profile_config
from tests.support.engines import running_engine
from tests.support.jobs import make_job
from tests.support.pki import PKI
from tests.support.servers import free_port


@pytest.fixture
async def engine(tmp_path: Path, pki: PKI, mtls_server: DemoServer) -> AsyncIterator[Engine]:
    async with running_engine(
        load_config(profile_config(tmp_path, pki, mtls_server.port), env={})
    ) as engine:
        yield engine


async def test_dropped_connection_is_retried_with_the_same_idempotency_key(
    engine: Engine, mtls_server: DemoServer
) -> None:
    url = f"https://alpha.test:{mtls_server.port}/flaky?fail=2"
    result = await engine.run(make_job("r1", endpoint=url, method="POST", body="x", max_attempts=5))
    assert (result.state, result.status, result.attempts) == ("processed", 200, 3)
    keys = [r["headers"].get("Idempotency-Key") for r in mtls_server.requests]
    assert keys == ["r1", "r1", "r1"]


async def test_without_attempts_left_the_failure_is_the_result(
    engine: Engine, mtls_server: DemoServer
) -> None:
    url = f"https://alpha.test:{mtls_server.port}/flaky?fail=2"
    result = await engine.run(make_job("r2", endpoint=url, method="POST", max_attempts=2))
    assert (result.state, result.attempts) == ("error", 2)
    assert result.error is not None and result.error.kind == "connect"
    assert mtls_server.seen["r2"] == 2


async def test_an_answer_is_never_retried(engine: Engine, mtls_server: DemoServer) -> None:
    url = f"https://alpha.test:{mtls_server.port}/status/503"
    result = await engine.run(make_job("r3", endpoint=url, max_attempts=4))
    assert (result.state, result.status, result.attempts) == ("processed", 503, 1)


async def test_connection_refused_is_retried_then_reported(engine: Engine) -> None:
    url = f"https://alpha.test:{free_port()}/"
    result = await engine.run(make_job("r4", endpoint=url, max_attempts=3))
    assert (result.state, result.attempts) == ("error", 3)
    assert result.error is not None and result.error.kind == "connect"


async def test_a_client_certificate_rejection_is_not_retried(
    engine: Engine, mtls_server: DemoServer
) -> None:
    url = f"https://alpha.test:{mtls_server.port}/echo"
    result = await engine.run(make_job("r5", endpoint=url, max_attempts=3, sni=False))
    assert result.error is not None and result.error.kind == "sni_required"
    assert result.attempts == 1
