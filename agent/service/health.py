"""``agent.health.listen``: ``/healthz``, ``/readyz`` and ``/metrics`` over plain HTTP.

- ``/healthz`` answers 200 whenever the event loop does: a hung loop cannot answer at all.
- ``/readyz`` answers 200 only when the last claim at the queue succeeded (and recently, unless
  every thread is busy and the worker has no reason to claim), the certificate check has run and
  found no expired client certificate, and every pluggable check (the vault, when profiles use
  it) passes; otherwise 503 with ``{"ready": false, "reasons": [...]}``.
- ``/metrics`` is the Prometheus text format of ``agent.metrics``.
- ``/status`` is a page for people (``agent.service.status_page``), ``/status.json`` the same
  summary for programs and ``agent status`` (``agent.service.status``).

Under ``agent.workers`` > 1 only worker 0 (``AGENT_WORKER_INDEX`` unset or ``0``) listens: the
port can be bound once. Its ``/metrics`` adds up all workers' values (see ``agent.metrics``).
Bind it to loopback or a management network: it has no authentication.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from agent.errors import ServiceError
from agent.service.metrics import CONTENT_TYPE, Metrics
from agent.service.readiness import CHECK_TIMEOUT, Readiness
from agent.service.status_page import render

log = logging.getLogger("agent.health")


class HealthServer:
    def __init__(
        self,
        listen: tuple[str, int],
        readiness: Readiness,
        metrics: Metrics,
        refresh: Callable[[], Awaitable[None]] | None = None,
        *,
        status: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.listen = listen
        self.readiness = readiness
        self.metrics = metrics
        self.refresh = refresh  # updates gauges (queue depth) before a scrape
        self.status = status  # the summary behind /status and /status.json
        self._runner: web.AppRunner | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        if self.status is not None:
            app.router.add_get("/status", self._status_page)
            app.router.add_get("/status.json", self._status_json)
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await runner.setup()
        host, port = self.listen
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            # Not a config error: the value is fine, the port is taken (or the address is not
            # this host's) right now. A runtime failure, exit 1.
            reason = (os.strerror(exc.errno) if exc.errno else str(exc)).lower()
            raise ServiceError(
                f"health server: cannot listen on {host}:{port} (agent.health.listen): {reason}"
            ) from None
        self._runner = runner
        log.info(
            "health and metrics on http://%s:%d (/healthz, /readyz, /metrics, /status)", host, port
        )

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, _: web.Request) -> web.Response:
        reasons = await self.readiness.reasons()
        body = {"ready": not reasons, "reasons": reasons}
        return web.Response(
            status=503 if reasons else 200,
            text=json.dumps(body),
            content_type="application/json",
        )

    async def _metrics(self, _: web.Request) -> web.Response:
        if self.refresh is not None:
            try:
                await asyncio.wait_for(self.refresh(), CHECK_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - stale gauges beat a failed scrape
                log.debug("metrics refresh failed: %s", exc)
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def _status_json(self, _: web.Request) -> web.Response:
        assert self.status is not None
        return web.Response(
            text=json.dumps(await self.status(), indent=1),
            content_type="application/json",
            headers=NO_STORE,
        )

    async def _status_page(self, _: web.Request) -> web.Response:
        assert self.status is not None
        page = render(await self.status())
        return web.Response(text=page, content_type="text/html", headers=NO_STORE)


# The status changes by the second, and says what the agent runs: no cache keeps a copy.
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
