"""The claims this agent holds until their results are stored: renewing, losing, releasing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from agent.errors import QueueError
from agent.queues.base import Claim, Queue
from agent.worker.backlog import Backlog

log = logging.getLogger("agent.worker")


class Leases:
    """Every claim whose result is not stored yet, by job id; each lease renewed while held.

    ``lease_seconds`` is read when needed (a reload may change it between renewals).
    """

    def __init__(self, queue: Queue, lease_seconds: Callable[[], float]) -> None:
        self.queue = queue
        self.lease_seconds = lease_seconds
        self._held: dict[str, Claim] = {}
        self.on_lost: Callable[[int], None] | None = None  # told how many were lost

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, claims: Iterable[Claim]) -> None:
        for claim in claims:
            self._held[claim.job.id] = claim

    def done(self, claim: Claim) -> None:
        """Its result was stored (or handed elsewhere): no longer this agent's to renew."""
        self._held.pop(claim.job.id, None)

    def held(self) -> list[Claim]:
        return list(self._held.values())

    async def renew_loop(self, backlog: Backlog, on_failure: Callable[[], None]) -> None:
        """Renew every lease a third of the way through it, until cancelled."""
        while True:
            await asyncio.sleep(max(0.1, self.lease_seconds() / 3))
            try:
                await self.renew_once(backlog)
            except QueueError as exc:
                on_failure()
                log.error("cannot renew leases (%s)", exc)

    async def renew_once(self, backlog: Backlog) -> int:
        """Extend every lease held; drop the claims another agent took meanwhile (those not
        started yet leave ``backlog``: they do not run here). Returns how many are still ours."""
        claims = self.held()
        if not claims:
            return 0
        lost = await self.queue.renew(claims, self.lease_seconds())
        # A claim whose result was stored (or that was released) meanwhile is not lost.
        lost = [c for c in lost if self._held.get(c.job.id) is c]
        dropped = backlog.drop({(c.job.id, c.token) for c in lost})
        if lost and self.on_lost is not None:
            self.on_lost(len(lost))
        for claim in lost:
            if (claim.job.id, claim.token) in dropped:
                self.done(claim)
                log.warning("job %s: lease lost before it started; not run here", claim.job.id)
            else:
                log.warning(
                    "job %s: lease lost to another agent; its result will be dropped",
                    claim.job.id,
                )
        return len(claims) - len(lost)

    async def release_all(self) -> int:
        """Hand every claim still held back to the queue; returns how many it took."""
        unfinished = self.held()
        if not unfinished:
            return 0
        try:
            await self.queue.release(unfinished)
        except QueueError as exc:
            log.error(
                "cannot release %d claim(s) (%s); their leases will lapse", len(unfinished), exc
            )
            return 0
        log.info("returned %d unfinished job(s) to the queue", len(unfinished))
        return len(unfinished)
