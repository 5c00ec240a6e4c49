"""The instance's ECC queue over its REST Table API (``url = https://instance``).

Mapping (documented in the README; record formats in ``ecc_records``):

- jobs are ``ecc_queue`` records with ``agent=mid.server.<name>``, ``queue=output``,
  ``state=ready`` and topic ``RESTProbe`` or ``SOAPProbe``; the record's ``sys_id`` is the job
  id (or ``agent_correlator``, for a job enqueued with an id of its own).
- claiming marks the record ``processing`` under a lease, in three fields of the record:
  ``u_agent_claimed_by`` (who holds it: the agent name, host and worker), ``u_agent_lease_until``
  (milliseconds since the epoch, 13 digits, so text and numbers order alike) and
  ``u_agent_attempts`` (the claim count, which is also the fencing token). The holder renews the
  lease while the job runs. A record whose lease lapsed (its agent died) is claimed by the next
  agent that polls; a record the same holder left behind (a restart) is taken back at once.
- the Table API has no conditional update, so a claim is written and read back: a claimer that
  finds another holder in the record lets it go. Results, renewals and releases check that the
  record is still this claim's (holder and token) before writing, so a late agent does not write
  over a newer run. Two agents can still both take a record in the moment between one's write
  and the other's read-back: the one house of atomic claims is SQLite or PostgreSQL.
- an instance whose ``ecc_queue`` lacks the three fields ignores them (the Table API drops
  unknown fields): the agent says so once and falls back to the MID's model, one agent per
  name, whose records left ``processing`` are taken back when it starts again.
- a result is an ``input`` record with ``response_to`` = the output record's sys_id; the output
  record then becomes ``processed`` (or ``error`` with ``error_string``).
- a heartbeat ``input`` record (topic ``HeartbeatProbe``) is written every ``HEARTBEAT`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from agent.errors import JobError, QueueError
from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.queues.base import Claim, JobStatus, Queue, different_content
from agent.queues.ecc_records import (
    job_from_record,
    looks_like_sys_id,
    result_of,
    result_payload,
)

__all__ = ["EccQueue", "job_from_record"]

log = logging.getLogger("agent.queues.ecc")

TABLE = "/api/now/table/ecc_queue"
TOPICS = ("RESTProbe", "SOAPProbe")
HEARTBEAT = 60.0
HOLDER, UNTIL, ATTEMPTS = "u_agent_claimed_by", "u_agent_lease_until", "u_agent_attempts"


def lease_stamp(when: float) -> str:
    """A lease end as the record holds it: milliseconds since the epoch, 13 digits."""
    return f"{int(when * 1000):013d}"


@dataclass(frozen=True)
class Held:
    """A record this queue object claimed: where it is, and the claim's token."""

    sys_id: str
    topic: str
    name: str
    holder: str
    token: int


