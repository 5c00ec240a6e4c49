"""Retries: only where no answer came, with the same Idempotency-Key, counted in the result;
through the queue (due after a back-off with full jitter), with every attempt in the result."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.commands.demo.demoserver import DemoServer
from agent.config.config import load_config
from agent.engine.engine import Engine
from agent.http.call import backoff
from agent.jobs.results import Result
from agent.queues.base import Claim
from agent.queues.sqlite import SqliteQueue
from agent.worker.stats import Stats
from agent.worker.worker import Worker
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


# ---------------------------------------------------------------------- retries through the queue


def test_the_back_off_is_full_jitter_under_a_growing_capped_ceiling() -> None:
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (8, 10.0), (40, 10.0)):
        waits = [backoff(attempt, 0.5, 10.0) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling / 2  # spread over the range, not pinned to its floor


async def run_until_final(
    queue: SqliteQueue, engine: Engine, ids: set[str]
) -> tuple[dict[str, Result], Stats]:
    """A worker (not in burst mode: retries go back to the queue) until every job in ``ids``
    has its final result."""
    final: dict[str, Result] = {}
    done = asyncio.Event()

    def on_result(claim: Claim, result: Result, seconds: float) -> None:
        final[claim.job.id] = result
        if set(final) >= ids:
            done.set()

    worker = Worker(queue, engine, on_result=on_result)
    serving = asyncio.create_task(worker.serve())
    await done.wait()
    worker.request_stop()
    return final, await serving


async def test_a_retry_goes_back_to_the_queue_and_the_result_keeps_every_attempt(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    params = {"agent.retry.base": "0.05", "agent.retry.max_delay": "0.2", "mid.poll.time": "0.05"}
    config = load_config(profile_config(tmp_path, pki, mtls_server.port, **params), env={})
    flaky = f"https://alpha.test:{mtls_server.port}/flaky?fail=2"
    refused = f"https://alpha.test:{free_port()}/"
    inline = {  # the job's own keystore: its secrets must outlive the first attempts
        "keystore": {
            "type": "pkcs12",
            "data_base64": base64.b64encode(pki.client_two.pkcs12("inline-Pass-3")).decode(),
            "password": "inline-Pass-3",
        },
        "truststore_pem": pki.ca.cert_pem().decode(),
    }
    jobs = [
        make_job("comes-good", endpoint=flaky, max_attempts=5, method="POST", body="x"),
        make_job("gives-up", endpoint=refused, max_attempts=3),
        make_job(
            "own-key",
            endpoint=flaky,
            max_attempts=5,
            method="POST",
            profile=None,
            inline_profile=inline,
        ),
        make_job("no-retry", endpoint=flaky, max_attempts=5, profile="nonexistent"),
    ]
    queue = SqliteQueue(tmp_path / "queue.db")
    await queue.open()
    try:
        await queue.enqueue(jobs)
        async with running_engine(config) as engine:
            final, stats = await run_until_final(queue, engine, {j.id for j in jobs})
        rows = {row.id: row for row in await queue.list_jobs(None, 10)}
    finally:
        await queue.close()
    good, gave_up, own, once = (final[j.id] for j in jobs)
    assert (good.status, good.attempts) == (200, 3)
    assert [h["kind"] for h in good.history] == ["connect", "connect", None]
    assert [h["attempt"] for h in good.history] == [1, 2, 3] and good.history[2]["status"] == 200
    assert (gave_up.state, gave_up.attempts) == ("error", 3)
    assert [h["kind"] for h in gave_up.history] == ["connect"] * 3
    assert own.status == 200 and "client-two" in (own.tls.client_certificate or "")
    assert (once.error and once.error.kind, once.attempts, once.history) == (
        "unknown_profile",
        1,
        [],
    )
    # each attempt was a claim of its own: the queue, not a sleeping worker, held the retries
    assert (rows["comes-good"].attempts, rows["gives-up"].attempts) == (3, 3)
    assert stats.retried == 2 + 2 + 2
    assert "inline-Pass-3" not in json.dumps([r.to_dict() for r in final.values()])
