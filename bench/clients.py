"""The baselines the agent is compared with, each measured against the same nginx in the same run.

Every client presents the same client certificate and trusts the same root. The Python ones use
the very ``ssl.SSLContext`` the agent builds for a profile (``agent.tls.context.build_context`` over
``load_file_profile``), so TLS settings cannot explain a difference.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from agent.config.config import ProfileConfig
from agent.credentials.sources import load_file_profile
from agent.tls.context import build_context

from .peer import HOST, BenchPKI

TICK = 0.005  # seconds between batches when pacing a rate


def client_context(pki: BenchPKI) -> ssl.SSLContext:
    """The SSLContext the agent itself would build for a profile with these files."""
    profile = ProfileConfig("bench", path=pki.client_crt, key=pki.client_key, truststore=pki.ca)
    material = load_file_profile(profile)
    return build_context(material.client, material.trust, send_sni=True)


class _Loopback(AbstractResolver):
    """``HOST`` → 127.0.0.1 without a lookup (what ``agent.resolve`` does for the agent)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


def _session(concurrency: int, fresh: bool) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=concurrency, resolver=_Loopback(), force_close=fresh, keepalive_timeout=30
    )
    return aiohttp.ClientSession(connector=connector, trust_env=False)


async def _get(session: aiohttp.ClientSession, url: str, ctx: ssl.SSLContext) -> None:
    async with session.get(url, ssl=ctx, allow_redirects=False) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"bare aiohttp: {url} answered {resp.status}")


async def aiohttp_loop(
    url: str, ctx: ssl.SSLContext, n: int, concurrency: int, *, fresh: bool = False
) -> float:
    """Jobs per second: ``concurrency`` coroutines sharing one session run ``n`` GETs."""
    remaining = n

    async def lane(session: aiohttp.ClientSession) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await _get(session, url, ctx)

    async with _session(concurrency, fresh) as session:
        start = time.perf_counter()
        await asyncio.gather(*(lane(session) for _ in range(concurrency)))
        return n / (time.perf_counter() - start)


async def pace(rate: float, n: int, emit: Callable[[int, float], Awaitable[None]]) -> None:
    """Every TICK, ``emit(count, now)`` the jobs due at ``rate`` per second; ``n`` in all."""
    start = time.time()
    sent = 0
    while sent < n:
        now = time.time()
        due = min(n, int((now - start) * rate) + 1) - sent
        if due > 0:
            await emit(due, now)
            sent += due
        await asyncio.sleep(TICK)


async def aiohttp_paced(
    url: str, ctx: ssl.SSLContext, n: int, rate: float, concurrency: int
) -> list[float]:
    """Latencies (s) from the moment each request was due to its answer, at ``rate`` per second."""
    latencies: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, due: float) -> None:
        async with slots:
            await _get(session, url, ctx)
        latencies.append(time.time() - due)

    async with _session(concurrency, False) as session:
        # not measured: open the pool's connections first, as the agent's warm-up jobs do
        await asyncio.gather(*(_get(session, url, ctx) for _ in range(concurrency * 4)))

        async def emit(count: int, now: float) -> None:
            for _ in range(count):
                task = asyncio.create_task(one(session, now))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        await pace(rate, n, emit)
        while tasks:
            await asyncio.gather(*list(tasks))
    return latencies


def requests_pool(url: str, pki: BenchPKI, n: int, concurrency: int) -> float:
    """Jobs per second: a thread pool of ``concurrency``, one ``requests.Session`` per thread."""
    import requests

    local = threading.local()

    def one(_: int) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.trust_env = False  # REQUESTS_CA_BUNDLE would replace our trust store
            session.cert = (str(pki.client_crt), str(pki.client_key))
            session.verify = str(pki.ca)
        resp = session.get(url, allow_redirects=False)
        if resp.status_code != 200:
            raise RuntimeError(f"requests: {url} answered {resp.status_code}")

    with ThreadPoolExecutor(concurrency) as pool:
        start = time.perf_counter()
        list(pool.map(one, range(n)))
        return n / (time.perf_counter() - start)


async def curl_per_job(url: str, port: int, pki: BenchPKI, n: int, concurrency: int) -> float:
    """Jobs per second: one ``curl`` process per job, ``concurrency`` at a time."""
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--resolve"]
    cmd += [f"{HOST}:{port}:127.0.0.1", "--cacert", str(pki.ca)]
    cmd += ["--cert", str(pki.client_crt), "--key", str(pki.client_key), url]
    remaining = n

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            out, err = await proc.communicate()
            if out != b"200":
                raise RuntimeError(f"curl: {out!r} {err.decode(errors='replace')}")

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


_S_TIME = re.compile(r"(\d+) connections in (\d+) real seconds")


def s_time(port: int, pki: BenchPKI, seconds: int, path: str) -> float:
    """Full handshakes (plus one GET each) per second, one at a time: ``openssl s_time -new``."""
    cmd = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", str(seconds)]
    cmd += ["-cert", str(pki.client_crt), "-key", str(pki.client_key), "-CAfile", str(pki.ca)]
    cmd += ["-www", path]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    found = _S_TIME.search(out.stdout)
    if found is None:
        raise RuntimeError(f"openssl s_time: no figure in its output: {out.stdout}{out.stderr}")
    return int(found.group(1)) / max(1, int(found.group(2)))


def tool_version(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "?"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
