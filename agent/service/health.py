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
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from agent.credentials.inspect import ProfileReport
from agent.errors import AgentError, ServiceError
from agent.service.metrics import CONTENT_TYPE, Metrics
from agent.service.status_page import render

log = logging.getLogger("agent.health")

ReadinessCheck = Callable[[], Awaitable[str | None]]  # a reason when not ready, else None
CHECK_TIMEOUT = 5.0


def serves_health(worker_index: str | None) -> bool:
    """Whether this process serves health: a lone agent, or worker 0 under the supervisor."""
    return worker_index in (None, "", "0")


class Readiness:
    """What ``/readyz`` decides from: fed by the worker's claims and the certificate watch."""

    def __init__(self, stale_after: float, busy: Callable[[], bool] = lambda: False) -> None:
        self.stale_after = stale_after
        self.busy = busy
        self.checks: dict[str, ReadinessCheck] = {}
        self.certificates_checked = False
        self._last_ok: float | None = None
        self._queue_error: str | None = None
        self._expired: dict[str, str] = {}

    def claimed(self, error: Exception | None) -> None:
        if error is None:
            self._last_ok, self._queue_error = time.monotonic(), None
        else:
            self._queue_error = str(error)

    def certificate(self, report: ProfileReport) -> None:
        now = dt.datetime.now(dt.UTC)
        if report.not_after is not None and report.not_after <= now:
            self._expired[report.name] = f"{report.not_after:%Y-%m-%d %H:%M} UTC"
        else:
            self._expired.pop(report.name, None)

    def keep_profiles(self, names: set[str]) -> None:
        """After a reload: forget profiles that are gone."""
        for name in set(self._expired) - names:
            del self._expired[name]

    async def reasons(self) -> list[str]:
        out = self._queue_reasons()
        if not self.certificates_checked:
            out.append("certificates: the first check has not finished")
        out += [
            f"profile {name}: the client certificate expired on {when}"
            for name, when in sorted(self._expired.items())
        ]
        for name, check in sorted(self.checks.items()):
            reason = await _run_check(name, check)
            if reason:
                out.append(f"{name}: {reason}")
        return out

    def _queue_reasons(self) -> list[str]:
        if self._queue_error is not None:
            return [f"queue: the last claim failed: {self._queue_error}"]
        if self._last_ok is None:
            return ["queue: not polled yet"]
        age = time.monotonic() - self._last_ok
        if age > self.stale_after and not self.busy():
            return [f"queue: no successful claim for {age:.0f} s"]
        return []


async def _run_check(name: str, check: ReadinessCheck) -> str | None:
    try:
        return await asyncio.wait_for(check(), CHECK_TIMEOUT)
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT:.0f} s"
    except AgentError as exc:
        return exc.message
    except Exception as exc:  # noqa: BLE001 - a broken check makes the agent unready, not dead
        log.exception("readiness check %s failed", name)
        return f"check failed: {exc.__class__.__name__}"


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
