"""What happens to a result once made: accounted for and logged when the queue stored it, kept in
the journal when the queue could not, and handed to the queue from the journal later."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from agent.errors import QueueError
from agent.jobs.results import Result
from agent.queues.base import Claim, Queue
from agent.queues.journal import Journal
from agent.worker.stats import Stats, log_fields

log = logging.getLogger("agent.worker")

JobHook = Callable[[Claim, Result, float], None]
Finished = tuple[Claim, Result, float]  # a claim, its result, the seconds it ran


class Delivery:
    def __init__(
        self,
        queue: Queue,
        stats: Stats,
        journal: Journal | None = None,
        on_result: JobHook | None = None,
    ) -> None:
        self.queue = queue
        self.stats = stats
        self.journal = journal
        self.on_result = on_result

    def stored(self, results: list[Finished], fenced: set[tuple[str, int]]) -> None:
        """The queue took ``results``; those ``fenced`` (job id, token) it refused."""
        for claim, result, seconds in results:
            try:
                self._account(claim, result, seconds, (claim.job.id, claim.token) in fenced)
            except Exception:  # noqa: BLE001 - one result's trouble must not strand the rest
                log.exception("job %s: accounting for its result failed", claim.job.id)

    def _account(self, claim: Claim, result: Result, seconds: float, fenced: bool) -> None:
        if fenced:
            self.stats.fenced += 1
            log.warning(
                "job %s: lease was lost and the job re-claimed; result dropped", claim.job.id
            )
            return
        if result.retry_at is not None:
            self.stats.retried += 1
            assert result.error is not None
            log.warning(
                "job %s: attempt %d failed (%s: %s); it runs again from %s",
                claim.job.id,
                result.attempts,
                result.error.kind,
                result.error.message,
                dt.datetime.fromtimestamp(result.retry_at, dt.UTC).isoformat(timespec="seconds"),
                extra=log_fields(claim.job, result),
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

    async def not_stored(self, results: list[Finished], exc: QueueError) -> bool:
        """The queue could not take ``results``: journal them. Returns whether any was."""
        journaled = False
        for claim, result, _ in results:
            try:
                journaled |= await self._keep(claim, result, exc)
            except Exception:  # noqa: BLE001 - one result's trouble must not strand the rest
                log.exception("job %s: keeping its result failed", claim.job.id)
        return journaled

    async def _keep(self, claim: Claim, result: Result, exc: QueueError) -> bool:
        if self.journal is None:
            log.error("job %s: cannot store its result (%s); it will run again", claim.job.id, exc)
            return False
        await self.journal.put(claim, result)
        self.stats.journaled += 1
        log.warning("job %s: queue unreachable (%s); result kept in the journal", claim.job.id, exc)
        return True

    async def deliver_journal(self) -> int:
        """Hand journaled results to the queue; returns how many it took. Raises QueueError
        when the queue does not take them (they stay in the journal)."""
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
