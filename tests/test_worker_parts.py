"""The worker's collaborators alone: the backlog's size, leases lost to another agent, and the
results the queue could not take going to the journal and back."""

from __future__ import annotations

from pathlib import Path

from agent.errors import QueueError
from agent.jobs.results import Result
from agent.queues.journal import Journal
from agent.queues.sqlite import SqliteQueue
from agent.worker.backlog import PREFETCH_MAX_FACTOR, Backlog
from agent.worker.delivery import Delivery
from agent.worker.leases import Leases
from agent.worker.stats import Stats
from tests.support.jobs import make_job
from tests.support.queues import queue_fixture  # noqa: F401 - fixture


def test_the_backlog_grows_to_four_trips_at_once_and_shrinks_by_one_percent_a_trip() -> None:
    backlog = Backlog()
    backlog.adapt(freed=10, slots=25)
    assert backlog.prefetch == 40
    backlog.adapt(freed=0, slots=25)
    assert backlog.prefetch == 39  # int(40 * 0.99)
    backlog.adapt(freed=1000, slots=25)
    assert backlog.prefetch == 25 * PREFETCH_MAX_FACTOR  # the cap
    assert backlog.wanted(slots=25, running=5) == 25 + 250 - 5


async def test_a_lease_lost_before_its_job_started_leaves_the_backlog(
    queue: SqliteQueue,
) -> None:
    await queue.enqueue([make_job("a", profile=None), make_job("b", profile=None)])
    ours = await queue.claim("agent-1", 2, lease_seconds=0)  # lapsed as soon as taken
    leases, backlog = Leases(queue, lambda: 60.0), Backlog()
    leases.hold(ours)
    backlog.extend(ours)
    theirs = await queue.claim("agent-2", 2, lease_seconds=60)  # another agent takes them
    assert {c.job.id for c in theirs} == {"a", "b"}
    assert await leases.renew_once(backlog) == 0
    assert len(backlog) == 0 and len(leases) == 0


async def test_results_the_queue_cannot_take_are_journaled_then_delivered(
    tmp_path: Path, queue: SqliteQueue
) -> None:
    await queue.enqueue([make_job("kept", profile=None)])
    (claim,) = await queue.claim("agent-1", 1, lease_seconds=60)
    journal = Journal(tmp_path / "journal.db")
    stats = Stats()
    delivery = Delivery(queue, stats, journal)
    result = Result(id="kept", state="processed", status=200)
    try:
        journaled = await delivery.not_stored([(claim, result, 0.1)], QueueError("queue away"))
        assert journaled and stats.journaled == 1
        assert [c.job.id for c, _ in await journal.pending()] == ["kept"]
        assert await delivery.deliver_journal() == 1
        assert await journal.pending() == [] and stats.processed == 1
        status = await queue.status("kept")
        assert status is not None and status.state == "processed"
    finally:
        journal.close()


async def test_without_a_journal_a_result_not_stored_is_not_kept(queue: SqliteQueue) -> None:
    await queue.enqueue([make_job("lost", profile=None)])
    (claim,) = await queue.claim("agent-1", 1, lease_seconds=60)
    delivery = Delivery(queue, Stats())
    result = Result(id="lost", state="processed", status=200)
    assert await delivery.not_stored([(claim, result, 0.1)], QueueError("away")) is False
    assert await delivery.deliver_journal() == 0
