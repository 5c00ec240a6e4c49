"""Several ``agent run`` daemons on one PostgreSQL queue: sharing, crashes, push wake-ups, outages.

Each test gets a fresh database on the shared server (tests/support/pg.py), dropped afterwards. The
outage test never touches that server: the agent reaches it through a TCP forwarder owned by the
test, which is closed (every connection cut) and opened again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.commands.demo.demoserver import DemoServer
from agent.jobs.model import Job
from agent.queues.postgres import PostgresQueue
from agent.queues.postgres_sql import MIGRATIONS
from tests.support.cli import arun_agent
from tests.support.daemons import daemon, enqueue, until
from tests.support.jobs import job_fields
from tests.support.pg import PORT, database_url, fetch, fresh_database
from tests.support.pki import PKI

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def db() -> AsyncIterator[str]:
    """A fresh database on the shared server, dropped after the test."""
    async with fresh_database() as name:
        yield name


async def count(db: str, where: str, *args: object) -> int:
    rows = await fetch(db, f"SELECT count(*) FROM agent_jobs WHERE {where}", *args)
    value: int = rows[0][0]
    return value


async def all_finished(db: str, total: int, deadline: float) -> None:
    async def finished() -> bool:
        return await count(db, "state IN ('processed', 'error')") == total

    await until(finished, f"{total} jobs to finish", deadline)


async def test_two_daemons_share_a_thousand_jobs_exactly_once(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer, db: str
) -> None:
    url, port = database_url(db), mtls_server.port
    ids = [f"bulk-{i:04d}" for i in range(1000)]
    params = {"mid.poll.time": "1", "threads.max": "25"}
    async with (
        daemon(tmp_path / "a", pki, port, "agent-a", url, **params) as a,
        daemon(tmp_path / "b", pki, port, "agent-b", url, **params) as b,
    ):
        await enqueue(a.config, [job_fields(i, port, "/echo") for i in ids])
        await all_finished(db, len(ids), 90)
        assert (await a.stop(), await b.stop()) == (0, 0)
    rows = await fetch(db, "SELECT id, state, attempt, agent FROM agent_jobs")
    assert {r["id"] for r in rows} == set(ids)
    assert {(r["state"], r["attempt"]) for r in rows} == {("processed", 1)}
    share = {n: sum(r["agent"] == f"mid.server.{n}" for r in rows) for n in ("agent-a", "agent-b")}
    print(f"share per agent: {share}")
    assert share["agent-a"] > 0 and share["agent-b"] > 0 and sum(share.values()) == len(ids)
    assert set(mtls_server.seen) == set(ids)
    repeated = {k: v for k, v in mtls_server.seen.items() if v != 1}
    assert repeated == {}, f"the server saw these job ids more than once: {repeated}"


async def test_sigkill_of_one_daemon_loses_nothing(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer, db: str
) -> None:
    url, port = database_url(db), mtls_server.port
    ids = [f"kill-{i:02d}" for i in range(40)]
    params = {"mid.poll.time": "0.5", "threads.max": "4", "agent.lease.seconds": "2"}
    async with (
        daemon(tmp_path / "a", pki, port, "victim", url, **params) as victim,
        daemon(tmp_path / "b", pki, port, "survivor", url, **params) as survivor,
    ):
        await enqueue(victim.config, [job_fields(i, port, "/slow?seconds=1") for i in ids])

        async def victim_busy() -> bool:
            return await count(db, "state = 'processing' AND agent = 'mid.server.victim'") > 0

        await until(victim_busy, "the victim to run jobs", 30)
        victim.proc.kill()
        await victim.proc.wait()
        in_flight = await count(db, "state = 'processing' AND agent = 'mid.server.victim'")
        await all_finished(db, len(ids), 60)
        assert await survivor.stop() == 0
    rows = await fetch(db, "SELECT id, state, agent FROM agent_jobs")
    lost = [r["id"] for r in rows if r["state"] != "processed" or mtls_server.seen[r["id"]] == 0]
    duplicates = sum(max(0, mtls_server.seen[i] - 1) for i in ids)
    print(f"killed agent in flight: {in_flight}; lost: {len(lost)}; duplicates: {duplicates}")
    assert in_flight > 0
    assert lost == [] and len(rows) == len(ids)
    assert duplicates <= in_flight


async def test_notify_wakes_an_idle_daemon(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer, db: str
) -> None:
    url, port = database_url(db), mtls_server.port
    # With a 30 s poll interval only a push can bring each job in under the 15 s bound.
    async with daemon(tmp_path, pki, port, "idler", url, **{"mid.poll.time": "30"}) as idler:
        for job_id in ("wake-1", "wake-2"):
            await enqueue(idler.config, [job_fields(job_id, port, "/echo")])
            ran = await arun_agent("-c", str(idler.config), "result", job_id, "--wait", "15")
            assert ran.returncode == 0, ran.stdout + ran.stderr
            assert json.loads(ran.stdout)["state"] == "processed"
        assert await idler.stop() == 0
    assert mtls_server.seen["wake-1"] == mtls_server.seen["wake-2"] == 1


class Forwarder:
    """A TCP forwarder to PostgreSQL that the test can cut (every connection) and restore."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:
            writer.transport.abort()
        tasks, self._tasks = self._tasks, set()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()


