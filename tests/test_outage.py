"""A PostgreSQL outage longer than the lease: results the agents held are not run again.

The tests start a PostgreSQL of their own (``initdb`` into a temporary directory, its own port)
so they can stop it (``pg_ctl stop -m fast``: every connection cut) and start it again. The
agents are real ``agent run`` daemons; the partner is the counting mTLS server of the test
harness (``DemoServer.seen``: requests per Idempotency-Key, which is the job id).
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import pytest

from agent.commands.demo.demoserver import DemoServer
from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.queues.base import Claim, Queue
from agent.queues.postgres import PostgresQueue
from agent.queues.sqlite import SqliteQueue
from tests.support.daemons import Daemon, daemon, enqueue, until
from tests.support.jobs import job_fields
from tests.support.pki import PKI
from tests.support.servers import free_port

pytestmark = pytest.mark.timeout(120)

LEASE = 2.0  # agent.lease.seconds for the daemons here


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    assert found, f"PostgreSQL's {name} is not installed under /usr/lib/postgresql"
    return found[-1]


class OwnPostgres:
    """A PostgreSQL cluster in a temporary directory on its own 127.0.0.1 port, trust auth.

    It runs as the ``postgres`` OS user: the suite runs as root, which PostgreSQL refuses.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="agent-outage-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        proc = subprocess.run(
            [_bin(tool), *args], user="postgres", capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, f"{tool} failed: {proc.stdout}{proc.stderr}"

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c fsync=off"
        log = str(self.dir / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def remove(self) -> None:
        if self.running:
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
async def own_db(own_postgres: OwnPostgres) -> str:
    """A fresh database on the test's own server (started if a test left it stopped)."""
    if not own_postgres.running:
        own_postgres.start()
    name = f"outage_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(own_postgres.url("postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return own_postgres.url(name)


async def fetch(url: str, query: str) -> list[asyncpg.Record]:
    con = await asyncpg.connect(url)
    try:
        rows: list[asyncpg.Record] = await con.fetch(query)
        return rows
    finally:
        await con.close()


async def journaled(agents: list[Daemon], count: int) -> None:
    """Until the agents have put ``count`` results in their journals (their logs say so)."""

    async def kept() -> bool:
        for agent in agents:
            assert agent.proc.returncode is None, agent.log.read_text()[-2000:]
        return sum(a.log.read_text().count("result kept in the journal") for a in agents) >= count

    await until(kept, f"{count} results in the journal", 30)


async def outage(server: OwnPostgres, agents: list[Daemon], held: int) -> None:
    """Stop PostgreSQL; start it again once ``held`` results are journaled and every lease
    granted before the stop has lapsed (a lease ends at most LEASE seconds after the last
    renewal, and none can happen while the server is down)."""
    server.stop()
    lapsed = time.time() + LEASE
    await journaled(agents, held)

    async def leases_lapsed() -> bool:
        return time.time() > lapsed + 0.2

    await until(leases_lapsed, "the leases to lapse", 10)
    server.start()


async def finished(url: str, total: int) -> list[asyncpg.Record]:
    async def done() -> bool:
        rows = await fetch(url, "SELECT count(*) FROM agent_jobs WHERE state = 'processed'")
        return int(rows[0][0]) == total

    await until(done, f"{total} jobs processed", 60)
    return await fetch(url, "SELECT id, attempt, agent FROM agent_jobs ORDER BY id")


def batch(port: int, short: int, long: int, later: int) -> list[dict[str, object]]:
    """Jobs in enqueue order: ``short`` that finish during the outage, ``long`` that are still
    running when it ends, then ``later`` quick ones waiting in the queue."""
    jobs = [job_fields(f"short-{i}", port, "/slow?seconds=1.5") for i in range(short)]
    jobs += [job_fields(f"long-{i}", port, "/slow?seconds=6") for i in range(long)]
    return jobs + [job_fields(f"later-{i}", port, "/echo") for i in range(later)]


async def in_flight(server: DemoServer, count: int) -> None:
    async def running() -> bool:
        return server.in_flight == count

    await until(running, f"{count} calls in flight", 30)


PARAMS = {"agent.lease.seconds": str(LEASE), "threads.max": "4", "mid.poll.time": "0.2"}


async def test_one_agent_reruns_no_job_whose_result_it_held(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer, own_postgres: OwnPostgres, own_db: str
) -> None:
    port = mtls_server.port
    async with daemon(tmp_path, pki, port, "alone", own_db, **PARAMS) as agent:
        jobs = batch(port, short=2, long=2, later=6)
        await enqueue(agent.config, jobs)
        await in_flight(mtls_server, 4)  # the two short and the two long ones
        await outage(own_postgres, [agent], held=2)
        rows = await finished(own_db, len(jobs))
        assert await agent.stop() == 0
    assert {str(j["id"]): 1 for j in jobs} == dict(mtls_server.seen), agent.log.read_text()
    assert [r["attempt"] for r in rows] == [1] * len(jobs)  # no job was claimed twice
    assert agent.logged("renewed before claiming again")
    assert "Traceback" not in agent.log.read_text()


async def test_two_agents_duplicate_at_most_the_jobs_in_flight_at_the_outage(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer, own_postgres: OwnPostgres, own_db: str
) -> None:
    port = mtls_server.port
    async with AsyncExitStack() as stack:
        agents = [
            await stack.enter_async_context(
                daemon(tmp_path / name, pki, port, name, own_db, **PARAMS)
            )
            for name in ("east", "west")
        ]
        jobs = batch(port, short=4, long=4, later=8)
        await enqueue(agents[0].config, jobs)
        await in_flight(mtls_server, 8)  # four calls each
        claimed = await fetch(own_db, "SELECT id FROM agent_jobs WHERE state = 'processing'")
        await outage(own_postgres, agents, held=4)
        rows = await finished(own_db, len(jobs))
        assert [await a.stop() for a in agents] == [0, 0]
    assert set(mtls_server.seen) == {str(j["id"]) for j in jobs}
    duplicates = sum(n - 1 for n in mtls_server.seen.values())
    assert duplicates <= len(claimed) == 8, dict(mtls_server.seen)
    assert {r["agent"] for r in rows} == {"mid.server.east", "mid.server.west"}


# -- the queue's side: a late result after a lapsed lease -----------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def leased_queue(
    request: pytest.FixtureRequest, tmp_path: Path, own_db: str
) -> AsyncIterator[Queue]:
    queue: Queue = (
        SqliteQueue(tmp_path / "queue.db") if request.param == "sqlite" else PostgresQueue(own_db)
    )
    await queue.open()
    try:
        yield queue
    finally:
        await queue.close()


