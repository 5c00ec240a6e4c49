"""The daemon's main loop: claim, run, report; drain on the first stop, abort on the second.

``serve`` is ``startup`` (lease heartbeat, the journal delivered), ``main_loop`` (the queue task
until a stop, then the drain) and ``shutdown`` (what finished is stored, what did not is given
back). Signal handlers only call ``request_stop``. Every task started here is tracked; job tasks
never write to the queue themselves, so cancelling one cannot cut a write in half.
``burst=True`` stops once the queue is empty and nothing is running (tests, demo).

Collaborators, each testable alone: ``Backlog`` (claimed jobs waiting for a slot, and how many
to claim ahead), ``Leases`` (claims held until their results are stored), ``Delivery`` (a result
accounted, journaled, delivered from the journal), ``Slots`` (jobs parked at a target's gate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from agent.config.config import AgentConfig
from agent.engine.engine import Engine
from agent.errors import ErrorKind, QueueError
from agent.http.call import backoff
from agent.http.targets import Hooks
from agent.jobs.results import Result
from agent.queues.base import Claim, Queue
from agent.queues.journal import Journal
from agent.worker.backlog import Backlog
from agent.worker.delivery import Delivery, Finished, JobHook
from agent.worker.leases import Leases
from agent.worker.slots import Slots
from agent.worker.stats import Stats

log = logging.getLogger("agent.worker")

QUEUE_BACKOFF_BASE = 1.0  # seconds: the first failure waits up to 1 s, then 2, 4 ... (jittered)
QUEUE_BACKOFF_CAP = 30.0
IDLE_NOTE_EVERY = 10.0  # seconds: at most one "queue empty" debug line per this (or per poll)
_clock = time.monotonic  # for the idle note's rate limit (tests replace it)

ClaimHook = Callable[[float, QueueError | None], None]  # seconds the claim took, its failure


class Worker:
    """A pipeline of three parts that never wait on one another:

    - up to ``threads.max`` job tasks, each running one call;
    - a backlog of claimed jobs, as many as start during a few round trips to the queue, so a
      freed slot starts its next job at once instead of waiting for one;
    - one queue task that, per round trip, stores every result finished since the last one
      and claims enough jobs to fill the slots and the backlog (``Queue.exchange``: a single
      transaction where the backend allows).

    A job's slot frees as soon as its call returns; its claim stays held (and its lease
    renewed) until the result is stored. The worker keeps no configuration: it reads the
    settings in force from the engine's state when it needs them.
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
        self.on_claim = on_claim
        self.stats = Stats()
        self.backlog = Backlog(prefetch)
        self.leases = Leases(queue, lambda: self.config.lease_seconds)
        self.delivery = Delivery(queue, self.stats, journal, on_result)
        self._running: dict[asyncio.Task[None], Claim] = {}
        self.slots = Slots(lambda: self.config.threads_max, lambda: len(self._running))
        self._results: list[Finished] = []  # finished, not stored
        self._stopping = asyncio.Event()
        self._aborting = False
        self._pump_wake = asyncio.Event()  # results to store, free room, a wake-up or a stop
        self._queue_empty = False  # the last claim got fewer jobs than it asked for
        self._freed = 0  # slots freed so far (jobs finished or given up)
        self._queue_failures = 0
        # The queue failed since the last good round trip (or results wait in the journal):
        # before the next claim, deliver the journal and renew every lease (see ``_recover``).
        self._recovering = False
        self._idle_noted = -float("inf")  # when the last "queue empty" debug line was written
        self._heartbeat: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    @property
    def config(self) -> AgentConfig:
        """The configuration in force now (a reload changes it between jobs)."""
        return self.engine.state.config

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def prefetch(self) -> int:
        """Claimed jobs kept waiting for a slot (see ``Backlog.adapt``)."""
        return self.backlog.prefetch

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

    async def serve(self) -> Stats:
        await self.startup()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()
        return self.stats

    async def startup(self) -> None:
        """Leases renew from now on; results journaled while the queue was away are handed
        to it before anything new is claimed."""
        self._heartbeat = asyncio.create_task(
            self.leases.renew_loop(self.backlog, self._queue_failed), name="lease-heartbeat"
        )
        await self.deliver_journal()
        self._pump = asyncio.create_task(self._pump_loop(), name="queue-pump")
        self.ready.set()

    async def main_loop(self) -> None:
        """Until a stop (or, in burst mode, an empty queue); then the running jobs drain."""
        assert self._pump is not None
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({self._pump, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not self._pump.done():
            await self._drain()
        await self._pump

    async def shutdown(self) -> None:
        """Whatever happened above: no task left behind, results made are stored (or
        journaled), and every claim still held goes back to the queue."""
        for task in (self._pump, self._heartbeat):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._results:
            results, self._results = self._results, []
            await self.store(results)
        self.stats.released += await self.leases.release_all()

    async def _drain(self) -> None:
        if not self._running:
            return
        seconds = self.config.drain_seconds
        log.info("draining %d job(s), at most %.0f s", len(self._running), seconds)
        _, pending = await asyncio.wait(set(self._running), timeout=seconds)
        if pending:
            log.warning("drain time over: %d job(s) return to the queue", len(pending))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _pump_loop(self) -> None:
        """The queue task: store results and claim, one round trip at a time, until stopped (or,
        in burst mode, until the queue is empty and everything claimed is stored)."""
        while True:
            self._pump_wake.clear()
            if self._stopping.is_set() and self.backlog:
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

    def _wanted(self) -> int:
        if self._stopping.is_set():
            return 0
        if not self.slots.may_claim():
            return 0  # enough jobs wait on their targets: claim more when some go
        return self.backlog.wanted(self.config.threads_max, self.slots.active)

    def _busy(self) -> bool:
        return bool(self._running or self.backlog or self._results)

    async def _round_trip(
        self, results: list[Finished], want: int, *, back_off: bool = True
    ) -> None:
        """One exchange with the queue. On failure the results go to the journal and, unless
        shutting down (``back_off`` false), the next round trip waits a growing, jittered time."""
        start, freed = time.perf_counter(), self._freed
        config = self.config
        try:
            done = await self.queue.exchange(
                [(c, r) for c, r, _ in results], config.agent_name, want, config.lease_seconds
            )
        except Exception as exc:  # noqa: BLE001 - a bug here must not strand the batch
            error = exc if isinstance(exc, QueueError) else None
            if error is None:
                log.exception("storing %d result(s) failed", len(results))
            elif want:
                self._claimed(start, error)
            await self._not_stored(results, error or QueueError(f"storing results failed: {exc!r}"))
            if back_off:
                await self._back_off(error)
            return
        for claim, _, _ in results:
            self.leases.done(claim)
        self.delivery.stored(results, {(c.job.id, c.token) for c in done.fenced})
        if not want:
            return
        self.backlog.adapt(self._freed - freed, config.threads_max)
        self._claimed(start, done.claim_error)
        if done.claim_error is not None:
            self._recovering = True
            await self._back_off(done.claim_error)
            return
        self._queue_failures = 0
        self._queue_empty = len(done.claims) < want
        self.stats.claimed += len(done.claims)
        self.leases.hold(done.claims)
        self.backlog.extend(done.claims)
        self._fill_slots()

    async def store(self, results: list[Finished]) -> None:
        """Store finished results now, or journal them when the queue cannot take them."""
        await self._round_trip(results, 0, back_off=False)

    async def _not_stored(self, results: list[Finished], exc: QueueError) -> None:
        self._recovering = True
        for claim, _, _ in results:
            self.leases.done(claim)  # journaled or lost: renewing it would help nobody
        await self.delivery.not_stored(results, exc)

    async def _recover(self, results: list[Finished]) -> bool:
        """The queue failed since the last good round trip: before anything new is claimed,
        hand it the journal's results and renew every lease held. A lease that lapsed meanwhile
        is still this agent's if nobody claimed the job since (the queue then takes its result
        or renewal); a claim made first would take such jobs back (lapsed leases come first)
        and run them again. On failure ``results`` go to the journal and the pump backs off."""
        try:
            delivered = await self.delivery.deliver_journal()
            renewed = await self.leases.renew_once(self.backlog)
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

    async def deliver_journal(self) -> int:
        """Hand journaled results to the queue; returns how many it took."""
        try:
            return await self.delivery.deliver_journal()
        except QueueError as exc:
            self._recovering = True
            log.warning("journal: results still waiting for the queue (%s)", exc)
            return 0

    def _queue_failed(self) -> None:
        self._recovering = True

    async def _back_off(self, exc: QueueError | None) -> None:
        self._queue_failures += 1
        delay = backoff(self._queue_failures, QUEUE_BACKOFF_BASE, QUEUE_BACKOFF_CAP)
        if exc is not None:
            log.error("queue unreachable (%s); retrying in %.1f s", exc, delay)
        # Only a stop cuts the wait short: finishing jobs must not turn it into a tight retry.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _give_back_backlog(self) -> None:
        # stopping: claimed jobs that never started go back to the queue at once
        claims = self.backlog.take_all()
        try:
            await self.queue.release(claims)
        except QueueError as exc:
            log.error("cannot release %d claim(s) (%s); their leases will lapse", len(claims), exc)
        else:
            self.stats.released += len(claims)
            log.info("returned %d claimed job(s) that had not started to the queue", len(claims))
        for claim in claims:
            self.leases.done(claim)

    def _claimed(self, start: float, error: QueueError | None) -> None:
        try:
            if self.on_claim is not None:
                self.on_claim(time.perf_counter() - start, error)
        except Exception:  # noqa: BLE001 - a metrics hook must not stop the worker
            log.exception("claim hook failed")

    async def _idle(self, *, poll: bool) -> None:
        """Wait for the pump's event; with ``poll``, also for a sign of work in the queue."""
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
        """A debug line per poll cycle, at most one per poll interval or IDLE_NOTE_EVERY."""
        if not log.isEnabledFor(logging.DEBUG):
            return
        now = _clock()
        poll = self.config.poll_time
        if now - self._idle_noted < max(poll, IDLE_NOTE_EVERY):
            return
        self._idle_noted = now
        log.debug("queue empty, next poll in %gs", poll)

    def _fill_slots(self) -> None:
        if self._stopping.is_set():
            return
        while self.backlog and self.slots.may_start():
            self._start(self.backlog.next())

    def _start(self, claim: Claim) -> None:
        task = asyncio.create_task(self._run_job(claim), name=f"job-{claim.job.id}")
        self._running[task] = claim
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self.slots.done(task)
        self._freed += 1
        if not task.cancelled() and task.exception() is not None:
            log.error("job task failed", exc_info=task.exception())
        self._fill_slots()
        self._pump_wake.set()

    async def _run_job(self, claim: Claim) -> None:
        start = time.perf_counter()
        if claim.problem is not None:
            log.error("%s; it ends as invalid_job", claim.problem)
            result = Result.failed(claim.job.id, ErrorKind.INVALID_JOB, claim.problem)
        else:
            task: asyncio.Task[None] = asyncio.current_task()  # type: ignore[assignment]
            hooks = Hooks(lambda: self._park(task), lambda: self.slots.resume(task))
            requeue = self.queue.delays_retries and not self.burst  # burst: retries here
            result = await self.engine.run(
                claim.job, claim.attempt - 1, hooks, history=claim.history, requeue=requeue
            )
        self._results.append((claim, result, time.perf_counter() - start))

    def _park(self, task: asyncio.Task[None]) -> None:
        self.slots.park(task)  # waiting at its target's gate: its slot goes to the next job
        self._fill_slots()
        self._pump_wake.set()
