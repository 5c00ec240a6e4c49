"""``agent status``: the running agent's summary in the terminal.

With ``agent.health.listen`` set, the summary is the daemon's own ``/status.json`` (throughput,
recent errors, what it found of its certificates). Without it, the same summary is made here
from the queue and config.xml: jobs by state, every profile's certificate (no throughput or
errors: only the daemon knows those). Exit 0 healthy, 1 degraded, 2 unreachable (the daemon's
listener or the queue does not answer).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp

from agent.config.config import AgentConfig
from agent.errors import AgentError
from agent.service.status import StatusBoard, status_of_queue

EXIT_HEALTHY, EXIT_DEGRADED, EXIT_UNREACHABLE = 0, 1, 2
TIMEOUT = 5.0


async def run_status(config: AgentConfig, *, as_json: bool) -> int:
    try:
        if config.health_listen is not None:
            status = await _from_daemon(config.health_listen)
        else:
            status = await _from_queue(config)
    except _Unreachable as exc:
        print(f"agent status: unreachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if as_json:
        sys.stdout.write(json.dumps(status, indent=2) + "\n")
    else:
        sys.stdout.write(format_status(status))
    return EXIT_HEALTHY if status["state"] == "healthy" else EXIT_DEGRADED


class _Unreachable(Exception):
    pass


async def _from_daemon(listen: tuple[str, int]) -> dict[str, Any]:
    host, port = listen
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # listening everywhere: this host answers on loopback
    url = f"http://{host}:{port}/status.json"
    try:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout, trust_env=False) as session,
            session.get(url) as resp,
        ):
            if resp.status != 200:
                raise _Unreachable(f"{url} answered HTTP {resp.status}")
            status: dict[str, Any] = await resp.json()
            return status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        reason = str(exc) or exc.__class__.__name__
        raise _Unreachable(f"{url} (agent.health.listen): {reason}") from None


async def _from_queue(config: AgentConfig) -> dict[str, Any]:
    from agent.engine.engine import Engine
    from agent.queues import open_queue
    from agent.tls.reports import collect_reports

    queue = open_queue(config)
    try:
        await asyncio.wait_for(queue.open(), TIMEOUT)
        summary = await asyncio.wait_for(queue.summary(), TIMEOUT)
    except (AgentError, TimeoutError) as exc:
        raise _Unreachable(f"the queue: {exc or 'no answer within 5 s'}") from None
    finally:
        await queue.close()
    board = StatusBoard()
    engine = Engine(config)
    try:
        for report in await collect_reports(
            config, engine.state.identities, sorted(config.profiles)
        ):
            board.report(report)
    finally:
        await engine.close()
    snapshot = board.snapshot(config, queue=status_of_queue(summary), reasons=[], running=0)
    snapshot["source"] = "queue and config.xml (agent.health.listen is not set)"
    return snapshot


def format_status(status: dict[str, Any]) -> str:
    a, q, t = status["agent"], status["queue"], status["throughput"]
    lines = [f"{a['name']} {a['version']}: {status['state'].upper()}"]
    lines += [f"  ! {problem}" for problem in status["problems"]]
    if "source" in status:
        lines.append(f"  from {status['source']}")
    else:
        lines.append(
            f"  up {a['uptime_seconds']} s, {a['workers']} worker(s) × {a['threads']} thread(s),"
            f" {a['running']} running"
        )
        lines.append(
            f"  last {t['window_seconds'] // 60} min: {t['jobs']} job(s),"
            f" {t['jobs_per_second']} jobs/s, {t['errors']} error(s)"
        )
    if q.get("available"):
        states = ", ".join(f"{state} {n}" for state, n in q["by_state"].items())
        oldest = q.get("oldest_waiting_seconds")
        waited = f"; oldest waiting {oldest:.0f} s" if oldest is not None else ""
        lines.append(f"queue: {states}{waited}")
    else:
        lines.append(f"queue: {q.get('reason', 'not available')}")
    for kind in status["errors"]["by_kind"]:
        lines.append(f"errors {kind['kind']}: {kind['count']}, last: {kind['last']['message']}")
    lines.append(f"profiles (warning at {status['cert_warn_days']} days):")
    for p in status["profiles"]:
        days = p.get("days_left")
        left = "not checked" if not p.get("checked") else f"{days} day(s) left"
        if p.get("checked") and days is None:
            left = "no client certificate"
        subject = p.get("subject") or "-"
        lines.append(f"  {p['name']:<20} {p['level']:<7} {left:<20} {p['source']:<9} {subject}")
        lines += [f"      {note}" for note in (*p.get("problems", ()), *p.get("warnings", ()))]
    if not status["profiles"]:
        lines.append("  none")
    return "\n".join(lines) + "\n"
