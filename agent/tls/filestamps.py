"""When the profiles' key material files last changed: a rotated keystore reaches new
connections without a SIGHUP.

Every loaded profile's files are looked at together, in one thread hop, at most once per
``STAT_INTERVAL`` and only when a job asks: one look per profile and second was a thread hop
every few jobs once a thousand profiles were in use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from agent.config.config import ProfileConfig

STAT_INTERVAL = 1.0  # seconds between looks at the profiles' files for changes


def files_of(profile: ProfileConfig) -> tuple[Path, ...]:
    return tuple(p for p in (profile.path, profile.key, profile.truststore) if p is not None)


def mtimes(paths: tuple[Path, ...]) -> tuple[float, ...]:
    """Each file's modification time (-1 for one that cannot be read)."""
    out = []
    for p in paths:
        try:
            out.append(p.stat().st_mtime)
        except OSError:
            out.append(-1.0)
    return tuple(out)


def _stat_all(paths: tuple[Path, ...]) -> dict[Path, float]:
    return dict(zip(paths, mtimes(paths), strict=True))


class FileStamps:
    """Modification times of all the files ``watched`` names, from one look shared by every
    job that needs it, taken again once it is STAT_INTERVAL old."""

    def __init__(self, watched: Callable[[], Iterable[Path]]) -> None:
        self.watched = watched
        self._seen: dict[Path, float] = {}
        self._seen_at = -STAT_INTERVAL
        self._looking: asyncio.Task[dict[Path, float]] | None = None

    def stale(self) -> None:
        """The next ``of`` looks again (as if STAT_INTERVAL had passed)."""
        self._seen_at = -STAT_INTERVAL

    async def of(self, files: tuple[Path, ...]) -> tuple[float, ...]:
        # twice at most: a look already under way may have been started without these files
        for _ in range(2):
            fresh = time.monotonic() - self._seen_at < STAT_INTERVAL
            if fresh and all(p in self._seen for p in files):
                break
            await self._look(files)
        return tuple(self._seen.get(p, -1.0) for p in files)

    async def _look(self, files: tuple[Path, ...]) -> None:
        if self._looking is None:
            paths = set(self.watched())
            paths.update(files)
            task = asyncio.ensure_future(asyncio.to_thread(_stat_all, tuple(paths)))
            task.add_done_callback(self._looked)
            self._looking = task
        await asyncio.shield(self._looking)

    def _looked(self, task: asyncio.Task[dict[Path, float]]) -> None:
        self._looking = None
        if not task.cancelled() and task.exception() is None:
            self._seen, self._seen_at = task.result(), time.monotonic()
