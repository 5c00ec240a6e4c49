"""The instance's ECC queue over its REST Table API (``url = https://instance``).

Mapping (documented in the README):

- jobs are ``ecc_queue`` records with ``agent=mid.server.<name>``, ``queue=output``,
  ``state=ready`` and topic ``RESTProbe`` or ``SOAPProbe``. Their ``payload`` is either a JSON
  job or the MID's XML form ``<parameters><parameter name="endpoint" value="..."/>...``
  (``rest_endpoint``/``endpoint``, ``http_method``/``method``, ``headers`` as JSON,
  ``body``/``content``, ``soap_action``, ``soap_version``, ``protocol_profile``, ``sni``,
  ``timeout``, ``max_attempts``). The record's ``sys_id`` is the job id.
- claiming marks the record ``processing`` (the Table API has no atomic claim: one agent name
  is one agent, as with the MID). Records left ``processing`` by this agent name when it stopped
  are taken up again on start.
- a result is an ``input`` record with ``response_to`` = the output record's sys_id, topic and
  name as the job's, and a payload ``<results><result><output>BODY</output><http_status_code>..
  </http_status_code><headers>JSON</headers><error>..</error></result></results>``; the output
  record then becomes ``processed`` (or ``error`` with ``error_string``).
- a job enqueued with an id of its own carries it in ``agent_correlator``; its result is found
  again by that id (the ``agent_result`` element of the input payload holds the result JSON).
- a heartbeat ``input`` record (topic ``HeartbeatProbe``) is written every ``HEARTBEAT`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import aiohttp

from agent.config.config import DEFAULT_MAX_JOB_BYTES
from agent.errors import JobError, QueueError
from agent.http.xmlsafe import XMLRejected, parse_xml
from agent.jobs.jsonguard import MAX_DEPTH, nested_deeper
from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.queues.base import Claim, JobStatus, Queue

log = logging.getLogger("agent.queues.ecc")

TABLE = "/api/now/table/ecc_queue"
TOPICS = ("RESTProbe", "SOAPProbe")
HEARTBEAT = 60.0
FIELD_ALIASES = {
    "rest_endpoint": "endpoint",
    "http_method": "method",
    "content": "body",
}
INT_FIELDS = ("timeout", "max_attempts")


def job_from_record(record: dict[str, Any], max_job_bytes: int = DEFAULT_MAX_JOB_BYTES) -> Job:
    """The Job an output record describes; JobError names what is wrong. A payload over
    ``max_job_bytes``, or nested deeper than a job can be, is refused without being parsed."""
    payload = (record.get("payload") or "").strip()
    if len(payload) > max_job_bytes:
        raise JobError(
            "payload", f"is {len(payload)} characters, over agent.max_job_bytes ({max_job_bytes})"
        )
    raw: dict[str, Any]
    if payload.startswith("{"):
        if nested_deeper(payload, MAX_DEPTH):
            raise JobError("payload", f"is nested deeper than {MAX_DEPTH} levels: not a job")
        try:
            raw = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise JobError("payload", f"is not valid JSON: {exc}") from None
    else:
        raw = _xml_parameters(payload)
    raw["id"] = record.get("agent_correlator") or record["sys_id"]
    raw["topic"] = record.get("topic")
    return Job.from_dict(raw)


def _xml_parameters(payload: str) -> dict[str, Any]:
    try:
        root = parse_xml(payload.encode())
    except XMLRejected as exc:
        raise JobError("payload", f"is not usable XML: {exc}") from None
    raw: dict[str, Any] = {}
    for elem in root.iter("parameter"):
        name = FIELD_ALIASES.get(elem.get("name") or "", elem.get("name") or "")
        value = elem.get("value") if elem.get("value") is not None else (elem.text or "")
        raw[name] = value
    if isinstance(raw.get("headers"), str) and raw["headers"]:
        try:
            raw["headers"] = json.loads(raw["headers"])
        except ValueError:
            raise JobError("headers", "must be a JSON object in the payload") from None
    for name in INT_FIELDS:
        if isinstance(raw.get(name), str) and raw[name]:
            try:
                raw[name] = float(raw[name]) if name == "timeout" else int(raw[name])
            except ValueError:
                raise JobError(name, f"must be a number, got {raw[name]!r}") from None
    return {k: v for k, v in raw.items() if v not in ("", None)}


def result_payload(result: Result) -> str:
    """The ``<results>`` payload of the input record answering a job."""
    body = result.body if result.body is not None else (result.body_base64 or "")
    parts = [
        f"<output>{escape(body)}</output>",
        f"<http_status_code>{'' if result.status is None else result.status}</http_status_code>",
        f"<headers>{escape(json.dumps(result.headers))}</headers>",
        f"<elapsed_ms>{result.elapsed_ms}</elapsed_ms>",
        f"<attempts>{result.attempts}</attempts>",
    ]
    if result.body_base64 is not None:
        parts.append("<output_encoding>base64</output_encoding>")
    if result.error is not None:
        parts.append(
            f"<error kind={quoteattr(result.error.kind)}>{escape(result.error.message)}</error>"
        )
    if result.soap_fault is not None:
        f = result.soap_fault
        parts.append(
            f"<soap_fault><code>{escape(f.code)}</code><message>{escape(f.message)}</message>"
            f"<detail>{escape(f.detail or '')}</detail></soap_fault>"
        )
    parts.append(f"<tls>{escape(json.dumps(result.tls.__dict__))}</tls>")
    parts.append(f"<agent_result>{escape(json.dumps(result.to_dict()))}</agent_result>")
    return f"<results><result>{''.join(parts)}</result></results>"


class EccQueue(Queue):
    def __init__(
        self,
        url: str,
        *,
        agent: str,
        username: str | None,
        password: str | None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.base = url.rstrip("/")
        self.agent = agent
        self._headers = {"Accept": "application/json"}
        if username:
            self._headers["Authorization"] = aiohttp.encode_basic_auth(username, password or "")
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._records: dict[str, tuple[str, str, str]] = {}  # job id -> (sys_id, topic, name)
        self._heartbeat: asyncio.Task[None] | None = None
        self._recovered = False

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

    async def _find(self, job_id: str, queue: str = "output") -> dict[str, Any] | None:
        field = "sys_id" if _looks_like_sys_id(job_id) else "agent_correlator"
        query = f"agent={self.agent}^queue={queue}^{field}={job_id}"
        if queue == "input":
            query = f"agent={self.agent}^queue=input^response_to={job_id}"
        data = await self._call("GET", TABLE, params={"sysparm_query": query, "sysparm_limit": "1"})
        found = data.get("result") or []
        return found[0] if found else None

    async def enqueue(self, jobs: list[Job]) -> list[str]:
        ids = []
        for job in jobs:
            if await self._find(job.id) is None:
                record = {
                    "agent": self.agent,
                    "queue": "output",
                    "state": "ready",
                    "topic": job.topic,
                    "name": job.endpoint,
                    "source": "agent-cli",
                    "agent_correlator": job.id,
                    "payload": json.dumps({k: v for k, v in job.to_dict().items() if k != "id"}),
                }
                await self._call("POST", TABLE, json=record)
            ids.append(job.id)
        return ids

    async def claim(self, agent: str, limit: int, lease_seconds: float) -> list[Claim]:
        states = "stateINready,processing" if not self._recovered else "state=ready"
        topics = ",".join(TOPICS)
        query = f"agent={self.agent}^queue=output^{states}^topicIN{topics}^ORDERBYsys_created_on"
        data = await self._call(
            "GET", TABLE, params={"sysparm_query": query, "sysparm_limit": str(limit)}
        )
        self._recovered = True
        claims = []
        for record in data.get("result", []):
            claim = await self._claim_record(record)
            if claim is not None:
                claims.append(claim)
        return claims

    async def _claim_record(self, record: dict[str, Any]) -> Claim | None:
        sys_id = record["sys_id"]
        job_id = record.get("agent_correlator") or sys_id
        self._records[job_id] = (sys_id, record.get("topic", ""), record.get("name", ""))
        try:
            job = job_from_record(record, self.max_job_bytes)
        except JobError as exc:
            log.error("ecc record %s is not a usable job: %s", sys_id, exc)
            await self._finish(job_id, Result.failed(job_id, exc.kind, exc.message))
            return None
        await self._call("PATCH", f"{TABLE}/{sys_id}", json={"state": "processing"})
        return Claim(job=job, token=1, attempt=1)

    async def renew(self, claims: list[Claim], lease_seconds: float) -> list[Claim]:
        return []  # one agent per name: records stay ``processing`` until answered

    async def complete(self, results: list[tuple[Claim, Result]]) -> list[Claim]:
        for claim, result in results:
            await self._finish(claim.job.id, result)
        return []

    async def _finish(self, job_id: str, result: Result) -> None:
        sys_id, topic, name = self._records.pop(job_id, (job_id, "", ""))
        await self._call(
            "POST",
            TABLE,
            json={
                "agent": self.agent,
                "queue": "input",
                "state": "ready",
                "topic": topic,
                "name": name,
                "source": self.agent,
                "response_to": sys_id,
                "payload": result_payload(result),
            },
        )
        update: dict[str, Any] = {"state": result.state}
        if result.error is not None:
            update["error_string"] = f"{result.error.kind}: {result.error.message}"
        await self._call("PATCH", f"{TABLE}/{sys_id}", json=update)

    async def release(self, claims: list[Claim]) -> None:
        for claim in claims:
            sys_id = self._records.pop(claim.job.id, (claim.job.id, "", ""))[0]
            await self._call("PATCH", f"{TABLE}/{sys_id}", json={"state": "ready"})

    async def status(self, job_id: str) -> JobStatus | None:
        record = await self._find(job_id)
        if record is None:
            return None
        state = record.get("state", "ready")
        if state not in ("processed", "error"):
            return JobStatus(id=job_id, state=state, result=None)
        answer = await self._find(record["sys_id"], queue="input")
        return JobStatus(id=job_id, state=state, result=_result_of(answer, job_id))

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


def _result_of(record: dict[str, Any] | None, job_id: str) -> Result | None:
    if record is None:
        return None
    try:
        root = parse_xml((record.get("payload") or "").encode())
    except XMLRejected:
        return None
    elem = root.find(".//agent_result")
    if elem is None or not elem.text:
        return None
    result = Result.from_dict(json.loads(elem.text))
    return result if result.id == job_id else None


def _looks_like_sys_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)
