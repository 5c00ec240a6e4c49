"""The embedded queue: one SQLite file, safe for several processes on one host.

Every statement runs on one dedicated thread per process (the event loop never blocks on disk),
each operation is one short transaction, and claims take the write lock up front
(``BEGIN IMMEDIATE``) so two processes never claim the same job. The file is in WAL mode with a
busy timeout, so the CLI can enqueue while the daemon claims.

A job's secret fields are stored sealed in column ``secrets`` (see ``base.stored_form``) and set
to NULL with its result. ``secure_delete`` makes SQLite overwrite what it frees with zeros, and a
checkpoint after such an erasure truncates the WAL, so no copy is left in the files. The file
(and so its -wal and -shm) is created mode 0600, its directory 0700.

Leases are wall-clock deadlines (``lease_until``, seconds since the epoch) because they are
compared across processes. A job whose lease lapsed is claimable again; the claim bumps its
fencing ``token``, so the late agent's ``complete``/``renew``/``release`` no longer match.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from agent.config.secure import JobKey, private_file
from agent.errors import ConfigError, QueueError
from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.jobs.secrets import has_secrets
from agent.queues.base import (
    Claim,
    Exchange,
    Queue,
    claim_sealed,
    different_content,
    dumps,
    stored_form,
    unusable,
    with_history,
)
from agent.queues.sqlite_read import SqliteReads
from agent.queues.sqlite_sql import (
    ADDED_COLUMNS,
    BACKFILL_DUE,
    DIFFERENT_CONTENT,
    ERASE_OLD_SECRETS,
    INDEXES,
    MARK_CLAIMED,
    NOT_STORED,
    READ_CLAIMED,
    SCHEMA,
    STORE_RESULTS,
)
from agent.queues.sqlite_wake import CommitWatch, wait_for_commit

log = logging.getLogger("agent.queues.sqlite")

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000


def sqlite_path(url: str, base_dir: Path) -> Path:
    """``sqlite:///relative/path`` (against ``base_dir``) or ``sqlite:////absolute/path``."""
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest.strip("/") == "":
        raise QueueError(f"url {url!r}: write sqlite:///path/to/file.db")
    return base_dir / rest[1:]


