"""What ``/readyz`` decides from (``agent.service.health`` serves it).

Apart from the server so that a daemon without ``agent.health.listen`` never imports aiohttp's
web server (about 2 MiB): the readiness is kept either way, for ``agent status`` and the logs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable

from agent.credentials.inspect import ProfileReport
from agent.errors import AgentError

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
