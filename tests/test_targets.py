"""Traffic policy per target against the real mTLS server: calls in flight capped per host:port
(with a profile's override), a token bucket, and the circuit breaker that opens on calls without
an answer, makes jobs wait instead of failing, lets one trial through and closes on an answer.
A job waiting at a gate gives its worker slot to a job for another target."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from agent.commands.demo.demoserver import DemoServer
from agent.config.config import AgentConfig, load_config
from agent.engine.engine import Engine
from agent.http.targets import OPEN, BreakerPolicy, Gate, Hooks, Limits, traffic_of
from agent.jobs.results import Result
from agent.queues.base import Claim
from agent.queues.sqlite import SqliteQueue
from agent.worker.worker import Worker
from tests.support.configs import P, profile_config
from tests.support.daemons import daemon, enqueue, until
from tests.support.engines import running_engine
from tests.support.health import free_port, get, samples
from tests.support.jobs import job_fields, make_job
from tests.support.pki import PKI
from tests.support.queues import queue_fixture  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)


def config_with(tmp_path: Path, pki: PKI, port: int, **params: str) -> AgentConfig:
    return load_config(profile_config(tmp_path, pki, port, **params), env={})


def target(port: int, host: str = "alpha.test") -> str:
    return f"{host}:{port}"


# ---------------------------------------------------------------------- limits


async def test_calls_in_flight_to_a_target_are_capped_and_the_rest_wait(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    config = config_with(tmp_path, pki, mtls_server.port, **{"agent.target.max_concurrency": "2"})
    async with running_engine(config) as engine:
        runs = [
            asyncio.create_task(engine.run(make_job(f"held-{i}", mtls_server.port, "/hold")))
            for i in range(6)
        ]
        await mtls_server.until(lambda: mtls_server.in_flight == 2)
        gate = engine.targets.gates[target(mtls_server.port)]
        assert (gate.in_flight, gate.waiting) == (2, 4)
        mtls_server.release.set()
        results = await asyncio.gather(*runs)
    assert [r.status for r in results] == [200] * 6
    assert mtls_server.peak == 2
    assert engine.targets.gates == {}  # nothing left to remember about an idle target


def test_a_profile_sets_its_own_limits(tmp_path: Path, pki: PKI) -> None:
    params = {
        "agent.target.max_concurrency": "8",
        "agent.target.rate": "50",
        f"{P}.partner.max_concurrency": "1",
        f"{P}.partner.rate": "2.5",
    }
    config = config_with(tmp_path, pki, 8443, **params)
    partner = traffic_of(config).limits(make_job("p", 8443, profile="partner").protocol_profile)
    assert partner == Limits(max_concurrency=1, rate=2.5, burst=0) and partner.bucket == 3
    assert traffic_of(config).limits(make_job("t", 8443, profile="two").protocol_profile) == (
        Limits(8, 50.0, 0)
    )


def test_the_token_bucket_admits_a_burst_then_one_call_per_interval() -> None:
    gate, limits = Gate("partner.test:443"), Limits(rate=2.0, burst=3)
    now = gate.refilled
    for _ in range(3):
        assert gate.wait_needed(now, limits) == 0
        gate.take(limits)
    assert gate.wait_needed(now, limits) == pytest.approx(0.5)  # one token every 0.5 s
    assert gate.wait_needed(now + 0.25, limits) == pytest.approx(0.25)
    assert gate.wait_needed(now + 0.5, limits) == 0


# ---------------------------------------------------------------------- breaker


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once the socket closes


def test_the_breaker_opens_for_longer_each_time_and_an_answer_closes_it() -> None:
    policy = BreakerPolicy(failures=2, open_seconds=10, max_open_seconds=25)
    gate = Gate("partner.test:443")
    refused = Result.failed("j", "connect", "refused")
    for _ in range(2):
        gate.take(Limits())
        gate.outcome(refused, False, policy)
    assert gate.state == OPEN and gate.until - gate.refilled == pytest.approx(10, abs=1)
    gate.until = 0  # its open time is over: one trial
    assert gate.wait_needed(gate.refilled, Limits()) == 0
    trial = gate.take(Limits())
    assert trial and gate.wait_needed(gate.refilled, Limits()) is None  # the others wait
    gate.outcome(refused, trial, policy)
    assert gate.state == OPEN and gate.openings == 2
    assert gate.until - gate.refilled == pytest.approx(20, abs=1)  # doubled
    gate.until = 0
    gate.wait_needed(gate.refilled, Limits())
    gate.outcome(Result.failed("j", "connect", "refused"), gate.take(Limits()), policy)
    assert gate.until - gate.refilled == pytest.approx(25, abs=1)  # capped
    gate.until = 0
    gate.wait_needed(gate.refilled, Limits())
    answered = Result(id="j", state="error", status=503)  # an HTTP error is an answer
    gate.outcome(answered, gate.take(Limits()), policy)
    assert (gate.state, gate.failures, gate.openings) == ("closed", 0, 0)
    assert gate.openings_total == 3


async def test_an_open_breaker_makes_jobs_wait_then_a_trial_closes_it(
    tmp_path: Path, pki: PKI
) -> None:
    port = closed_port()
    params = {"agent.breaker.failures": "2", "agent.breaker.open_seconds": "0.2"}
    config = config_with(tmp_path, pki, port, **params)
    opened: list[str] = []
    parked = asyncio.Event()

    async def resume() -> None:
        return None

    async with running_engine(config) as engine:
        engine.targets.on_open.append(opened.append)
        for i in range(2):
            failed = await engine.run(make_job(f"refused-{i}", port))
            assert failed.error is not None and failed.error.kind == "connect"
        assert opened == [target(port)]
        (reason,) = engine.targets.reasons()
        assert reason.startswith(f"{target(port)}: breaker open after 2 call(s)")
        waiting = asyncio.create_task(
            engine.run(make_job("waits", port), hooks=Hooks(parked.set, resume))
        )
        await parked.wait()  # it waits at the gate instead of failing
        assert not waiting.done()
        server = DemoServer(pki.ca, {"alpha.test": pki.alpha})
        server.port = port
        await server.start()  # the partner is back on its port: the trial goes through
        try:
            result = await waiting
        finally:
            await server.stop()
    assert result.status == 200, result
    assert engine.targets.reasons() == [] and opened == [target(port)]


# ---------------------------------------------------------------------- the worker's slots


async def test_a_job_waiting_at_its_targets_gate_gives_its_slot_to_another(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer, queue: SqliteQueue
) -> None:
    """Two slots; alpha.test takes one call at a time. The second alpha job waits at the gate,
    and the beta job runs in its slot meanwhile, while the first alpha call is still held:
    were the waiting job holding its slot, beta would wait for the alpha calls."""
    params = {"threads.max": "2", "agent.target.max_concurrency": "1"}
    config = config_with(tmp_path, pki, mtls_server.port, **params)
    await queue.enqueue(
        [
            make_job("alpha-1", mtls_server.port, "/hold"),
            make_job("alpha-2", mtls_server.port, "/hold"),
            make_job("beta", mtls_server.port, host="beta.test"),
        ]
    )
    beta_done = asyncio.Event()
    finished: list[str] = []

    def on_result(claim: Claim, result: Result, seconds: float) -> None:
        job_id = claim.job.id
        finished.append(job_id)
        if job_id == "beta":
            assert mtls_server.in_flight == 1, "beta ran after the held alpha call"
            beta_done.set()

    engine = Engine(config)
    worker = Worker(queue, engine, burst=True, on_result=on_result)
    try:
        serving = asyncio.create_task(worker.serve())
        await beta_done.wait()
        assert finished == ["beta"]
        mtls_server.release.set()
        stats = await serving
    finally:
        await engine.close()
    assert stats.processed == 3 and sorted(finished) == ["alpha-1", "alpha-2", "beta"]
    assert mtls_server.peak == 1


def test_breaker_states_reach_metrics_and_leave_with_their_targets() -> None:
    from agent.service.metrics import TARGET_SERIES, Metrics

    metrics = Metrics()
    metrics.set_targets({"partner.test:443": (1, 3), "other.test:8443": (0, 0)})
    metrics.breaker_opened("partner.test:443")
    text = metrics.render().decode()
    assert 'agent_target_breaker_state{target="partner.test:443"} 1.0' in text
    assert 'agent_target_waiting_jobs{target="partner.test:443"} 3.0' in text
    assert "agent_target_breaker_openings_total 1.0" in text
    assert "other.test" not in text  # closed and idle: not shown
    metrics.set_targets({f"host-{i}.test:443": (1, 0) for i in range(TARGET_SERIES + 50)})
    text = metrics.render().decode()
    assert 'agent_target_breaker_state{target="partner.test:443"}' not in text
    assert text.count("agent_target_breaker_state{") == TARGET_SERIES  # bounded


async def test_the_daemon_shows_an_open_breaker_in_readyz_and_metrics(
    tmp_path: Path, pki: PKI
) -> None:
    port, health = closed_port(), free_port()
    params = {
        "agent.health.listen": f"127.0.0.1:{health}",
        "agent.breaker.failures": "2",
        "agent.breaker.open_seconds": "600",  # stays open for the test
        "agent.breaker.max_open_seconds": "600",
        "agent.drain.seconds": "0.5",
    }
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    async with daemon(tmp_path / "d", pki, port, "breaker-agent", url, **params) as running:
        jobs = [job_fields(f"down-{i}", port) for i in range(3)]
        await enqueue(running.config, jobs[:2])
        await running.wait_logged("breaker open for 600 s")
        await enqueue(running.config, jobs[2:])  # this one waits at the gate
        base, key = f"http://127.0.0.1:{health}", target(port)

        async def waiting() -> bool:
            got = samples((await get(f"{base}/metrics"))[1])
            return got.get(("agent_target_waiting_jobs", (("target", key),))) == 1

        await until(waiting, "the third job waiting at the gate", 30)
        status, text = await get(f"{base}/readyz")
        got = samples((await get(f"{base}/metrics"))[1])
        assert await running.stop() == 0
    body = json.loads(text)
    assert status == 503
    assert [r for r in body["reasons"] if r.startswith(f"targets: {key}: breaker open")], body
    assert got[("agent_target_breaker_state", (("target", key),))] == 1
    assert got[("agent_target_breaker_openings_total", ())] == 1


async def test_a_failing_breaker_listener_costs_no_job_its_result() -> None:
    from agent.http.targets import Targets

    targets = Targets()
    targets.on_open.append(lambda key: 1 / 0)  # type: ignore[func-returns-value]
    policy, limits = BreakerPolicy(failures=1), Limits()
    ticket = await targets.enter("partner.test:443", limits, policy, None)
    targets.leave(ticket, Result.failed("j", "connect", "refused"), policy, limits)  # no raise
    assert targets.gates["partner.test:443"].state == OPEN
