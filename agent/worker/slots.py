"""The worker's slots (``threads.max``) and the jobs that give theirs up while they wait at a
target's gate (a limit, an open breaker): such a job is *parked*; once admitted it waits for a
slot again, ahead of jobs not yet started."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

PARKED_MAX_FACTOR = 4  # jobs parked at gates: at most this many times threads.max


class Slots:
    def __init__(self, limit: Callable[[], int], running: Callable[[], int]) -> None:
        self._limit = limit  # threads.max in force
        self._running = running  # job tasks started and not done
        self.parked: set[asyncio.Task[None]] = set()
        self.resuming = 0  # admitted jobs waiting for a slot
        self._freed = asyncio.Event()

    @property
    def active(self) -> int:
        """Jobs holding a slot: started, not parked."""
        return self._running() - len(self.parked)

    def may_start(self) -> bool:
        """Whether a job not yet started may take a slot now."""
        return self.active < self._limit() and not self.resuming

    def may_claim(self) -> bool:
        """Whether to claim more: not while many jobs are parked."""
        return len(self.parked) < self._limit() * PARKED_MAX_FACTOR

    def park(self, task: asyncio.Task[None]) -> None:
        self.parked.add(task)
        self._freed.set()

    def done(self, task: asyncio.Task[None]) -> None:
        self.parked.discard(task)
        self._freed.set()

    async def resume(self, task: asyncio.Task[None]) -> None:
        """Until ``task`` (parked) holds a slot again."""
        self.resuming += 1
        try:
            while self.active >= self._limit():
                self._freed.clear()
                await self._freed.wait()
        finally:
            self.resuming -= 1
            self.parked.discard(task)
