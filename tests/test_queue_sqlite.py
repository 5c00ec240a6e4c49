"""The embedded queue beside other writers: waits out their write lock, wakes on their commits."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.queues.sqlite import SqliteQueue
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


@pytest.fixture
async def two_sides(tmp_path: Path) -> AsyncIterator[tuple[SqliteQueue, SqliteQueue]]:
    """The daemon's connection to a queue file and the CLI's, as two processes would have."""
    daemon_side, cli_side = SqliteQueue(tmp_path / "q.db"), SqliteQueue(tmp_path / "q.db")
    await daemon_side.open()
    await cli_side.open()
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