@pytest.fixture
async def forwarder() -> AsyncIterator[Forwarder]:
    fwd = Forwarder(PORT)
    await fwd.start()
    try:
        yield fwd
    finally:
        await fwd.stop()


async def test_result_made_during_an_outage_is_delivered_afterwards(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer, db: str, forwarder: Forwarder
) -> None:
    url, port = database_url(db, forwarder.port), mtls_server.port
    # A 30 s poll: the job after the outage can only arrive in time if LISTEN came back.
    params = {"mid.poll.time": "30"}
    async with daemon(tmp_path, pki, port, "cut-off", url, **params) as agent:
        await enqueue(agent.config, [job_fields("outage-1", port, "/slow?seconds=2")])
        await asyncio.wait_for(mtls_server.started.wait(), 30)
        await forwarder.stop()  # PostgreSQL is unreachable while the job runs
        await agent.wait_logged("result kept in the journal")
        assert await count(db, "state = 'processing'") == 1
        await forwarder.start()

        async def delivered() -> bool:
            return await count(db, "state = 'processed'") == 1

        await until(delivered, "the journaled result to reach the queue", 60)
        await agent.wait_logged("journal: delivered 1 result")
        await enqueue(agent.config, [job_fields("outage-2", port, "/echo")])
        ran = await arun_agent("-c", str(agent.config), "result", "outage-2", "--wait", "15")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert await agent.stop() == 0
    rows = await fetch(db, "SELECT id, state, attempt, agent, result FROM agent_jobs ORDER BY id")
    assert [(r["id"], r["state"], r["attempt"], r["agent"]) for r in rows] == [
        ("outage-1", "processed", 1, "mid.server.cut-off"),
        ("outage-2", "processed", 1, "mid.server.cut-off"),
    ]
    assert json.loads(rows[0]["result"])["status"] == 200
    assert mtls_server.seen["outage-1"] == mtls_server.seen["outage-2"] == 1
    assert agent.logged("LISTEN connection lost") and "Traceback" not in agent.log.read_text()


async def test_unreachable_queue_is_named_without_its_password() -> None:
    from agent.errors import QueueError

    queue = PostgresQueue("postgresql://postgres:s3cret-Pw@127.0.0.1:1/none")
    with pytest.raises(QueueError) as info:
        await queue.open()
    assert "s3cret-Pw" not in str(info.value) and "127.0.0.1:1" in str(info.value)
    assert "***" in str(info.value)
    with contextlib.suppress(QueueError):
        await queue.close()


async def test_agents_starting_together_migrate_the_schema_once(db: str) -> None:
    urls = [database_url(db), database_url(db).replace("postgresql://", "postgres://", 1)] * 3
    queues = [PostgresQueue(url) for url in urls]
    await asyncio.gather(*(q.open() for q in queues))
    try:
        assert [await q.depth() for q in queues] == [0] * len(queues)
    finally:
        await asyncio.gather(*(q.close() for q in queues))
    rows = await fetch(db, "SELECT version FROM agent_schema_version ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, len(MIGRATIONS) + 1))


async def test_a_row_that_is_no_job_is_claimed_with_its_problem(db: str) -> None:
    """Another program wrote the row: the claim says why it is unusable instead of failing."""
    queue = PostgresQueue(database_url(db))
    await queue.open()
    try:
        await fetch(db, "INSERT INTO agent_jobs (id, job) VALUES ('bad', '{\"topic\": 7}')")
        await queue.enqueue([Job.from_dict(job_fields("good", 443, "/echo"))])
        claims = await queue.claim("agent-1", 10, 60)
    finally:
        await queue.close()
    by_id = {c.job.id: c for c in claims}
    assert by_id["good"].problem is None
    assert by_id["bad"].problem is not None and "topic" in by_id["bad"].problem
