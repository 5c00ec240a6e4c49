"""The queue interface every backend implements (embedded SQLite, PostgreSQL, ECC over HTTPS).

States follow the ECC queue: ``ready`` → ``processing`` → ``processed`` | ``error``.

A claim is a lease: the claiming agent must ``renew`` it before ``lease_seconds`` run out, or the
job returns to ``ready`` for any agent to claim again. Each claim carries a fencing ``token``:
``complete``/``release``/``renew`` with a token that is no longer current (the job was re-claimed
after the lease lapsed) are rejected, so a late agent never writes over a newer run.
"""

from __future__ import annotations

import abc
import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from agent.config.config import DEFAULT_MAX_JOB_BYTES
from agent.config.secure import JobKey, SealBroken
from agent.errors import JobError, QueueError
from agent.jobs.jsonguard import MAX_DEPTH, nested_deeper
from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.jobs.secrets import merge_secrets, split_secrets
from agent.queues.rows import JobRow

State = Literal["ready", "processing", "processed", "error"]


STATES = ("ready", "processing", "processed", "error")


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """Jobs by state (every state present, zero when none) and how long the oldest job
    waiting to be claimed has waited (None: none waiting)."""

    by_state: dict[str, int]
    oldest_waiting_seconds: float | None

    @classmethod
    def of(cls, counts: dict[str, int], oldest: float | None) -> QueueSummary:
        by_state = {state: int(counts.get(state, 0)) for state in STATES}
        waited = None if oldest is None else max(0.0, round(oldest, 3))
        return cls(by_state, waited)


@dataclass(frozen=True)
class Claim:
    """A job claimed by this agent, with the fencing token of this claim.

    ``problem`` is set when the stored job could not be read as a job (a row written by another
    program or version): the worker then finishes it at once as ``invalid_job``, so one bad
    row never stops an agent and is never lost.
    """

    job: Job
    token: int
    attempt: int
    problem: str | None = None
    history: tuple[dict[str, Any], ...] = ()  # the failed attempts before this claim


def with_history(claim: Claim, history: object) -> Claim:
    """``claim`` with the failed attempts its stored result kept (a list of objects)."""
    if isinstance(history, str):
        history = orjson.loads(history)
    if not isinstance(history, list) or not history:
        return claim
    kept = tuple(h for h in history if isinstance(h, dict))
    return replace(claim, history=kept)


def dumps(obj: object) -> str:
    """Compact JSON text for a stored job or result (orjson: encoding every job's result with
    the standard library showed in profiles). What orjson refuses (a ``str`` subclass as a
    key, say) still goes through the standard library."""
    try:
        return orjson.dumps(obj).decode()
    except TypeError:
        return json.dumps(obj)


def claim_of(
    job_id: str,
    body: str | bytes,
    token: int,
    attempt: int,
    max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
    sealed: str | None = None,
    key: JobKey | None = None,
) -> Claim:
    """The claim for a stored job row, or one carrying the reason it is not a usable job;
    ``sealed``: its secret fields, sealed apart with ``key``.

    A row over ``max_job_bytes`` is refused by its length alone, and one nested too deep for a
    parser by a scan: neither is parsed."""
    size = _stored_size(body, max_job_bytes)
    if size > max_job_bytes:
        return too_big(job_id, token, attempt, size, max_job_bytes)
    if nested_deeper(body, MAX_DEPTH):
        return unusable(job_id, token, attempt, f"is nested deeper than {MAX_DEPTH} levels")
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return unusable(job_id, token, attempt, f"the stored job is not JSON ({exc})")
    return claim_sealed(job_id, raw, sealed, token, attempt, key)


def _stored_size(body: str | bytes, limit: int) -> int:
    """Bytes of ``body`` as UTF-8, encoding it only when its length cannot settle the limit."""
    if isinstance(body, bytes) or len(body) > limit or len(body) * 4 <= limit:
        return len(body)
    return len(body.encode(errors="surrogatepass"))


def claim_from(
    job_id: str,
    raw: object,
    token: int,
    attempt: int,
    *,
    size: int = 0,
    max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
) -> Claim:
    """``claim_of`` for a job already parsed; ``size`` is the stored row's length in bytes when
    the backend knows it (a backend that checks it itself passes no ``raw`` for a big row)."""
    if size > max_job_bytes:
        return too_big(job_id, token, attempt, size, max_job_bytes)
    try:
        return Claim(Job.from_dict(raw), token, attempt)
    except JobError as exc:
        return unusable(job_id, token, attempt, exc.message)
    except (ValueError, TypeError) as exc:
        return unusable(job_id, token, attempt, f"the stored job cannot be read ({exc})")


def too_big(job_id: str, token: int, attempt: int, size: int, limit: int) -> Claim:
    problem = f"is {size} bytes, over agent.max_job_bytes ({limit} bytes); it was not read"
    return unusable(job_id, token, attempt, problem)


def unusable(job_id: str, token: int, attempt: int, problem: str) -> Claim:
    placeholder = Job(id=job_id, topic="RESTProbe", endpoint="")
    return Claim(placeholder, token, attempt, problem=f"stored job {job_id!r}: {problem}")


@dataclass(frozen=True)
class Stored:
    """A job as a queue stores it: its JSON without the secret fields, those sealed with the
    agent's key (None when it has none: most jobs), and a digest that tells whether a job
    enqueued again under the same id is the same job."""

    id: str
    body: str
    sealed: str | None
    digest: str
    due: float | None = None  # not_before, seconds since the epoch (None: at once)
    priority: int = 0


