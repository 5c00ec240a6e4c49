"""Claimed jobs waiting for a slot, and how many to keep claimed ahead."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from agent.queues.base import Claim

PREFETCH_MAX_FACTOR = 10  # the backlog grows to at most this many times threads.max


class Backlog:
    """Claimed, not started. Its size follows the pace jobs start at (``adapt``)."""

    def __init__(self, prefetch: int = 0) -> None:
        self._claims: deque[Claim] = deque()
        self.prefetch = prefetch  # jobs to keep claimed beyond the slots

    def __len__(self) -> int:
        return len(self._claims)

    def __iter__(self) -> Iterator[Claim]:
        return iter(self._claims)

    def extend(self, claims: Iterable[Claim]) -> None:
        self._claims.extend(claims)

    def next(self) -> Claim:
        return self._claims.popleft()

    def take_all(self) -> list[Claim]:
        claims = list(self._claims)
        self._claims.clear()
        return claims

    def drop(self, gone: set[tuple[str, int]]) -> set[tuple[str, int]]:
        """Remove the claims ``gone`` names (job id, token); returns those that were here."""
        here = {(c.job.id, c.token) for c in self._claims} & gone
        if here:
            self._claims = deque(c for c in self._claims if (c.job.id, c.token) not in here)
        return here

    def wanted(self, slots: int, running: int) -> int:
        """Jobs to claim now: room in the slots and the backlog."""
        return max(0, slots + self.prefetch - running - len(self._claims))

    def adapt(self, freed: int, slots: int) -> None:
        """Size the backlog to cover the slowest recent round trips at the pace jobs start.

        ``freed`` slots came free while the last round trip ran: that many jobs could have
        started then, had the backlog held them. Trips vary: each waits for the write lock,
        which other agent processes share, and for a disk flush, so one slow trip in many would
        leave the slots without work. The backlog grows at once to four trips' worth and shrinks
        by 1% a trip, to at most ``PREFETCH_MAX_FACTOR`` times the slots. Slow jobs (few finish
        per trip) keep it near empty, so jobs are not held back from other agents, or stranded
        for a lease period if this one dies, for nothing.
        """
        cap = slots * PREFETCH_MAX_FACTOR
        self.prefetch = min(cap, max(4 * freed, int(self.prefetch * 0.99)))
