"""The worker's pipeline in process: claims ahead of its slots, gives them back on a stop, and
backs off from a queue that does not answer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.commands.demo.demoserver import DemoServer
from agent.config.config import AgentConfig, load_config
from agent.engine.engine import Engine
from agent.errors import QueueError
from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.queues.base import Claim, Exchange
from agent.queues.journal import Journal
from agent.queues.sqlite import SqliteQueue
from agent.worker.worker import Worker
from tests.support.configs import profile_config
from tests.support.pki import PKI


def slow_job(job_id: str, port: int) -> Job:
    return Job.from_dict(
        {
            "id": job_id,
            "topic": "RESTProbe",
            "endpoint": f"https://alpha.test:{port}/slow?seconds=60",
            "protocol_profile": "partner",
        }
    )


@dataclass
class Setup:
    config: AgentConfig
    queue: SqliteQueue
    engine: Engine


@pytest.fixture(params=[2])
async def setup(
    request: pytest.FixtureRequest, tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> AsyncIterator[Setup]:
    """An embedded queue and an engine for profile ``partner``; ``threads.max`` is the param."""
    threads = str(request.param)
    config = load_config(
        profile_config(tmp_path, pki, mtls_server.port, **{"threads.max": threads}), env={}
    )
    queue = SqliteQueue(tmp_path / "queue.db")
    await queue.open()
    engine = Engine(config)
    yield Setup(config, queue, engine)
    await engine.close()
    await queue.close()


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    """Poll a queue-side condition (no event tells the test when another component wrote)."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        await asyncio.sleep(0.01)


async def test_a_stop_gives_back_claimed_jobs_that_had_not_started_while_others_drain(
    setup: Setup, mtls_server: DemoServer
) -> None:
    queue = setup.queue
    ids = [f"ahead-{i}" for i in range(6)]
    await queue.enqueue([slow_job(i, mtls_server.port) for i in ids])
    worker = Worker(queue, setup.engine, prefetch=2)  # two beyond the slots
    serving = asyncio.create_task(worker.serve())

    async def states() -> dict[str, str]:
        found = {i: await queue.status(i) for i in ids}
        return {i: s.state for i, s in found.items() if s is not None}

    async def two_running() -> bool:
        return mtls_server.in_flight == 2

    try:
        await until(two_running, "two jobs in flight")
        assert list((await states()).values()).count("processing") == 4  # 2 running, 2 ahead
        worker.request_stop()

        async def backlog_returned() -> bool:
            return list((await states()).values()).count("ready") == 4

        await until(backlog_returned, "the unstarted claims back in the queue")
        assert not serving.done() and mtls_server.in_flight == 2  # still draining the two
        assert worker.stats.released == 2
        worker.request_stop()  # abort: the two in flight go back too
        stats = await asyncio.wait_for(serving, 30)
    finally:
        if not serving.done():
            serving.cancel()
    assert stats.released == 4 and stats.processed == 0
    assert set((await states()).values()) == {"ready"}


@pytest.mark.parametrize("setup", [4], indirect=True)
async def test_a_busy_worker_claims_ahead_and_runs_everything(
    setup: Setup, mtls_server: DemoServer
) -> None:
    """Quick jobs free slots during every round trip to the queue: the backlog must grow to
    cover them (it starts empty), and every job still runs exactly once."""
    ids = [f"quick-{i}" for i in range(300)]
    url = f"https://alpha.test:{mtls_server.port}/echo"
    await setup.queue.enqueue(
        [
            Job.from_dict(
                {"id": i, "topic": "RESTProbe", "endpoint": url, "protocol_profile": "partner"}
            )
            for i in ids
        ]
    )
    worker = Worker(setup.queue, setup.engine, burst=True)
    stats = await asyncio.wait_for(worker.serve(), 120)
    assert worker.prefetch > 0
    assert (stats.processed, stats.errors, stats.claimed) == (300, 0, 300)
    assert sorted(mtls_server.seen) == sorted(ids) and set(mtls_server.seen.values()) == {1}


class FailingQueue(SqliteQueue):
    """The embedded queue, whose round trips fail while ``down`` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.down = False
        self.failed_trips = 0

    async def exchange(
        self, results: list[tuple[Claim, Result]], agent: str, limit: int, lease_seconds: float
    ) -> Exchange:
        if self.down:
            self.failed_trips += 1
            raise QueueError("queue unreachable (an outage made by the test)")
        return await super().exchange(results, agent, limit, lease_seconds)


async def test_jobs_finishing_during_an_outage_do_not_cut_the_back_off_short(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(
        profile_config(tmp_path, pki, mtls_server.port, **{"threads.max": "4"}), env={}
    )
    queue = FailingQueue(tmp_path / "queue.db")
    await queue.open()
    engine = Engine(config)
    journal = Journal(tmp_path / "journal.db")
    url = f"https://alpha.test:{mtls_server.port}/slow?seconds="
    await queue.enqueue(
        [
            Job.from_dict(
                {
                    "id": f"out-{i}",
                    "topic": "RESTProbe",
                    "endpoint": f"{url}{0.2 + 0.4 * i}",  # they finish 0.4 s apart
                    "protocol_profile": "partner",
                }
            )
            for i in range(4)
        ]
    )
    monkeypatch.setattr("agent.worker.worker.backoff", lambda *args: 30.0)  # a long back-off
    worker = Worker(queue, engine, journal=journal)
    serving = asyncio.create_task(worker.serve())

    async def all_running() -> bool:
        return mtls_server.in_flight == 4

    async def all_finished() -> bool:
        return worker.in_flight == 0

    try:
        await until(all_running, "four jobs in flight")
        queue.down = True
        await until(all_finished, "the four jobs finished")
        assert queue.failed_trips == 1  # the first result's trip failed; the back-off then held
        worker.request_stop()  # a stop does cut it short: what finished goes to the journal
        stats = await asyncio.wait_for(serving, 30)
    finally:
        if not serving.done():
            serving.cancel()
        await engine.close()
    assert stats.journaled == 4 and len(await journal.pending()) == 4
    journal.close()
    await queue.close()


async def test_an_idle_worker_says_so_at_debug_at_most_once_per_interval(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One "queue empty" debug line per poll cycle, rate-limited: the clock the limit reads is
    the test's, so many quick cycles make one line until it moves on."""
    from dataclasses import replace

    from agent.worker import worker as worker_module

    now = [1000.0]
    monkeypatch.setattr(worker_module, "_clock", lambda: now[0])
    polls = 0
    waited = setup.queue.wait_for_work

    async def counting(timeout: float) -> None:
        nonlocal polls
        polls += 1
        await waited(timeout)

    monkeypatch.setattr(setup.queue, "wait_for_work", counting)
    engine = Engine(replace(setup.config, poll_time=0.01))
    worker = Worker(setup.queue, engine)
    caplog.set_level(logging.DEBUG, logger="agent.worker")
    serving = asyncio.create_task(worker.serve())

    def notes() -> list[str]:
        return [r.getMessage() for r in caplog.records if "queue empty" in r.getMessage()]

    async def polled(count: int) -> bool:
        return polls >= count

    try:
        await until(lambda: polled(5), "five idle polls")
        assert notes() == ["queue empty, next poll in 0.01s"]
        now[0] += worker_module.IDLE_NOTE_EVERY
        more = polls + 5
        await until(lambda: polled(more), "five more idle polls")
        assert len(notes()) == 2
    finally:
        worker.request_stop()
        await asyncio.wait_for(serving, 30)
        await engine.close()