class EccQueue(Queue):
    def __init__(
        self,
        url: str,
        *,
        agent: str,
        username: str | None,
        password: str | None,
        ssl_context: ssl.SSLContext | None = None,
        host: str | None = None,
    ) -> None:
        self.base = url.rstrip("/")
        self.agent = agent
        self._headers = {"Accept": "application/json"}
        if username:
            self._headers["Authorization"] = aiohttp.encode_basic_auth(username, password or "")
        self.ssl_context = ssl_context
        # Who claims: the agent name given to claim(), here, as which worker process.
        worker = os.environ.get("AGENT_WORKER_INDEX") or "0"
        self._where = f"@{host or socket.gethostname()}#{worker}"
        self._session: aiohttp.ClientSession | None = None
        self._held: dict[tuple[str, int], Held] = {}  # (job id, token) -> the claimed record
        self._heartbeat: asyncio.Task[None] | None = None
        self._recovered = False
        self.leases: bool | None = None  # whether the table keeps the lease fields (None: unseen)

    async def open(self) -> None:
        ctx = self.ssl_context or ssl.create_default_context()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx),
            timeout=aiohttp.ClientTimeout(total=30),
            headers=self._headers,
            trust_env=False,
        )
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="ecc-heartbeat")

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        assert self._session is not None, "open() first"
        try:
            async with self._session.request(method, self.base + path, **kwargs) as resp:
                if resp.status in (401, 403):
                    raise QueueError(
                        f"the instance refused the credentials of mid.instance.username "
                        f"({resp.status}); check mid.instance.username / mid.instance.password"
                    )
                if resp.status >= 400:
                    text = (await resp.text())[:200]
                    raise QueueError(f"instance answered {resp.status} to {method} {path}: {text}")
                data: dict[str, Any] = await resp.json(content_type=None)
                return data
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise QueueError(
                f"instance {self.base} unreachable: {exc.__class__.__name__} {exc}"
            ) from exc

    async def _list(self, query: str, limit: int) -> list[dict[str, Any]]:
        data = await self._call(
            "GET", TABLE, params={"sysparm_query": query, "sysparm_limit": str(limit)}
        )
        found = data.get("result")
        return [r for r in found if isinstance(r, dict)] if isinstance(found, list) else []

    async def _find(self, job_id: str, queue: str = "output") -> dict[str, Any] | None:
        field = "sys_id" if looks_like_sys_id(job_id) else "agent_correlator"
        query = f"agent={self.agent}^queue={queue}^{field}={job_id}"
        if queue == "input":
            query = f"agent={self.agent}^queue=input^response_to={job_id}"
        found = await self._list(query, 1)
        return found[0] if found else None

    async def enqueue(self, jobs: list[Job]) -> list[str]:
        """Write an output record per new job; a job already there with the same payload is
        left alone, one there with another payload refuses the batch before anything is
        written (the Table API has no transactions: the check comes first)."""
        new: dict[str, str] = {}
        for job in jobs:
            payload = json.dumps({k: v for k, v in job.to_dict().items() if k != "id"})
            if new.setdefault(job.id, payload) != payload:
                raise different_content(job.id)
            found = await self._find(job.id)
            if found is not None:
                if found.get("payload") != payload:
                    raise different_content(job.id)
                new[job.id] = ""  # there already
        for job in jobs:
            payload = new.pop(job.id, "")
            if payload:
                record = {
                    "agent": self.agent,
                    "queue": "output",
                    "state": "ready",
                    "topic": job.topic,
                    "name": job.endpoint,
                    "source": "agent-cli",
                    "agent_correlator": job.id,
                    "payload": payload,
                }
                await self._call("POST", TABLE, json=record)
        return [job.id for job in jobs]

    # ------------------------------------------------------------------ claims and leases

    async def claim(self, agent: str, limit: int, lease_seconds: float) -> list[Claim]:
        """Ready records first; then, while there is room, this holder's own records from
        before a restart (once), and records whose lease lapsed or that never had one."""
        if limit <= 0:
            return []
        holder = agent + self._where
        outputs = f"agent={self.agent}^queue=output^topicIN{','.join(TOPICS)}"
        lapsed = f"{UNTIL}<{lease_stamp(time.time())}^OR{UNTIL}ISEMPTY"
        queries = {
            "ready": "state=ready",
            "left behind": f"state=processing^{HOLDER}={holder}",
            "lapsed": f"state=processing^{lapsed}",
        }
        claims: list[Claim] = []
        for kind, query in queries.items():
            if len(claims) >= limit or (kind == "left behind" and self._recovered):
                continue
            if kind == "lapsed" and self.leases is False:
                continue  # without lease fields this query would match every record in flight
            found = await self._list(
                f"{outputs}^{query}^ORDERBYsys_created_on", limit - len(claims)
            )
            for record in found:
                claim = await self._take(record, holder, lease_seconds)
                if claim is not None:
                    claims.append(claim)
        self._recovered = True
        return claims

    async def _take(
        self, record: dict[str, Any], holder: str, lease_seconds: float
    ) -> Claim | None:
        """Claim one record: write the lease, read it back, keep it only if it is ours."""
        sys_id = str(record.get("sys_id") or "")
        job_id = str(record.get("agent_correlator") or sys_id)
        token = _int(record.get(ATTEMPTS))
        here = self._held.get((job_id, token))
        if not sys_id or (here is not None and here.holder == holder):
            return None  # this very claim is held here (a record the queries found twice)
        if self.leases is False and any(held == job_id for held, _ in self._held):
            return None  # no lease fields to tell claims apart: one claim per job here
        token += 1
        lease = {HOLDER: holder, UNTIL: lease_stamp(time.time() + lease_seconds), ATTEMPTS: token}
        written = await self._patch(sys_id, {"state": "processing", **lease})
        if self._keeps_leases(written):
            now = await self._get(sys_id)
            if now is None or not _is_claim(now, holder, token):
                log.info("ecc record %s: claimed by another agent meanwhile; left to it", sys_id)
                return None
        topic, name = str(record.get("topic", "")), str(record.get("name", ""))
        held = Held(sys_id, topic, name, holder, token)
        self._held[job_id, token] = held
        try:
            job = job_from_record(record, self.max_job_bytes)
        except JobError as exc:
            log.error("ecc record %s is not a usable job: %s", sys_id, exc)
            claim = Claim(Job(id=job_id, topic="RESTProbe", endpoint=""), token, token)
            await self._finish(claim, Result.failed(job_id, exc.kind, exc.message))
            return None
        return Claim(job=job, token=token, attempt=token)

    def _keeps_leases(self, written: dict[str, Any]) -> bool:
        """Whether the table stores the lease fields (the answer to our write shows them)."""
        if self.leases is None:
            self.leases = HOLDER in written and UNTIL in written
            if not self.leases:
                log.warning(
                    "ecc_queue on %s has no %s / %s / %s fields: jobs are not leased; a job "
                    "whose agent died runs again only when an agent of this name restarts "
                    "(add the fields to the table: see the README)",
                    self.base,
                    HOLDER,
                    UNTIL,
                    ATTEMPTS,
                )
        return self.leases

    async def renew(self, claims: list[Claim], lease_seconds: float) -> list[Claim]:
        """Extend the leases still ours; the claims another agent took are fenced out."""
        mine, fenced = await self._still_ours(claims)
        until = lease_stamp(time.time() + lease_seconds)
        for claim in mine:
            await self._patch(self._held[_key(claim)].sys_id, {UNTIL: until})
        return fenced

    async def complete(self, results: list[tuple[Claim, Result]]) -> list[Claim]:
        mine, fenced = await self._still_ours([claim for claim, _ in results])
        ours = {id(claim) for claim in mine}
        for claim, result in results:
            if id(claim) in ours:
                await self._finish(claim, result)
        return fenced

    async def release(self, claims: list[Claim]) -> None:
        """Give records back as ``ready``, without counting the attempt."""
        mine, _ = await self._still_ours(claims)
        for claim in mine:
            held = self._held.pop(_key(claim))
            back = {"state": "ready", HOLDER: "", UNTIL: "", ATTEMPTS: held.token - 1}
            await self._patch(held.sys_id, back)

    async def _still_ours(self, claims: list[Claim]) -> tuple[list[Claim], list[Claim]]:
        """``claims`` split into those whose record still shows this claim and the rest.
        Without lease fields on the table every claim counts as ours (one agent per name)."""
        known = [c for c in claims if _key(c) in self._held]
        fenced = [c for c in claims if _key(c) not in self._held]
        if not self.leases or not known:
            return known, fenced
        ids = ",".join(sorted({self._held[_key(c)].sys_id for c in known}))
        records = {str(r.get("sys_id")): r for r in await self._list(f"sys_idIN{ids}", len(known))}
        mine = []
        for claim in known:
            held = self._held[_key(claim)]
            record = records.get(held.sys_id)
            if record is not None and _is_claim(record, held.holder, held.token):
                mine.append(claim)
            else:
                self._held.pop(_key(claim))
                fenced.append(claim)
        return mine, fenced

    async def _finish(self, claim: Claim, result: Result) -> None:
        held = self._held.pop(_key(claim))
        await self._call(
            "POST",
            TABLE,
            json={
                "agent": self.agent,
                "queue": "input",
                "state": "ready",
                "topic": held.topic,
                "name": held.name,
                "source": self.agent,
                "response_to": held.sys_id,
                "payload": result_payload(result),
            },
        )
        update: dict[str, Any] = {"state": result.state, UNTIL: ""}
        if result.error is not None:
            update["error_string"] = f"{result.error.kind}: {result.error.message}"
        await self._patch(held.sys_id, update)

    async def _patch(self, sys_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        data = await self._call("PATCH", f"{TABLE}/{sys_id}", json=fields)
        record = data.get("result")
        return record if isinstance(record, dict) else {}

    async def _get(self, sys_id: str) -> dict[str, Any] | None:
        found = await self._list(f"sys_id={sys_id}", 1)
        return found[0] if found else None

    # ------------------------------------------------------------------ status

    async def status(self, job_id: str) -> JobStatus | None:
        record = await self._find(job_id)
        if record is None:
            return None
        state = record.get("state", "ready")
        if state not in ("processed", "error"):
            return JobStatus(id=job_id, state=state, result=None)
        answer = await self._find(record["sys_id"], queue="input")
        return JobStatus(id=job_id, state=state, result=result_of(answer, job_id))

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self._call(
                    "POST",
                    TABLE,
                    json={
                        "agent": self.agent,
                        "queue": "input",
                        "state": "ready",
                        "topic": "HeartbeatProbe",
                        "name": "heartbeat",
                        "source": self.agent,
                        "payload": "<results><result><status>up</status></result></results>",
                    },
                )
            except QueueError as exc:
                log.warning("ecc heartbeat failed: %s", exc)
            await asyncio.sleep(HEARTBEAT)


def _key(claim: Claim) -> tuple[str, int]:
    return claim.job.id, claim.token


def _int(value: object) -> int:
    try:
        return int(str(value or "0"))
    except ValueError:
        return 0


def _is_claim(record: dict[str, Any], holder: str, token: int) -> bool:
    """Whether ``record`` is in ``processing`` under claim ``token`` of ``holder``."""
    return (
        record.get("state") == "processing"
        and _int(record.get(ATTEMPTS)) == token
        and record.get(HOLDER) == holder
    )