def stored_form(jobs: list[Job], key: JobKey | None) -> list[Stored]:
    """The stored form of ``jobs``; raises JobError when an id repeats with other content."""
    out = []
    for job in jobs:
        data = job.to_dict()
        secrets = split_secrets(data)
        body = dumps(data)
        when = (job.due, job.priority)
        if not secrets:
            out.append(Stored(job.id, body, None, hashlib.sha256(body.encode()).hexdigest(), *when))
            continue
        if key is None:
            raise QueueError(f"job {job.id!r} carries secrets and this queue has no key file")
        sealed, digest = key.seal(secrets), key.digest(body.encode(), secrets)
        out.append(Stored(job.id, body, sealed, digest, *when))
    digests: dict[str, str] = {}
    for row in out:
        if digests.setdefault(row.id, row.digest) != row.digest:
            raise different_content(row.id)
    return out


def different_content(job_id: str) -> JobError:
    return JobError(
        "id",
        f"job {job_id!r} is already queued with different content; enqueuing the same job "
        "again is a no-op, a different job needs a new id",
    )


def claim_sealed(
    job_id: str,
    raw: object,
    sealed: str | None,
    token: int,
    attempt: int,
    key: JobKey | None,
    *,
    size: int = 0,
    max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
) -> Claim:
    """``claim_from`` for a stored job whose secret fields were sealed apart (``sealed``)."""
    limits = {"size": size, "max_job_bytes": max_job_bytes}
    if sealed is None or size > max_job_bytes or not isinstance(raw, dict):
        return claim_from(job_id, raw, token, attempt, **limits)  # says why it is not a job
    try:
        if key is None:
            raise SealBroken("cannot decrypt the job's secrets: this queue has no key file")
        merge_secrets(raw, key.open(sealed))
    except SealBroken as exc:
        return unusable(job_id, token, attempt, str(exc))
    return claim_from(job_id, raw, token, attempt, **limits)


@dataclass(frozen=True)
class Exchange:
    """What ``Queue.exchange`` did: results fenced out (not stored), and the new claims."""

    fenced: list[Claim]
    claims: list[Claim]
    claim_error: QueueError | None = None


@dataclass(frozen=True)
class JobStatus:
    id: str
    state: State
    result: Result | None


class Queue(abc.ABC):
    """A job queue. All methods are coroutines and never block the event loop."""

    max_job_bytes = DEFAULT_MAX_JOB_BYTES  # a claimed row longer than this is not read

    # Whether a retry goes back to the queue with a due time (``Result.retry_at``); a backend
    # without due times has the caller retry in place, waiting out the back-off.
    delays_retries = False

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create or migrate the schema."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def enqueue(self, jobs: list[Job]) -> list[str]:
        """Add jobs in one transaction; an id already present with the same job is left as it
        is, one present with a different job refuses the batch (JobError naming ``id``).
        Returns ids. Secret fields are stored sealed, and erased once the result is stored."""

    @abc.abstractmethod
    async def claim(self, agent: str, limit: int, lease_seconds: float) -> list[Claim]:
        """Claim up to ``limit`` ready jobs (or jobs whose lease lapsed) for ``agent``."""

    @abc.abstractmethod
    async def renew(self, claims: list[Claim], lease_seconds: float) -> list[Claim]:
        """Extend the leases; returns the claims that were no longer ours (fenced out)."""

    @abc.abstractmethod
    async def complete(self, results: list[tuple[Claim, Result]]) -> list[Claim]:
        """Store results durably and end the claims; returns the claims fenced out."""

    @abc.abstractmethod
    async def release(self, claims: list[Claim]) -> None:
        """Give claims back unfinished: the jobs return to ``ready`` at once."""

    async def exchange(
        self,
        results: list[tuple[Claim, Result]],
        agent: str,
        limit: int,
        lease_seconds: float,
    ) -> Exchange:
        """Store ``results`` (as ``complete``), then claim up to ``limit`` jobs (as ``claim``).

        The worker's one call per round trip. Raises QueueError only when the results were not
        stored; a failed claim after stored results comes back as ``claim_error``. A backend may
        do both in one transaction: one round trip and one durable commit per batch.
        """
        fenced = await self.complete(results) if results else []
        claims: list[Claim] = []
        error: QueueError | None = None
        if limit > 0:
            try:
                claims = await self.claim(agent, limit, lease_seconds)
            except QueueError as exc:
                error = exc
        return Exchange(fenced, claims, error)

    @abc.abstractmethod
    async def status(self, job_id: str) -> JobStatus | None:
        """The job's state and result, or None for an unknown id."""

    async def wait_for_work(self, timeout: float) -> None:
        """Return when work may be waiting, or after ``timeout`` seconds.

        Backends with push notifications (PostgreSQL LISTEN/NOTIFY) return early; the default
        simply sleeps, which is the documented polling fallback.
        """
        import asyncio

        await asyncio.sleep(timeout)

    async def depth(self) -> int | None:
        """Jobs waiting in ``ready``, where the backend can tell."""
        summary = await self.summary()
        return None if summary is None else summary.by_state["ready"]

    async def summary(self) -> QueueSummary | None:
        """Jobs by state and the oldest waiting job's age, where the backend can tell."""
        return None

    async def list_jobs(self, state: str | None, limit: int) -> list[JobRow]:
        """The newest ``limit`` jobs (of ``state`` when given), for ``agent jobs``."""
        raise QueueError(f"{type(self).__name__} cannot list its jobs")


def redact_url(url: str) -> str:
    """The URL with its password (in the user part or a ``password=`` query) replaced."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # as written: urlunsplit would turn sqlite:///./q.db into sqlite:/./q.db
    return urlunsplit(parts._replace(netloc=netloc, query=query))
