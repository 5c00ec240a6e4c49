"""The daemon's main loop: claim, run, report; drain on the first stop, abort on the second.

``serve`` runs the queue task (``_pump``) until a stop, drains, then stores what finished and
gives back what did not. Signal handlers only call ``request_stop``. Every task started here is
tracked; job tasks never write to the queue themselves, so cancelling one cannot cut a write in
half. ``burst=True`` stops once the queue is empty and nothing is running (tests, demo).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agent.config.config import AgentConfig
from agent.engine.engine import Engine
from agent.errors import QueueError
from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.queues.base import Claim, Queue
from agent.queues.journal import Journal

log = logging.getLogger("agent.worker")

QUEUE_BACKOFF_CAP = 30.0
PREFETCH_MAX_FACTOR = 10  # the backlog grows to at most this many times threads.max
JOURNAL_RETRY = 5.0
IDLE_NOTE_EVERY = 10.0  # seconds: at most one "queue empty" debug line per this (or per poll)
_clock = time.monotonic  # for the idle note's rate limit (tests replace it)


@dataclass
class Stats:
    claimed: int = 0
    processed: int = 0
    errors: int = 0
    fenced: int = 0
    released: int = 0
    journaled: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


JobHook = Callable[[Claim, Result, float], None]
ClaimHook = Callable[[float, QueueError | None], None]  # seconds the claim took, its failure


@functools.lru_cache(maxsize=4096)  # jobs repeat endpoints
def _scheme_and_host(endpoint: str) -> tuple[str, str | None]:
    parts = urlsplit(endpoint)
    return parts.scheme.lower(), parts.hostname


def log_fields(job: Job, result: Result) -> dict[str, object]:
    """Structured fields for the job's log line (JSON logs carry them as keys)."""
    scheme, host = _scheme_and_host(job.endpoint)
    return {
        "job_id": job.id,
        "profile": job.protocol_profile or (scheme if scheme != "https" else None),
        "host": host,
        "outcome": result.error.kind if result.error else result.state,
        "status": result.status,
        "duration_ms": result.elapsed_ms,
    }


