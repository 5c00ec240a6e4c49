"""An in-test implementation of the instance's REST Table API, for the ``ecc_queue`` table.

It follows the documented behaviour the agent relies on: basic auth (401 on bad credentials),
``GET /api/now/table/ecc_queue`` with an encoded ``sysparm_query`` (``field=value``,
``fieldINa,b``, ``^`` for AND, ``ORDERBYfield``) and ``sysparm_limit``, ``GET .../{sys_id}``
(404 when unknown), ``POST`` (insert; ``sys_id`` assigned unless given), ``PATCH .../{sys_id}``
(update). Answers are ``{"result": ...}``. ``outage`` makes every call answer 503.
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


def _matches(record: dict[str, Any], query: str) -> bool:
    for term in filter(None, query.split("^")):
        if term.startswith("ORDERBY"):
            continue
        if "IN" in term and "=" not in term:
            name, _, values = term.partition("IN")
            if str(record.get(name, "")) not in values.split(","):
                return False
        else:
            name, _, value = term.partition("=")
            if str(record.get(name, "")) != value:
                return False
    return True


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
        body = await request.json()
        sys_id = body.get("sys_id") or uuid.uuid4().hex
        record = {**body, "sys_id": sys_id, "sys_created_on": f"{next(self._clock):012d}"}
        self.records[sys_id] = record
        return web.json_response({"result": record}, status=201)

    async def update(self, request: web.Request) -> web.Response:
        record = self.records.get(request.match_info["sys_id"])
        if record is None:
            return web.json_response({"error": {"message": "No Record found"}}, status=404)
        record.update(await request.json())
        return web.json_response({"result": record})

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