class SqliteQueue(SqliteReads, Queue):
    delays_retries = True  # a retry is stored back as ready, due after its back-off

    def __init__(self, path: Path, key: JobKey | None = None) -> None:
        """``key`` seals jobs' secrets; by default the file ``<path>.key``."""
        self.path = path
        self.key = key or JobKey(path.with_name(path.name + ".key"))
        self._scrub = False  # secrets were erased; the WAL still needs truncating
        self._db: sqlite3.Connection | None = None
        self._durable = True
        self._last_work = 0.0  # monotonic time of the last claim that returned jobs
        self._claimed_version: int | None = None  # data_version seen by the last claim
        self._watch: CommitWatch | None = None  # other processes' commits, where inotify is
        self._watch_opened = False  # at the first wait: one-shot users (the CLI) need none
        self.version_reads = 0  # looks for other processes' commits (the bench and tests count)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-queue")

    def __repr__(self) -> str:
        return f"SqliteQueue({str(self.path)!r})"

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, fn, *args)
        except sqlite3.Error as exc:
            raise QueueError(f"queue {self.path}: {exc}") from exc

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        if not self.path.parent.is_dir():  # never make a directory nobody asked for
            raise ConfigError(
                f"the queue's directory {self.path.parent} does not exist: create it "
                "(the agent makes the file, not the directory)",
                parameter="url",
            )
        private_file(self.path)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA secure_delete = ON")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.executescript(SCHEMA)
        self._add_columns(db)
        db.executescript(INDEXES)
        db.execute("PRAGMA busy_timeout = 0")  # writers wait in _take_write_lock's retries
        self._db = db

    @staticmethod
    def _add_columns(db: sqlite3.Connection) -> None:
        have = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        for name, declared in ADDED_COLUMNS.items():
            if name not in have:
                try:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declared}")
                except sqlite3.OperationalError as exc:  # another process added it meanwhile
                    if "duplicate column" not in str(exc):
                        raise
                if name == "secrets":
                    db.execute(ERASE_OLD_SECRETS)
                if name == "due":
                    db.execute(BACKFILL_DUE)

    def _scrub_wal(self) -> None:
        """After secrets were erased: copy the WAL into the file and truncate it, so the old
        page images holding them are gone. A reader in the way (another process mid-read)
        makes it a no-op; the next commit tries again."""
        busy, _, _ = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        self._scrub = busy != 0

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._thread.shutdown(wait=True)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise QueueError(f"queue {self.path} is not open")
        return self._db

    def _transaction(self, fn: Callable[[sqlite3.Connection], T], durable: bool = True) -> T:
        """One short write transaction; ``durable``: see ``_set_durability``."""
        db = self.db
        self._set_durability(db, durable)
        self._take_write_lock(db)
        try:
            out = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return out

    def _set_durability(self, db: sqlite3.Connection, durable: bool) -> None:
        """``durable`` transactions (new jobs, results) are on disk when they return (fsync,
        ``synchronous=FULL``); the others (claims, lease renewals, releases) are visible to
        every process at once but may be lost to a power cut (``NORMAL``: no fsync in WAL
        mode), which costs nothing: the job simply runs again, as it would if the agent had
        died at that moment. A claim is on the path of every job that arrives while the agent
        waits, so it is the one to spare the fsync. ``python -m bench.tricks`` (enqueue, claim,
        store, one job at a time; shared VM, noisy): a claim takes 0.30 ms against 0.53 with
        every transaction FULL (1.8 ×), a job's whole cycle 1.36 ms against 1.64 (1.2 ×).
        """
        if durable != self._durable:
            db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._durable = durable

    @staticmethod
    def _take_write_lock(db: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, retrying in fine steps while another process holds the lock.

        SQLite's own busy handler sleeps 1, 2, 5, 10... ms between tries, so a collision with a
        sub-millisecond transaction of the CLI or another agent could cost a job 10 ms or more;
        here the retries start at 0.1 ms and are never more than 1 ms apart (the holder is
        usually flushing a commit to disk). The overall bound stays BUSY_TIMEOUT_MS.
        ``python -m bench.tricks`` (two processes draining one file with ``exchange``, as
        ``agent.workers=2`` does; shared VM, noisy): 20,500 jobs/s against 16,200 with SQLite's
        busy handler (1.26 ×), a round trip's p99 6 ms against 37 (6 ×).
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        pause = 0.0001
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if db.in_transaction or "locked" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.001)

    # -- wake-ups ----------------------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> None:
        """Return soon after another process commits (an enqueue), or after ``timeout``: pushed
        by the kernel where it can, polled where not (see ``sqlite_wake``).

        The version compared against is the one the last claim saw while it held the write
        lock, so a commit landing between that claim and this wait still counts.
        """
        if not self._watch_opened:
            self._watch_opened = True
            self._watch = CommitWatch.open(self.path)
        await wait_for_commit(
            self._watch,
            lambda: self._run(self._data_version),
            self._claimed_version,
            timeout,
            lambda: self._last_work,
        )

    def _data_version(self) -> int:
        self.version_reads += 1
        row = self.db.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    # -- operations --------------------------------------------------------------------------

    async def enqueue(self, jobs: list[Job]) -> list[str]:
        rows = stored_form(jobs, self.key)

        def insert(db: sqlite3.Connection) -> None:
            now = time.time()
            db.executemany(
                "INSERT OR IGNORE INTO jobs"
                " (id, job, secrets, digest, created, updated, due, priority)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.id, r.body, r.sealed, r.digest, now, now, r.due or now, r.priority)
                    for r in rows
                ],
            )
            given = dumps([[r.id, r.digest] for r in rows])
            clash = db.execute(DIFFERENT_CONTENT, (given,)).fetchone()
            if clash is not None:
                raise different_content(clash[0])

        await self._run(self._transaction, insert)
        return [j.id for j in jobs]

    def _take(self, db: sqlite3.Connection, agent: str, limit: int, lease_seconds: float) -> str:
        """Claim up to ``limit`` jobs (lapsed leases first, then the oldest ready ones).

        Two statements whatever the count, the second answering one row: the sqlite3 module
        lets go of the GIL around every step of a statement, and getting it back while the
        event loop is busy can take a switch interval (5 ms), so a statement or a row per job
        would make the round trip as slow as the jobs are many. Returns a JSON array of
        ``[seq, id, is_json, job, token, attempt, size, secrets]``, ``job`` being the stored
        object (or the stored text when it is not JSON, or null when it is over
        ``max_job_bytes``), ``secrets`` its sealed secret fields or null.
        """
        now = time.time()
        until = now + lease_seconds
        db.execute(MARK_CLAIMED, (agent, now, until, limit))
        read = (agent, now, until, self.max_job_bytes)
        (rows, version) = db.execute(READ_CLAIMED, read).fetchone()
        self._claimed_version = version
        return str(rows)

    def _claims(self, taken: str) -> list[Claim]:
        rows = orjson.loads(taken)
        if rows:
            self._last_work = time.monotonic()
            rows.sort(key=lambda r: (-r[8], r[9] or 0, r[0]))  # highest priority, then due first
        limit = self.max_job_bytes
        claims = [
            claim_sealed(job_id, raw, sealed, token, att, self.key, size=size, max_job_bytes=limit)
            if is_json or size > limit
            else unusable(job_id, token, att, "the stored job is not JSON")
            for _, job_id, is_json, raw, token, att, size, sealed, _, _, _ in rows
        ]
        return [with_history(c, row[10]) for c, row in zip(claims, rows, strict=True)]

    async def claim(self, agent: str, limit: int, lease_seconds: float) -> list[Claim]:
        if limit <= 0:
            return []
        taken = await self._run(
            self._transaction, lambda db: self._take(db, agent, limit, lease_seconds), False
        )
        return self._claims(taken)

    async def renew(self, claims: list[Claim], lease_seconds: float) -> list[Claim]:
        def extend(db: sqlite3.Connection) -> list[Claim]:
            until = time.time() + lease_seconds
            lost = []
            for c in claims:
                cur = db.execute(
                    "UPDATE jobs SET lease_until = ? WHERE id = ? AND token = ?"
                    " AND state = 'processing'",
                    (until, c.job.id, c.token),
                )
                if cur.rowcount == 0:
                    lost.append(c)
            return lost

        return await self._run(self._transaction, extend, False) if claims else []

    @staticmethod
    def _store(db: sqlite3.Connection, results: Sequence[tuple[Claim, Result]]) -> list[Claim]:
        """Store results in one statement (see ``_take`` for why); returns the fenced claims.

        When some claim was fenced out (rare: its lease lapsed and another agent took the job),
        one more statement tells which.
        """
        now = time.time()
        batch = dumps(
            [[c.job.id, c.token, r.stored_state, r.to_dict(), r.retry_at] for c, r in results]
        )
        if db.execute(STORE_RESULTS, (now, batch)).rowcount == len(results):
            return []
        (missing,) = db.execute(NOT_STORED, (now, batch)).fetchone()
        lost = set(orjson.loads(missing))
        return [c for c, _ in results if c.job.id in lost]

    async def complete(self, results: list[tuple[Claim, Result]]) -> list[Claim]:
        if not results:
            return []
        fenced: list[Claim] = await self._run(
            self._transaction, lambda db: self._store(db, results)
        )
        await self._after_store(results)
        return fenced

    async def _after_store(self, results: list[tuple[Claim, Result]]) -> None:
        """Results are stored: if that erased secrets, scrub the WAL (a failure is retried at
        the next store and never fails this one)."""
        if self._scrub or any(has_secrets(c.job) for c, _ in results):
            self._scrub = True
            try:
                await self._run(self._scrub_wal)
            except QueueError as exc:
                log.warning("%s; erased secrets stay in the WAL until a later checkpoint", exc)

    async def exchange(
        self,
        results: list[tuple[Claim, Result]],
        agent: str,
        limit: int,
        lease_seconds: float,
    ) -> Exchange:
        """Results and the next claims in one transaction: one fsync for both."""

        def both(db: sqlite3.Connection) -> tuple[list[Claim], str]:
            fenced = self._store(db, results) if results else []
            return fenced, self._take(db, agent, limit, lease_seconds) if limit > 0 else "[]"

        fenced, taken = await self._run(self._transaction, both, bool(results))
        await self._after_store(results)
        return Exchange(fenced, self._claims(taken))

    async def release(self, claims: list[Claim]) -> None:
        def give_back(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE jobs SET state = 'ready', lease_until = NULL, agent = NULL,"
                " attempt = attempt - 1 WHERE id = ? AND token = ? AND state = 'processing'",
                [(c.job.id, c.token) for c in claims],
            )

        if claims:
            await self._run(self._transaction, give_back, False)
