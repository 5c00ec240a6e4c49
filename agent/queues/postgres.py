"""The shared queue: one PostgreSQL table that many agents on many hosts claim from.

Each operation is one statement, so one round trip and one short transaction:

- ``enqueue`` inserts with ``ON CONFLICT (id) DO NOTHING`` and, in the same statement,
  ``pg_notify`` on channel ``agent_jobs``; the notification is sent only at commit. A second
  statement of the same transaction refuses the batch if an id was already there with another
  job (its digest differs).
- ``claim`` locks candidates with ``FOR UPDATE SKIP LOCKED`` (two agents never wait for or take
  the same row), lapsed leases first, then ready jobs in enqueue order, and bumps ``token`` and
  ``attempt`` as the embedded queue does.
- ``renew``/``complete``/``release`` take the whole batch as ``unnest`` arrays and match each row
  on ``(id, token)``: a claim whose token is no longer current is fenced out and reported back.

A job's secret fields are stored sealed (column ``secrets``, see ``base.stored_form``; the
agents sharing the queue need copies of one key file) and set to NULL with the result.

Leases are compared with the server's clock (``now()``), so agents' clocks need not agree.
``wait_for_work`` listens on a dedicated connection, opened in ``open()`` so no notification sent
after start-up is missed; if that connection drops it is reopened lazily, and meanwhile waiting
falls back to sleeping for the poll interval. The schema is created and migrated under a
transaction-scoped advisory lock, so agents starting together do not race.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg

from agent.config.secure import JobKey
from agent.errors import QueueError
from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.queues.base import (
    Claim,
    Exchange,
    JobStatus,
    Queue,
    QueueSummary,
    claim_of,
    different_content,
    dumps,
    redact_url,
    stored_form,
    with_history,
)
from agent.queues.postgres_sql import (
    CLAIM,
    COMPLETE,
    DIFFERENT_CONTENT,
    ENQUEUE,
    MIGRATIONS,
    RELEASE,
    RENEW,
)
from agent.queues.rows import JobRow, job_row

log = logging.getLogger("agent.queues.postgres")

T = TypeVar("T")

CHANNEL = "agent_jobs"
SCHEMA_LOCK = 0x6A6F62715F7363  # pg_advisory_xact_lock key: serialises migrations
CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
LISTEN_RETRY = 5.0  # seconds between attempts to reopen a lost LISTEN connection
CONNECT_HINT = "; check parameter url (host, port, database, user, password) and the server"
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def _complete_args(results: list[tuple[Claim, Result]]) -> tuple[list[Any], ...]:
    return (
        [c.job.id for c, _ in results],
        [c.token for c, _ in results],
        [r.stored_state for _, r in results],
        [dumps(r.to_dict()) for _, r in results],
        [r.retry_at for _, r in results],
    )


def _claims(rows: list[Any], max_job_bytes: int, key: JobKey | None) -> list[Claim]:
    rows = sorted(rows, key=lambda row: (-row[6], row[7], row[4]))  # RETURNING keeps no order
    return [
        with_history(claim_of(row[0], row[1], row[2], row[3], max_job_bytes, row[5], key), row[8])
        for row in rows
    ]


def _fenced(claims: list[Claim], rows: list[Any]) -> list[Claim]:
    """The claims whose (id, token) the statement did not match."""
    matched = {(row[0], row[1]) for row in rows}
    return [c for c in claims if (c.job.id, c.token) not in matched]


class PostgresQueue(Queue):
    delays_retries = True  # a retry is stored back as ready, due after its back-off

    def __init__(self, url: str, *, pool_size: int = 8, key: JobKey | None = None) -> None:
        """``key`` seals jobs' secrets (without one, a job carrying secrets is refused)."""
        self.url = url
        self.key = key
        self.pool_size = pool_size
        self._pool: Any = None  # asyncpg.Pool
        self._listener: Any = None  # asyncpg.Connection holding LISTEN
        self._listen_retry_at = 0.0
        self._listen_failing = False  # log a lost LISTEN once, not on every retry
        self._notified = asyncio.Event()
        self._connecting: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"PostgresQueue({redact_url(self.url)!r})"

    def _error(self, exc: BaseException, doing: str, hint: str = "") -> QueueError:
        """A QueueError naming the redacted URL; the password never appears, even if echoed."""
        text = f"{exc.__class__.__name__}: {exc}".strip().rstrip(":")
        password = urlsplit(self.url).password
        if password:
            text = text.replace(password, "***")
        return QueueError(f"queue {redact_url(self.url)}: {doing} failed ({text}){hint}")

    async def _db(self, doing: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        return await self._pool_call(doing, fn)

    async def _pool_call(self, doing: str, fn: Callable[[Any], Awaitable[T]], hint: str = "") -> T:
        if self._pool is None:
            raise QueueError(f"queue {redact_url(self.url)} is not open")
        try:
            return await fn(self._pool)
        except DB_ERRORS as exc:
            raise self._error(exc, doing, hint) from exc

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            # min_size=0: connections are made on demand, so an outage does not leave the pool
            # retrying a connection floor in the background.
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=0,
                max_size=self.pool_size,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
            )
        except ValueError as exc:  # a malformed URL: asyncpg names the part
            raise QueueError(f"url {redact_url(self.url)!r}: {exc}") from None
        except DB_ERRORS as exc:
            raise self._error(exc, "connect", CONNECT_HINT) from exc
        try:
            await self._pool_call("connect", self._migrate, CONNECT_HINT)
        except QueueError:
            await self.close()
            raise
        await self._listen()

    async def _migrate(self, pool: Any) -> None:
        async with pool.acquire() as con, con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            await con.execute(
                "CREATE TABLE IF NOT EXISTS agent_schema_version (version integer NOT NULL)"
            )
            version = await con.fetchval("SELECT max(version) FROM agent_schema_version") or 0
            for number, ddl in enumerate(MIGRATIONS[version:], start=version + 1):
                await con.execute(ddl)
                await con.execute("INSERT INTO agent_schema_version VALUES ($1)", number)
                log.info("queue schema migrated to version %d", number)

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        await self._drop_listener()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT)
            except (TimeoutError, *DB_ERRORS):
                pool.terminate()

    # -- notifications -----------------------------------------------------------------------

    async def _listen(self) -> None:
        """Open the LISTEN connection; on failure, waiting polls until a later retry works."""
        self._listen_retry_at = time.monotonic() + LISTEN_RETRY
        con = None
        try:
            con = await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT)
            await con.add_listener(CHANNEL, self._on_notify)
        except DB_ERRORS as exc:
            if con is not None:
                con.terminate()
            if not self._listen_failing:
                log.warning("%s; polling instead until it works", self._error(exc, "LISTEN"))
            self._listen_failing = True
            return
        con.add_termination_listener(self._on_listener_lost)
        self._listener = con
        if self._listen_failing:
            log.info("queue %s: LISTEN connection back", self)
        self._listen_failing = False
        self._notified.set()  # jobs may have come while nobody listened

    def _on_notify(self, *_: object) -> None:
        self._notified.set()

    def _on_listener_lost(self, con: object) -> None:
        if con is self._listener:
            log.warning("queue %s: LISTEN connection lost; polling until it is back", self)
            self._listener = None
            self._listen_failing = True
            self._notified.set()  # poll once now: a notification may have been lost with it

    async def _drop_listener(self) -> None:
        con, self._listener = self._listener, None
        if con is not None and not con.is_closed():
            try:
                await asyncio.wait_for(con.close(), CONNECT_TIMEOUT)
            except (TimeoutError, *DB_ERRORS):
                con.terminate()

    async def wait_for_work(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._reconnect_if_due()
            if self._notified.is_set():
                self._notified.clear()
                return
            now = time.monotonic()
            if now >= deadline:
                return
            step = deadline - now
            if self._listener is None:  # wake up for the next reconnect attempt
                step = min(step, max(0.05, self._listen_retry_at - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._notified.wait(), step)

    def _reconnect_if_due(self) -> None:
        if (
            self._listener is None
            and self._pool is not None
            and self._connecting is None
            and time.monotonic() >= self._listen_retry_at
        ):
            # A task of its own: the worker cancels this wait whenever a slot frees, which
            # must not cut a reconnect in half. A successful one sets ``_notified``.
            self._connecting = asyncio.create_task(self._listen(), name="queue-listen")
            self._connecting.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[None]) -> None:
        self._connecting = None

    # -- operations --------------------------------------------------------------------------

    async def enqueue(self, jobs: list[Job]) -> list[str]:
        if jobs:
            rows = stored_form(jobs, self.key)
            ids, digests = [r.id for r in rows], [r.digest for r in rows]
            args = (
                [r.body for r in rows],
                CHANNEL,
                [r.sealed for r in rows],
                digests,
                [r.due for r in rows],
                [r.priority for r in rows],
            )

            async def insert(pool: Any) -> str | None:
                async with pool.acquire() as con, con.transaction():
                    await con.execute(ENQUEUE, ids, *args)
                    clash: str | None = await con.fetchval(DIFFERENT_CONTENT, ids, digests)
                    if clash is not None:
                        raise different_content(clash)  # rolls the batch back
                return clash

            await self._db("enqueue", insert)
        return [j.id for j in jobs]

    async def claim(self, agent: str, limit: int, lease_seconds: float) -> list[Claim]:
        if limit <= 0:
            return []
        rows = await self._db(
            "claim", lambda pool: pool.fetch(CLAIM, agent, float(lease_seconds), limit)
        )
        return _claims(rows, self.max_job_bytes, self.key)

    async def renew(self, claims: list[Claim], lease_seconds: float) -> list[Claim]:
        if not claims:
            return []
        ids, tokens = [c.job.id for c in claims], [c.token for c in claims]
        rows = await self._db(
            "renew", lambda pool: pool.fetch(RENEW, ids, tokens, float(lease_seconds))
        )
        return _fenced(claims, rows)

    async def complete(self, results: list[tuple[Claim, Result]]) -> list[Claim]:
        if not results:
            return []
        rows = await self._db(
            "complete", lambda pool: pool.fetch(COMPLETE, *_complete_args(results))
        )
        return _fenced([c for c, _ in results], rows)

    async def exchange(
        self,
        results: list[tuple[Claim, Result]],
        agent: str,
        limit: int,
        lease_seconds: float,
    ) -> Exchange:
        """Results and the next claims in one transaction: one commit for both."""

        async def both(pool: Any) -> tuple[list[Any], list[Any]]:
            async with pool.acquire() as con, con.transaction():
                stored = await con.fetch(COMPLETE, *_complete_args(results)) if results else []
                taken = (
                    await con.fetch(CLAIM, agent, float(lease_seconds), limit) if limit > 0 else []
                )
            return stored, taken

        stored, taken = await self._db("exchange", both)
        return Exchange(
            _fenced([c for c, _ in results], stored), _claims(taken, self.max_job_bytes, self.key)
        )

    async def release(self, claims: list[Claim]) -> None:
        if claims:
            ids, tokens = [c.job.id for c in claims], [c.token for c in claims]
            await self._db("release", lambda pool: pool.execute(RELEASE, ids, tokens))

    async def status(self, job_id: str) -> JobStatus | None:
        row = await self._db(
            "status",
            lambda pool: pool.fetchrow(
                "SELECT state, result::text FROM agent_jobs WHERE id = $1", job_id
            ),
        )
        if row is None:
            return None
        final = row[1] and row[0] in ("processed", "error")  # a waiting retry: no result yet
        result = Result.from_dict(json.loads(row[1])) if final else None
        return JobStatus(job_id, row[0], result)

    async def list_jobs(self, state: str | None, limit: int) -> list[JobRow]:
        rows = await self._db(
            "list",
            lambda pool: pool.fetch(
                "SELECT id, state, attempt, created, updated, lease_until, agent, result::text"
                " FROM agent_jobs WHERE ($1::text IS NULL OR state = $1) ORDER BY seq DESC"
                " LIMIT $2",
                state,
                limit,
            ),
        )
        return [job_row(*row) for row in rows]

    async def summary(self) -> QueueSummary | None:
        rows = await self._db(
            "summary",
            lambda pool: pool.fetch(
                "SELECT state, count(*), extract(epoch FROM now() - min(created))::float8"
                " FROM agent_jobs GROUP BY state"
            ),
        )
        counts = {row[0]: row[1] for row in rows}
        oldest = next((row[2] for row in rows if row[0] == "ready"), None)
        return QueueSummary.of(counts, oldest)