class Worker:
    """A pipeline of three parts that never wait on one another:

    - up to ``threads.max`` job tasks, each running one call;
    - a backlog of claimed jobs, as many as start during a few round trips to the queue, so a
      freed slot starts its next job at once instead of waiting for one;
    - one queue task that, per round trip, stores every result finished since the last one
      and claims enough jobs to fill the slots and the backlog (``Queue.exchange``: a single
      transaction where the backend allows).

    A job's slot frees as soon as its call returns; its claim stays unfinished (and its lease
    renewed) until the result is stored.
    """

    def __init__(
        self,
        queue: Queue,
        engine: Engine,
        *,
        burst: bool = False,
        on_result: JobHook | None = None,
        journal: Journal | None = None,
        on_claim: ClaimHook | None = None,
        prefetch: int = 0,
    ) -> None:
        """``prefetch``: the backlog to start with; it adapts from there."""
        self.queue = queue
        self.engine = engine
        self.burst = burst
        self.on_result = on_result
        self.on_claim = on_claim
        self.journal = journal
        self.stats = Stats()
        self._running: dict[asyncio.Task[None], Claim] = {}
        self._backlog: deque[Claim] = deque()  # claimed, not started
        self._results: list[tuple[Claim, Result, float]] = []  # finished, not stored
        self._unfinished: dict[str, Claim] = {}  # claimed, result not yet stored
        self._stopping = asyncio.Event()
        self._aborting = False
        self._pump_wake = asyncio.Event()  # results to store, free room, a wake-up or a stop
        self._queue_empty = False  # the last claim got fewer jobs than it asked for
        self._prefetch = prefetch  # follows the pace (see _adapt_prefetch)
        self._freed = 0  # slots freed so far (jobs finished or given up)
        self._heartbeat: asyncio.Task[None] | None = None
        self._queue_failures = 0
        # The queue failed since the last good round trip (or results wait in the journal):
        # before the next claim, deliver the journal and renew every lease (see ``_recover``).
        self._recovering = False
        self._idle_noted = -float("inf")  # when the last "queue empty" debug line was written
        self.ready = asyncio.Event()

    @property
    def config(self) -> AgentConfig:
        """The configuration in force now (a reload changes it between jobs)."""
        return self.engine.state.config

    # ------------------------------------------------------------------------------ control

    def request_stop(self) -> None:
        """First call: stop claiming and drain. Second call: abort and release the claims."""
        if self._stopping.is_set():
            if not self._aborting:
                log.warning("second stop signal: aborting, unfinished jobs return to the queue")
                self._aborting = True
                for task in list(self._running):
                    task.cancel()
            return
        log.info("stopping: no new claims; %d job(s) in flight finish first", len(self._running))
        self._stopping.set()
        self._pump_wake.set()

    def wake(self) -> None:
        """Poll again now (a push notification or a reload)."""
        self._queue_empty = False
        self._pump_wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def prefetch(self) -> int:
        """Claimed jobs kept waiting for a slot (see ``_adapt_prefetch``)."""
        return self._prefetch

    def _adapt_prefetch(self, freed: int) -> None:
        """Size the backlog to cover the slowest recent round trips at the pace jobs start.

        ``freed`` slots came free while the last round trip ran: that many jobs could have
        started then, had the backlog held them. Trips vary: each
        waits for the write lock, which other agent processes share, and for a disk flush, so
        one slow trip in many would leave the slots without work. The backlog grows at once to
        four trips' worth and shrinks by 1% a trip. Slow jobs (few finish per trip) keep it
        near empty, so jobs are not held back from other agents, or stranded for a lease
        period if this one dies, for nothing.
        """
        cap = self.config.threads_max * PREFETCH_MAX_FACTOR
        self._prefetch = min(cap, max(4 * freed, int(self._prefetch * 0.99)))

    # ------------------------------------------------------------------------------ lifecycle

    async def serve(self) -> Stats:
        self._heartbeat = asyncio.create_task(self._renew_loop(), name="lease-heartbeat")
        await self.deliver_journal()
        pump = asyncio.create_task(self._pump(), name="queue-pump")
        try:
            self.ready.set()
            stop = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({pump, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if not pump.done():
                await self._drain()
            await pump
        finally:
            if not pump.done():  # cancelled from outside, or a failure above
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            await self._release_unfinished()
        return self.stats

    def _wanted(self) -> int:
        """Jobs to claim now: room in the slots and the backlog."""
        if self._stopping.is_set():
            return 0
        room = self.config.threads_max + self.prefetch - len(self._running) - len(self._backlog)
        return max(0, room)

    async def _pump(self) -> None:
        """The queue task: store results and claim, one round trip at a time, until stopped (or,
        in burst mode, until the queue is empty and everything claimed is stored)."""
        while True:
            self._pump_wake.clear()
            if self._stopping.is_set() and self._backlog:
                await self._give_back_backlog()
            results, self._results = self._results, []
            want = self._wanted()
            if want and self._queue_empty and not results:
                want = 0  # nothing new in the queue: wait for a sign of work below
            if not results and not want:
                if self._stopping.is_set() and not self._running:
                    return
                if self.burst and self._queue_empty and not self._busy():
                    return
                await self._idle(poll=self._wanted() > 0 and self._queue_empty)
                continue
            recover = self._recovering and not self._stopping.is_set()
            if recover and not await self._recover(results):
                continue
            await self._round_trip(results, want)

    def _busy(self) -> bool:
        return bool(self._running or self._backlog or self._results)

    async def _round_trip(
        self, results: list[tuple[Claim, Result, float]], want: int, *, back_off: bool = True
    ) -> None:
        """One exchange with the queue. On failure the results go to the journal and, unless
        shutting down (``back_off`` false), the next round trip waits a growing, jittered time."""
        start, freed = time.perf_counter(), self._freed
        try:
            done = await self.queue.exchange(
                [(c, r) for c, r, _ in results],
                self.config.agent_name,
                want,
                self.config.lease_seconds,
            )
        except QueueError as exc:
            self._recovering = True
            if want:
                self._claimed(start, exc)
            await self._not_stored(results, exc)
            if back_off:
                await self._back_off(exc)
            return
        except Exception as exc:  # noqa: BLE001 - a bug here must not strand the batch
            self._recovering = True
            log.exception("storing %d result(s) failed", len(results))
            await self._not_stored(results, QueueError(f"storing results failed: {exc!r}"))
            if back_off:
                await self._back_off(None)
            return
        if want:
            self._adapt_prefetch(self._freed - freed)
        fenced = {(c.job.id, c.token) for c in done.fenced}
        for claim, result, seconds in results:
            self._unfinished.pop(claim.job.id, None)
            try:
                self._account(claim, result, seconds, (claim.job.id, claim.token) in fenced)
            except Exception:  # noqa: BLE001 - one result's trouble must not strand the rest
                log.exception("job %s: accounting for its result failed", claim.job.id)
        if want:
            self._claimed(start, done.claim_error)
            if done.claim_error is not None:
                self._recovering = True
                await self._back_off(done.claim_error)
                return
            self._queue_failures = 0
            self._queue_empty = len(done.claims) < want
            self.stats.claimed += len(done.claims)
            for claim in done.claims:
                self._unfinished[claim.job.id] = claim
            self._backlog.extend(done.claims)
            self._fill_slots()

    async def store(self, results: list[tuple[Claim, Result, float]]) -> None:
        """Store finished results now, or journal them when the queue cannot take them."""
        await self._round_trip(results, 0, back_off=False)

    async def _recover(self, results: list[tuple[Claim, Result, float]]) -> bool:
        """The queue failed since the last good round trip: before anything new is claimed,
        hand it the journal's results and renew every lease held. A lease that lapsed meanwhile
        is still this agent's if nobody claimed the job since (the queue then takes its result
        or renewal); a claim made first would take such jobs back (lapsed leases come first)
        and run them again. On failure ``results`` go to the journal and the pump backs off."""
        try:
            delivered = await self._deliver_journal()
            renewed = await self._renew_once()
        except QueueError as exc:
            await self._not_stored(results, exc)
            await self._back_off(exc)
            return False
        self._recovering = False
        log.info(
            "after the queue failure: %d journaled result(s) delivered and %d lease(s) "
            "renewed before claiming again",
            delivered,
            renewed,
        )
        return True

    async def _not_stored(
        self, results: list[tuple[Claim, Result, float]], exc: QueueError
    ) -> None:
        for claim, result, _ in results:
            self._unfinished.pop(claim.job.id, None)
            try:
                await self._keep(claim, result, exc)
            except Exception:  # noqa: BLE001 - one result's trouble must not strand the rest
                log.exception("job %s: keeping its result failed", claim.job.id)

    async def _back_off(self, exc: QueueError | None) -> None:
        self._queue_failures += 1
        delay = random.uniform(0, min(QUEUE_BACKOFF_CAP, 0.5 * 2**self._queue_failures))
        if exc is not None:
            log.error("queue unreachable (%s); retrying in %.1f s", exc, delay)
        # Only a stop cuts the wait short: finishing jobs must not turn it into a tight retry.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _give_back_backlog(self) -> None:
        """Stopping: claimed jobs that never started go back to the queue at once."""
        claims = list(self._backlog)
        self._backlog.clear()
        try:
            await self.queue.release(claims)
        except QueueError as exc:
            log.error("cannot release %d claim(s) (%s); their leases will lapse", len(claims), exc)
        else:
            self.stats.released += len(claims)
            log.info("returned %d claimed job(s) that had not started to the queue", len(claims))
        for claim in claims:
            self._unfinished.pop(claim.job.id, None)

    def _claimed(self, start: float, error: QueueError | None) -> None:
        if self.on_claim is not None:
            try:
                self.on_claim(time.perf_counter() - start, error)
            except Exception:  # noqa: BLE001 - a metrics hook must not stop the worker
                log.exception("claim hook failed")

    async def _idle(self, *, poll: bool) -> None:
        """Wait for the pump's event; with ``poll``, also for a sign of work in the queue (then
        the next round trip claims again)."""
        if not poll:
            await self._pump_wake.wait()
            return
        self._note_idle()
        wake = asyncio.ensure_future(self._pump_wake.wait())
        work = asyncio.ensure_future(self.queue.wait_for_work(self.config.poll_time))
        try:
            await asyncio.wait({wake, work}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (wake, work):
                waiter.cancel()
            await asyncio.gather(wake, work, return_exceptions=True)
        if work.done() and not work.cancelled():
            self._queue_empty = False

    def _note_idle(self) -> None:
        """One debug line per poll cycle, at most one per poll interval or IDLE_NOTE_EVERY
        (wake-ups can make cycles much shorter), so an idle agent at debug shows it polls."""
        if not log.isEnabledFor(logging.DEBUG):
            return
        now = _clock()
        if now - self._idle_noted < max(self.config.poll_time, IDLE_NOTE_EVERY):
            return
        self._idle_noted = now
        log.debug("queue empty, next poll in %gs", self.config.poll_time)

    def _fill_slots(self) -> None:
        if self._stopping.is_set():
            return
        while self._backlog and len(self._running) < self.config.threads_max:
            self._start(self._backlog.popleft())

    def _start(self, claim: Claim) -> None:
        task = asyncio.create_task(self._run_job(claim), name=f"job-{claim.job.id}")
        self._running[task] = claim
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._freed += 1
        if not task.cancelled() and task.exception() is not None:
            log.error("job task failed", exc_info=task.exception())
        self._fill_slots()
        self._pump_wake.set()

    async def _run_job(self, claim: Claim) -> None:
        start = time.perf_counter()
        if claim.problem is not None:
            log.error("%s; it ends as invalid_job", claim.problem)
            result = Result.failed(claim.job.id, "invalid_job", claim.problem)
        else:
            result = await self.engine.run(claim.job, attempts_before=claim.attempt - 1)
        self._results.append((claim, result, time.perf_counter() - start))

    def _account(self, claim: Claim, result: Result, seconds: float, fenced: bool) -> None:
        if fenced:
            self.stats.fenced += 1
            log.warning(
                "job %s: lease was lost and the job re-claimed; result dropped", claim.job.id
            )
            return
        if result.state == "processed":
            self.stats.processed += 1
        else:
            self.stats.errors += 1
            kind = result.error.kind if result.error else "unknown"
            self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1
        log.info(
            "job %s: %s%s in %.0f ms",
            claim.job.id,
            result.state,
            f" ({result.error.kind}: {result.error.message})"
            if result.error
            else f" {result.status}",
            result.elapsed_ms,
            extra=log_fields(claim.job, result),
        )
        if self.on_result is not None:
            self.on_result(claim, result, seconds)

    async def _keep(self, claim: Claim, result: Result, exc: QueueError) -> None:
        """The queue cannot take the result now: journal it for later delivery."""
        if self.journal is None:
            log.error("job %s: cannot store its result (%s); it will run again", claim.job.id, exc)
            return
        await self.journal.put(claim, result)
        self._recovering = True
        self.stats.journaled += 1
        log.warning("job %s: queue unreachable (%s); result kept in the journal", claim.job.id, exc)

    async def deliver_journal(self) -> int:
        """Hand journaled results to the queue; returns how many it took."""
        try:
            return await self._deliver_journal()
        except QueueError as exc:
            self._recovering = True
            log.warning("journal: results still waiting for the queue (%s)", exc)
            return 0

    async def _deliver_journal(self) -> int:
        """``deliver_journal``, raising QueueError when the queue does not take them."""
        if self.journal is None:
            return 0
        pending = await self.journal.pending()
        if not pending:
            return 0
        fenced = {(c.job.id, c.token) for c in await self.queue.complete(pending)}
        await self.journal.remove([claim.job.id for claim, _ in pending])
        taken = [(c, r) for c, r in pending if (c.job.id, c.token) not in fenced]
        for claim, _ in pending:
            if (claim.job.id, claim.token) in fenced:
                self.stats.fenced += 1
                log.warning(
                    "job %s: journaled result refused (claimed again meanwhile, or already stored)",
                    claim.job.id,
                )
        delivered = sum(result.state == "processed" for _, result in taken)
        self.stats.processed += delivered
        self.stats.errors += len(taken) - delivered
        log.info("journal: delivered %d result(s) kept while the queue was away", len(taken))
        return len(taken)

    async def _drain(self) -> None:
        if not self._running:
            return
        log.info(
            "draining %d job(s), at most %.0f s", len(self._running), self.config.drain_seconds
        )
        _, pending = await asyncio.wait(set(self._running), timeout=self.config.drain_seconds)
        if pending:
            log.warning("drain time over: %d job(s) return to the queue", len(pending))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _release_unfinished(self) -> None:
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._results:  # results already made are stored (or journaled), not given back
            results, self._results = self._results, []
            await self.store(results)
        unfinished = list(self._unfinished.values())
        if not unfinished:
            return
        try:
            await self.queue.release(unfinished)
            self.stats.released += len(unfinished)
            log.info("returned %d unfinished job(s) to the queue", len(unfinished))
        except QueueError as exc:
            log.error(
                "cannot release %d claim(s) (%s); their leases will lapse", len(unfinished), exc
            )

    async def _renew_loop(self) -> None:
        interval = max(0.1, self.config.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._renew_once()
            except QueueError as exc:
                self._recovering = True
                log.error("cannot renew leases (%s)", exc)

    async def _renew_once(self) -> int:
        """Extend every lease held; drop the claims another agent took meanwhile. Returns how
        many leases are still ours."""
        claims = list(self._unfinished.values())
        if not claims:
            return 0
        lost = await self.queue.renew(claims, self.config.lease_seconds)
        # A claim whose result was stored (or that was released) meanwhile is not lost.
        lost = [c for c in lost if self._unfinished.get(c.job.id) is c]
        gone = {(c.job.id, c.token) for c in lost}
        dropped = {(c.job.id, c.token) for c in self._backlog} & gone
        if dropped:  # not started yet: another agent has them, so they do not run here
            self._backlog = deque(c for c in self._backlog if (c.job.id, c.token) not in dropped)
        for claim in lost:
            if (claim.job.id, claim.token) in dropped:
                self._unfinished.pop(claim.job.id, None)
                log.warning("job %s: lease lost before it started; not run here", claim.job.id)
            else:
                log.warning(
                    "job %s: lease lost to another agent; its result will be dropped",
                    claim.job.id,
                )
        return len(claims) - len(lost)
