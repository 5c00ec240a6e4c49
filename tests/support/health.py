"""The daemon's health listener from outside: GET, waiting for /readyz, reading /metrics."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import free_port

__all__ = ["free_port", "get", "samples", "wait_ready"]


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def wait_ready(base: str, proc: asyncio.subprocess.Process) -> tuple[int, dict[str, object]]:
    """Poll /readyz until the first certificate check and claim are done (or the agent exits)."""
    deadline = time.monotonic() + 30
    while True:
        assert proc.returncode is None, "the agent exited"
        try:
            status, text = await get(f"{base}/readyz")
        except aiohttp.ClientConnectionError:
            status, text = 0, "{}"
        body = json.loads(text)
        pending = [r for r in body.get("reasons", []) if "not" in r and "yet" in r or "first" in r]
        if status and not pending:
            return status, body
        assert time.monotonic() < deadline, f"not settled: {status} {text}"
        await asyncio.sleep(0.1)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out
