"""An in-test implementation of the instance's REST Table API, for the ``ecc_queue`` table.

It follows the documented behaviour the agent relies on: basic auth (401 on bad credentials),
``GET /api/now/table/ecc_queue`` with an encoded ``sysparm_query`` (``field=value``,
``fieldINa,b``, ``field<value``, ``fieldISEMPTY``, ``^`` for AND, ``^OR``, ``ORDERBYfield``) and
``sysparm_limit``, ``GET .../{sys_id}`` (404 when unknown), ``POST`` (insert; ``sys_id`` assigned
unless given), ``PATCH .../{sys_id}`` (update; it answers the record as written). Answers are
``{"result": ...}``. ``outage`` makes every call answer 503; ``lacks`` names fields the table
does not have (writes to them are dropped, as the Table API drops unknown fields);
``after_patch`` lands another writer's fields right after a PATCH of that record.
"""

from __future__ import annotations

import base64
import itertools
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TABLE = "/api/now/table/ecc_queue"


def _term(record: dict[str, Any], term: str) -> bool:
    """One condition: ``fieldISEMPTY``, ``fieldINa,b``, ``field<value`` or ``field=value``
    (values compare as text, as they do for a string field)."""
    if term.endswith("ISEMPTY"):
        return str(record.get(term[: -len("ISEMPTY")]) or "") == ""
    if "IN" in term and "=" not in term and "<" not in term:
        name, _, values = term.partition("IN")
        return str(record.get(name, "")) in values.split(",")
    if "<" in term:
        name, _, value = term.partition("<")
        held = str(record.get(name) or "")
        return held != "" and held < value
    name, _, value = term.partition("=")
    return str(record.get(name, "")) == value


def _matches(record: dict[str, Any], query: str) -> bool:
    """An encoded query: ``^`` joins conditions with AND; ``^OR`` joins a condition to the one
    before it with OR (as the instance reads ``a=1^b=2^ORc=3``: a=1 AND (b=2 OR c=3))."""
    groups: list[list[str]] = []
    for term in filter(None, query.split("^")):
        if term.startswith("ORDERBY"):
            continue
        if term.startswith("OR") and groups:
            groups[-1].append(term[2:])
        else:
            groups.append([term])
    return all(any(_term(record, term) for term in group) for group in groups)


def _order(query: str) -> str | None:
    for term in query.split("^"):
        if term.startswith("ORDERBY"):
            return term[len("ORDERBY") :]
    return None


@dataclass
class FakeInstance:
    username: str = "mid.user"
    password: str = "mid-pass"
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    outage: bool = False
    calls: int = 0
    lacks: tuple[str, ...] = ()  # fields the table does not have: dropped from writes
    after_patch: dict[str, dict[str, Any]] = field(default_factory=dict)  # sys_id -> fields
    _clock: itertools.count[int] = field(default_factory=itertools.count)

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return header == f"Basic {expected}"

    @web.middleware
    async def guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.calls += 1
        if self.outage:
            return web.json_response({"error": "maintenance"}, status=503)
        if not self._authorised(request):
            return web.json_response({"error": {"message": "User Not Authenticated"}}, status=401)
        return await handler(request)  # type: ignore[no-any-return]

    async def list(self, request: web.Request) -> web.Response:
        query = request.query.get("sysparm_query", "")
        limit = int(request.query.get("sysparm_limit", "10000"))
        found = [r for r in self.records.values() if _matches(r, query)]
        key = _order(query)
        if key:
            found.sort(key=lambda r: r.get(key, ""))
        return web.json_response({"result": found[:limit]})

    async def get(self, request: web.Request) -> web.Response:
        record = self.records.get(request.match_info["sys_id"])
        if record is None:
            return web.json_response({"error": {"message": "No Record found"}}, status=404)
        return web.json_response({"result": record})

    async def insert(self, request: web.Request) -> web.Response:
        body = self._known(await request.json())
        sys_id = body.get("sys_id") or uuid.uuid4().hex
        record = {**body, "sys_id": sys_id, "sys_created_on": f"{next(self._clock):012d}"}
        self.records[sys_id] = record
        return web.json_response({"result": record}, status=201)

    async def update(self, request: web.Request) -> web.Response:
        record = self.records.get(request.match_info["sys_id"])
        if record is None:
            return web.json_response({"error": {"message": "No Record found"}}, status=404)
        record.update(self._known(await request.json()))
        answer = web.json_response({"result": record})
        record.update(self.after_patch.pop(record["sys_id"], {}))
        return answer

    def _known(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The fields of a write that the table has (the Table API ignores the others)."""
        return {k: v for k, v in fields.items() if k not in self.lacks}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.guard])
        app.router.add_get(TABLE, self.list)
        app.router.add_post(TABLE, self.insert)
        app.router.add_get(TABLE + "/{sys_id}", self.get)
        app.router.add_patch(TABLE + "/{sys_id}", self.update)
        return app

    def output_record(self, topic: str, payload: str, agent: str, **extra: Any) -> str:
        sys_id = uuid.uuid4().hex
        self.records[sys_id] = {
            "sys_id": sys_id,
            "agent": agent,
            "queue": "output",
            "state": "ready",
            "topic": topic,
            "name": "probe",
            "payload": payload,
            "sys_created_on": f"{next(self._clock):012d}",
            **extra,
        }
        return sys_id

    def answers_to(self, sys_id: str) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records.values()
            if r.get("queue") == "input" and r.get("response_to") == sys_id
        ]


@asynccontextmanager
async def serve_instance(instance: FakeInstance, server_ctx: ssl.SSLContext) -> AsyncIterator[str]:
    """Serve ``instance`` over HTTPS on 127.0.0.1; yields its base URL."""
    runner = web.AppRunner(instance.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