def done(claim: Claim) -> tuple[Claim, Result]:
    return claim, Result(id=claim.job.id, state="processed", status=200, body="late")


async def test_a_late_result_is_taken_unless_the_job_was_claimed_again(
    leased_queue: Queue,
) -> None:
    """Two jobs claimed together, so their leases lapse together: once another agent has
    claimed one of them, the other's lease has lapsed too, and nobody has claimed it."""
    queue = leased_queue
    jobs = [
        Job.from_dict({"id": i, "topic": "RESTProbe", "endpoint": f"https://a.example/{i}"})
        for i in ("first", "second")
    ]
    await queue.enqueue(jobs)
    claims = await queue.claim("agent-1", 2, 0.2)

    async def taken() -> bool:
        again = await queue.claim("agent-2", 1, 60)
        found.extend(again)
        return bool(again)

    found: list[Claim] = []
    await until(taken, "a lapsed lease to be claimed", 10)
    [current] = found
    [stale] = [c for c in claims if c.job.id == current.job.id]
    [late] = [c for c in claims if c.job.id != current.job.id]
    assert current.attempt == 2 and current.token != stale.token
    assert await queue.renew(claims, 60) == [stale]  # the other lapsed lease is still ours
    assert await queue.complete([done(stale), done(late)]) == [stale]
    for claim, state in ((stale, "processing"), (late, "processed")):
        status = await queue.status(claim.job.id)
        assert status is not None and status.state == state, claim.job.id
    assert await queue.complete([done(current)]) == []
