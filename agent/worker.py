"""The daemon's main loop: claim, run, report; drain on the first stop, abort on the second.

``serve → startup → main_loop → shutdown``. Signal handlers only call ``request_stop``. Every
task started here is tracked; result writes run under ``asyncio.shield`` so a stop cannot cut
them in half. ``burst=True`` stops once the queue is empty and nothing is running (tests, demo).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .call import Caller
from .config import AgentConfig
from .errors import QueueError
from .jobs import Job, Result
from .journal import Journal
from .queues.base import Claim, Queue

log = logging.getLogger("agent.worker")

QUEUE_BACKOFF_CAP = 30.0
JOURNAL_RETRY = 5.0


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


def log_fields(job: Job, result: Result) -> dict[str, object]:
    """Structured fields for the job's log line (JSON logs carry them as keys)."""
    parts = urlsplit(job.endpoint)
    scheme = parts.scheme.lower()
    return {
        "job_id": job.id,
        "profile": job.protocol_profile or (scheme if scheme != "https" else None),
        "host": parts.hostname,
        "outcome": result.error.kind if result.error else result.state,
        "status": result.status,
        "duration_ms": result.elapsed_ms,
    }


class Worker:
    def __init__(
        self,
        config: AgentConfig,
        queue: Queue,
        caller: Caller,
        *,
        burst: bool = False,
        on_result: JobHook | None = None,
        journal: Journal | None = None,
        on_claim: ClaimHook | None = None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.caller = caller
        self.burst = burst
        self.on_result = on_result
        self.on_claim = on_claim
        self.journal = journal
        self.stats = Stats()
        self._running: dict[asyncio.Task[None], Claim] = {}
        self._results: list[tuple[Claim, Result, float, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._unfinished: dict[str, Claim] = {}  # claimed, result not yet stored
        self._stopping = asyncio.Event()
        self._aborting = False
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._any = asyncio.Event()  # set with each of the three above: the busy path's one wait
        self._heartbeat: asyncio.Task[None] | None = None
        self._queue_failures = 0
        self._journal_waiting = journal is not None  # results may wait from an earlier run
        self.ready = asyncio.Event()

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
        self._wake.set()
        self._any.set()

    def wake(self) -> None:
        """Poll again now (a push notification or a reload)."""
        self._wake.set()
        self._any.set()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    # ------------------------------------------------------------------------------ lifecycle

    async def serve(self) -> Stats:
        self._heartbeat = asyncio.create_task(self._renew_loop(), name="lease-heartbeat")
        await self.deliver_journal()
        try:
            self.ready.set()
            await self._main_loop()
            await self._drain()
        finally:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            await self._release_unfinished()
        return self.stats

    async def _main_loop(self) -> None:
        while not self._stopping.is_set():
            free = self.config.threads_max - len(self._running)
            if free <= 0:
                await self._wait(slot=True)
                continue
            claims = await self._claim(free)
            for claim in claims:
                self._start(claim)
            if len(claims) == free:
                continue  # work keeps coming: claim again as soon as a slot frees
            if self.burst and not self._running:
                return
            await self._wait(slot=self.burst, idle=True)

    async def _claim(self, limit: int) -> list[Claim]:
        start = time.perf_counter()
        try:
            claims = await self.queue.claim(
                self.config.agent_name, limit, self.config.lease_seconds
            )
        except QueueError as exc:
            self._claimed(start, exc)
            self._queue_failures += 1
            delay = random.uniform(0, min(QUEUE_BACKOFF_CAP, 0.5 * 2**self._queue_failures))
            log.error("queue unreachable (%s); retrying in %.1f s", exc, delay)
            await self._wait(timeout=delay)
            return []
        self._claimed(start, None)
        self._queue_failures = 0
        if self._journal_waiting:
            await self.deliver_journal()
        self.stats.claimed += len(claims)
        return claims

    def _claimed(self, start: float, error: QueueError | None) -> None:
        if self.on_claim is not None:
            try:
                self.on_claim(time.perf_counter() - start, error)
            except Exception:  # noqa: BLE001 - a metrics hook must not stop the worker
                log.exception("claim hook failed")

    async def _wait(
        self, *, slot: bool = False, idle: bool = False, timeout: float | None = None
    ) -> None:
        """Sleep until a slot frees (``slot``), the queue may have work, a wake-up, or a stop."""
        if slot and not idle and timeout is None:
            # The busy path, taken once per freed batch of slots: one event, no helper tasks.
            # Nothing runs between the check and the clear, so no wake-up is lost.
            if not (self._stopping.is_set() or self._wake.is_set() or self._slot_free.is_set()):
                self._any.clear()
                await self._any.wait()
            self._wake.clear()
            self._slot_free.clear()
            return
        waiters: list[Awaitable[object]] = [self._stopping.wait(), self._wake.wait()]
        if slot:
            waiters.append(self._slot_free.wait())
        if idle:
            waiters.append(self.queue.wait_for_work(self.config.poll_time))
        tasks = [asyncio.ensure_future(w) for w in waiters]
        try:
            await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._wake.clear()
        self._slot_free.clear()

    def _start(self, claim: Claim) -> None:
        task = asyncio.create_task(self._run_job(claim), name=f"job-{claim.job.id}")
        self._running[task] = claim
        self._unfinished[claim.job.id] = claim
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._slot_free.set()
        self._any.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("job task failed", exc_info=task.exception())

    async def _run_job(self, claim: Claim) -> None:
        start = time.perf_counter()
        if claim.problem is not None:
            log.error("%s; it ends as invalid_job", claim.problem)
            result = Result.failed(claim.job.id, "invalid_job", claim.problem)
        else:
            result = await self.caller.run(claim.job, attempts_before=claim.attempt - 1)
        await asyncio.shield(self._complete(claim, result, time.perf_counter() - start))

    async def _complete(self, claim: Claim, result: Result, seconds: float) -> None:
        """Hand the result to the writer and wait until it is stored (or journaled)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._results.append((claim, result, seconds, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_results(), name="result-writer")
        await done

    async def _write_results(self) -> None:
        """Group commit: every result that finished while the last write ran goes in the next
        one, so a busy agent pays for one queue transaction per batch instead of per job."""
        while self._results:
            batch, self._results = self._results, []
            error: QueueError | None = None
            fenced: set[tuple[str, int]] = set()
            try:
                lost = await self.queue.complete([(c, r) for c, r, _, _ in batch])
                fenced = {(c.job.id, c.token) for c in lost}
            except QueueError as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - a bug here must not strand the batch
                log.exception("storing %d result(s) failed", len(batch))
                error = QueueError(f"storing results failed: {exc!r}")
            for claim, result, seconds, done in batch:
                try:
                    self._unfinished.pop(claim.job.id, None)
                    if error is not None:
                        await self._keep(claim, result, error)
                    else:
                        self._account(claim, result, seconds, (claim.job.id, claim.token) in fenced)
                except Exception:  # noqa: BLE001 - one result's trouble must not strand the rest
                    log.exception("job %s: storing its result failed", claim.job.id)
                finally:
                    if not done.done():
                        done.set_result(None)

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
        self._journal_waiting = True
        self.stats.journaled += 1
        log.warning("job %s: queue unreachable (%s); result kept in the journal", claim.job.id, exc)

    async def deliver_journal(self) -> int:
        """Hand journaled results to the queue; returns how many were delivered."""
        if self.journal is None:
            return 0
        pending = await self.journal.pending()
        if not pending:
            self._journal_waiting = False
            return 0
        try:
            await self.queue.complete(pending)
        except QueueError as exc:
            log.warning("journal: %d result(s) still waiting for the queue (%s)", len(pending), exc)
            return 0
        await self.journal.remove([claim.job.id for claim, _ in pending])
        self._journal_waiting = False
        delivered = sum(result.state == "processed" for _, result in pending)
        self.stats.processed += delivered
        self.stats.errors += len(pending) - delivered
        log.info("journal: delivered %d result(s) kept while the queue was away", len(pending))
        return len(pending)

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
        if self._writer is not None:  # results already made are stored, not given back
            await asyncio.gather(self._writer, return_exceptions=True)
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
            claims = list(self._running.values())
            if not claims:
                continue
            try:
                lost = await self.queue.renew(claims, self.config.lease_seconds)
            except QueueError as exc:
                log.error("cannot renew leases (%s)", exc)
                continue
            for claim in lost:
                log.warning(
                    "job %s: lease lost to another agent; its result will be dropped", claim.job.id
                )
