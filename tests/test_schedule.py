"""Job fields ``not_before`` (RFC 3339) and ``priority`` (higher first), honoured by the SQLite
and PostgreSQL queues through one index each, so a claim stays an index walk that stops at its
limit however many jobs wait."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.commands.demo.demoserver import DemoServer
from agent.errors import JobError
from agent.jobs.model import Job
from agent.queues.base import Queue
from agent.queues.postgres import PostgresQueue
from agent.queues.postgres_sql import CLAIM
from agent.queues.sqlite import SqliteQueue
from agent.queues.sqlite_sql import MARK_CLAIMED
from tests.support.cli import arun_agent
from tests.support.configs import profile_config
from tests.support.jobs import job_fields, make_job
from tests.support.pg import database_url, fetch, fresh_database
from tests.support.pki import PKI


def at(seconds_from_now: float) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds_from_now)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


@pytest.fixture(params=["sqlite", "postgres"])
async def queue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Queue]:
    if request.param == "sqlite":
        q: Queue = SqliteQueue(tmp_path / "queue.db")
        await q.open()
        try:
            yield q
        finally:
            await q.close()
        return
    async with fresh_database() as name:
        q = PostgresQueue(database_url(name))
        await q.open()
        try:
            yield q
        finally:
            await q.close()


async def claimed_ids(queue: Queue, limit: int = 10) -> list[str]:
    return [c.job.id for c in await queue.claim("agent-a", limit, 60)]


async def test_higher_priority_is_claimed_first_then_by_due_time(queue: Queue) -> None:
    await queue.enqueue(
        [
            make_job("low", priority=-5),
            make_job("plain"),
            make_job("urgent", priority=10),
            make_job("early-plain", not_before=at(-3600)),  # due an hour ago: before "plain"
            make_job("high", priority=5),
        ]
    )
    assert await claimed_ids(queue, 2) == ["urgent", "high"]
    assert await claimed_ids(queue) == ["early-plain", "plain", "low"]


async def test_a_job_is_not_claimed_before_its_time(queue: Queue) -> None:
    await queue.enqueue(
        [
            make_job("later", not_before=at(3600)),
            make_job("now"),
            make_job("past", not_before=at(-1)),
        ]
    )
    assert sorted(await claimed_ids(queue)) == ["now", "past"]
    assert await claimed_ids(queue) == []  # "later" waits
    summary = await queue.summary()
    assert summary is not None and summary.by_state["ready"] == 1


def test_the_fields_are_checked_and_round_trip() -> None:
    job = make_job("j", not_before="2026-12-03T10:00:00+01:00", priority=3)
    assert job.not_before == "2026-12-03T09:00:00.000000Z" and job.priority == 3
    assert Job.from_dict(job.to_dict()) == job
    assert job.due == dt.datetime(2026, 12, 3, 9, tzinfo=dt.UTC).timestamp()
    for field, value in [
        ("not_before", "2026-12-03"),  # a date alone
        ("not_before", "2026-12-03T10:00:00"),  # no offset: whose 10 o'clock?
        ("not_before", 1796288400),
        ("priority", 1.5),
        ("priority", True),
        ("priority", 10**9),
    ]:
        with pytest.raises(JobError) as caught:
            make_job("bad", **{field: value})
        assert caught.value.field == field


async def test_the_daemon_runs_jobs_in_priority_order(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    config = profile_config(tmp_path, pki, mtls_server.port, **{"threads.max": "1"})
    jobs = [
        job_fields(f"p{p}", mtls_server.port, headers={"X-Order": f"p{p}"}, priority=p)
        for p in (1, 3, -2, 2)
    ]
    jobs.append(job_fields("future", mtls_server.port, not_before=at(3600)))
    lines = "\n".join(json.dumps(j) for j in jobs)
    assert (await arun_agent("-c", str(config), "enqueue", "-", input=lines)).returncode == 0
    ran = await arun_agent("-c", str(config), "run", "--burst")
    assert ran.returncode == 0, ran.stderr[-2000:]
    order = [r["headers"].get("X-Order") for r in mtls_server.requests]
    assert order == ["p3", "p2", "p1", "p-2"]  # and "future" not yet
    listed = json.loads((await arun_agent("-c", str(config), "jobs", "--json")).stdout)
    assert {r["id"]: r["state"] for r in listed}["future"] == "ready"


async def test_sqlite_claims_walk_the_index_without_scanning_the_table(tmp_path: Path) -> None:
    """The ready jobs are read in claim order off ``jobs_due`` and the read stops at the
    limit; what is sorted afterwards is at most twice the limit, never the backlog."""
    queue = SqliteQueue(tmp_path / "plan.db")
    await queue.open()
    try:
        plan = queue.db.execute("EXPLAIN QUERY PLAN " + MARK_CLAIMED, ("a", 0.0, 1.0, 10))
        steps = [row[-1] for row in plan.fetchall()]
    finally:
        await queue.close()
    assert "SCAN jobs USING INDEX jobs_due" in steps, steps
    assert "SEARCH jobs USING INDEX jobs_leased (lease_until<?)" in steps, steps
    assert not [s for s in steps if s.startswith("SCAN jobs") and "INDEX" not in s], steps


async def test_postgres_claims_walk_the_index_with_many_waiting() -> None:
    async with fresh_database() as name:
        queue = PostgresQueue(database_url(name))
        await queue.open()
        try:
            await fetch(
                name,
                "INSERT INTO agent_jobs (id, job, priority, due)"
                " SELECT 'bulk-' || n, '{}'::jsonb, n % 7, now() - (n % 1000) * interval '1 s'"
                " FROM generate_series(1, 200000) AS n",
            )
            await fetch(name, "ANALYZE agent_jobs")
            rows = await fetch(
                name,
                "EXPLAIN " + CLAIM.replace("$1", "'a'").replace("$2", "60").replace("$3", "10"),
            )
            plan = "\n".join(r[0] for r in rows)
            assert "agent_jobs_due" in plan, plan
            assert "Sort" not in plan.split("ready")[1].split("Update")[0], plan
        finally:
            await queue.close()


async def test_an_old_sqlite_file_gets_the_columns_and_its_jobs_stay_claimable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, job TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'ready', token INTEGER NOT NULL DEFAULT 0,
            attempt INTEGER NOT NULL DEFAULT 0, agent TEXT, lease_until REAL,
            created REAL NOT NULL, updated REAL NOT NULL, result TEXT);
        CREATE INDEX jobs_ready ON jobs (seq) WHERE state = 'ready';
        """
    )
    body = json.dumps(make_job("from-before").to_dict())
    old.execute(
        "INSERT INTO jobs (id, job, created, updated) VALUES ('from-before', ?, 1, 1)", (body,)
    )
    old.commit()
    old.close()
    queue = SqliteQueue(path)
    await queue.open()
    try:
        await queue.enqueue([make_job("new", priority=1)])
        assert await claimed_ids(queue) == ["new", "from-before"]
    finally:
        await queue.close()
