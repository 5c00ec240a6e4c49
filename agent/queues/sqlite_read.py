"""The embedded queue's reads for people and tools: one job's status, the counts by state,
and the job list of ``agent jobs``. Each is one statement on the queue's thread."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from agent.jobs.results import Result
from agent.queues.base import JobStatus, QueueSummary
from agent.queues.rows import JobRow, job_row
from agent.queues.sqlite_sql import LIST_JOBS, SUMMARY

T = TypeVar("T")


class SqliteReads:
    """Mixed into ``SqliteQueue``, which provides ``db`` and ``_run``."""

    @property
    def db(self) -> Any:
        raise NotImplementedError

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError

    async def status(self, job_id: str) -> JobStatus | None:
        def read() -> tuple[str, str | None] | None:
            row = self.db.execute("SELECT state, result FROM jobs WHERE id = ?", (job_id,))
            found: tuple[str, str | None] | None = row.fetchone()
            return found

        row = await self._run(read)
        if row is None:
            return None
        state, result = row
        final = state in ("processed", "error")  # a waiting retry has no result yet
        parsed = Result.from_dict(json.loads(result)) if result and final else None
        return JobStatus(job_id, state, parsed)  # type: ignore[arg-type]

    async def summary(self) -> QueueSummary | None:
        def read() -> QueueSummary:
            rows = self.db.execute(SUMMARY).fetchall()
            counts = {state: n for state, n, _ in rows}
            oldest = next((first for state, _, first in rows if state == "ready"), None)
            return QueueSummary.of(counts, None if oldest is None else time.time() - oldest)

        return await self._run(read)

    async def list_jobs(self, state: str | None, limit: int) -> list[JobRow]:
        def read() -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = self.db.execute(
                LIST_JOBS, (state, state, limit)
            ).fetchall()
            return rows

        return [job_row(*row) for row in await self._run(read)]
