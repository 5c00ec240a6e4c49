"""The embedded queue beside other writers: waits out their write lock, wakes on their commits."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.queues.sqlite import SqliteQueue
from agent.queues.sqlite_wake import CommitWatch
from tests.support.jobs import make_job


async def test_a_write_lock_held_by_another_process_is_waited_out(tmp_path: Path) -> None:
    queue = SqliteQueue(tmp_path / "queue.db")
    await queue.open()
    holding, release = threading.Event(), threading.Event()

    def other_writer() -> None:  # another process's long write transaction, on its own connection
        db = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        holding.set()
        release.wait(10)
        db.execute("COMMIT")
        db.close()

    thread = threading.Thread(target=other_writer)
    thread.start()
    try:
        assert await asyncio.to_thread(holding.wait, 10)
        enqueue = asyncio.create_task(
            queue.enqueue([make_job("waited", host="a.example", path="/", profile=None)])
        )
        await asyncio.sleep(0.05)  # let the enqueue meet the held lock at least once
        assert not enqueue.done()  # it waits rather than failing
        release.set()
        assert await asyncio.wait_for(enqueue, 10) == ["waited"]
        status = await queue.status("waited")
        assert status is not None and status.state == "ready"
    finally:
        release.set()
        thread.join(10)
        await queue.close()


@pytest.fixture(params=["pushed", "polled"])
async def two_sides(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[SqliteQueue, SqliteQueue]]:
    """The daemon's connection to a queue file and the CLI's, as two processes would have;
    the daemon's side hears commits from the kernel (inotify) or, where it cannot, polls."""
    daemon_side, cli_side = SqliteQueue(tmp_path / "q.db"), SqliteQueue(tmp_path / "q.db")
    await daemon_side.open()
    await cli_side.open()
    if request.param == "polled":
        daemon_side._watch_opened = True  # as where inotify is missing or at its limits
    yield daemon_side, cli_side
    await daemon_side.close()
    await cli_side.close()


async def test_wait_for_work_returns_when_another_connection_commits(
    two_sides: tuple[SqliteQueue, SqliteQueue],
) -> None:
    daemon_side, cli_side = two_sides
    waiting = asyncio.create_task(daemon_side.wait_for_work(60))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await cli_side.enqueue([make_job("wake", host="a.example", path="/", profile=None)])
    await asyncio.wait_for(waiting, 10)  # far below the 60 s it would otherwise wait


async def test_a_commit_between_an_empty_claim_and_the_wait_is_not_missed(
    two_sides: tuple[SqliteQueue, SqliteQueue],
) -> None:
    """The worker claims, finds nothing, then waits: an enqueue landing in between must wake it."""
    daemon_side, cli_side = two_sides
    assert await daemon_side.claim("agent", 5, 60) == []
    await cli_side.enqueue([make_job("in-between", host="a.example", path="/", profile=None)])
    await asyncio.wait_for(daemon_side.wait_for_work(60), 10)  # not the whole 60 s
    assert [c.job.id for c in await daemon_side.claim("agent", 5, 60)] == ["in-between"]


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[tuple[SqliteQueue, SqliteQueue, CommitWatch]]:
    daemon_side, cli_side = SqliteQueue(tmp_path / "q.db"), SqliteQueue(tmp_path / "q.db")
    await daemon_side.open()
    await cli_side.open()
    assert cli_side._watch is None  # opened at the first wait: enqueuers never hold one
    await daemon_side.wait_for_work(0)
    assert daemon_side._watch is not None  # Linux: the kernel reports writes to the WAL
    yield daemon_side, cli_side, daemon_side._watch
    await daemon_side.close()
    await cli_side.close()


async def test_an_idle_wait_reads_nothing_until_the_kernel_reports_a_commit(
    watched: tuple[SqliteQueue, SqliteQueue, CommitWatch],
) -> None:
    """Polling read data_version every 1 ms while busy and every 50 ms at most when idle, so
    the first job after a quiet spell waited up to 50 ms; now the wait is parked on inotify."""
    daemon_side, cli_side, watch = watched
    before = daemon_side.version_reads
    waiting = asyncio.create_task(daemon_side.wait_for_work(60))
    await asyncio.wait_for(watch.waiting.wait(), 10)
    await asyncio.sleep(0.05)  # polling would have read the version at least ten times by now
    assert (daemon_side.version_reads - before, waiting.done()) == (1, False)
    await cli_side.enqueue([make_job("pushed", host="a.example", path="/", profile=None)])
    await asyncio.wait_for(waiting, 10)
    assert watch.hints >= 1
    assert [c.job.id for c in await daemon_side.claim("agent", 5, 60)] == ["pushed"]


async def test_the_queue_s_own_commit_is_only_a_hint_and_the_wait_goes_on(
    watched: tuple[SqliteQueue, SqliteQueue, CommitWatch],
) -> None:
    """The daemon's own writes (a result, a lease renewal) touch the same WAL: the version
    tells them from another process's enqueue, so they end no wait."""
    daemon_side, cli_side, watch = watched
    waiting = asyncio.create_task(daemon_side.wait_for_work(60))
    await asyncio.wait_for(watch.waiting.wait(), 10)
    watch.waiting.clear()
    await daemon_side.enqueue([make_job("own", host="a.example", path="/", profile=None)])
    await asyncio.wait_for(watch.waiting.wait(), 10)  # parked again after looking
    assert watch.hints >= 1 and not waiting.done()
    await cli_side.enqueue([make_job("other", host="a.example", path="/", profile=None)])
    await asyncio.wait_for(waiting, 10)


def test_without_a_watch_the_queue_says_why_and_polls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert CommitWatch.open(tmp_path / "missing" / "q.db") is None
    assert "cannot watch for other processes' commits" in caplog.text
    assert "every 1 to 50 ms instead" in caplog.text
