"""A local journal of finished results the queue could not take yet.

When the queue is unreachable, a finished job's result goes here (one SQLite file, fsynced),
and is delivered when the queue answers again, also after a restart. A result is removed from
the journal only once the queue has stored it (or fenced it out as stale).

The journal holds what delivery needs: the claim (job id, fencing token, attempt) and the
result. A job's secret fields (``jobs.SECRET_FIELDS``) are never written to it: the job is kept
without its inline profile. The file is mode 0600 (its directory 0700); delivered entries are
overwritten (``secure_delete``) and the WAL truncated after each removal.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path

from agent.config.secure import private_file
from agent.errors import ConfigError
from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.jobs.secrets import without_secrets
from agent.queues.base import Claim

SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    job_id TEXT PRIMARY KEY,
    claim TEXT NOT NULL,
    result TEXT NOT NULL
)
"""


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        if not path.parent.is_dir():  # never make a directory nobody asked for
            raise ConfigError(
                f"the journal's directory {path.parent} does not exist: create it",
                parameter="agent.journal.path",
            )
        private_file(path)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(SCHEMA)

    def _put(self, claim: Claim, result: Result) -> None:
        job = without_secrets(claim.job).to_dict()  # delivery needs only its id
        record = {"job": job, "token": claim.token, "attempt": claim.attempt}
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO pending VALUES (?, ?, ?)",
                (claim.job.id, json.dumps(record), json.dumps(result.to_dict())),
            )

    def _all(self) -> list[tuple[Claim, Result]]:
        with self._lock:
            rows = self._db.execute("SELECT claim, result FROM pending").fetchall()
        out = []
        for claim_json, result_json in rows:
            record = json.loads(claim_json)
            claim = Claim(Job.from_dict(record["job"]), record["token"], record["attempt"])
            out.append((claim, Result.from_dict(json.loads(result_json))))
        return out

    def _remove(self, job_ids: list[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM pending WHERE job_id = ?", [(i,) for i in job_ids])
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no old copy left in the WAL

    async def put(self, claim: Claim, result: Result) -> None:
        await asyncio.to_thread(self._put, claim, result)

    async def pending(self) -> list[tuple[Claim, Result]]:
        return await asyncio.to_thread(self._all)

    async def remove(self, job_ids: list[str]) -> None:
        await asyncio.to_thread(self._remove, job_ids)

    def close(self) -> None:
        with self._lock:
            self._db.close()
