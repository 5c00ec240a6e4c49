"""``python -m bench.run [--quick] [--runs N] [--profile DIR]``: every scenario, one table.

Scenarios (each run ``--runs`` times, interleaved round by round, figures are medians):

1. warm — kept-alive mTLS: the daemon over the embedded SQLite queue, as one process and as
   ``agent.workers`` = CPUs processes (``--workers``) whose ``threads.max`` add up to no more
   than the baselines' concurrency; the PostgreSQL queue when the server answers; a bare
   aiohttp loop; a ``requests`` thread pool; then queue-to-result latency of one process with
   jobs enqueued at half its peak rate while it runs (not burst), against the bare loop paced
   the same way;
2. cold — a fresh handshake per job (nginx closes after each answer): the daemon in both
   shapes, bare aiohttp with ``force_close``, one ``curl`` per job, ``openssl s_time -new``;
3. scale — 1, 100 and 1,000 profiles, each its own client certificate: one job each (their
   first handshakes), then 10,000 round-robin; jobs/s after the first handshakes and over all,
   handshakes per profile (nginx's accepted connections) and the daemon's peak RSS;
4. start-up — spawn of ``agent run`` to the first claim.

The throughput targets are judged on the multi-process shape (the issue's answer when one
process is the limit); the one-process ratios are printed beside them. The daemon's
``threads.max`` equals the baselines' concurrency (``--concurrency``, default 25, the agent's
default). Ratios compare figures from the same run only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config.config import load_config
from agent.jobs.model import Job
from agent.queues import open_queue

from . import agentrun, clients
from .peer import BenchNginx, BenchPKI, nginx_version

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
SCENARIOS = frozenset({"warm", "paced", "cold", "scale"})
MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    runs: int = 3
    warm: int = 20_000
    cold: int = 2_000
    requests_jobs: int = 5_000
    curl_jobs: int = 1_000
    scale_jobs: int = 10_000  # after one job per profile: 10 more each at 1,000 profiles
    scale_profiles: tuple[int, ...] = (1, 100, 1000)
    scale_wide: bool = False  # also the most profiles with an idle connection kept for each
    latency_seconds: float = 10.0
    s_time_seconds: int = 5
    concurrency: int = 25
    poll: float = 0.01  # mid.poll.time for the paced run (a wait's bound: commits wake it first)
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    only: frozenset[str] = SCENARIOS  # the scenarios to run (``--only``)

    @property
    def threads_per_worker(self) -> int:
        """threads.max of each of ``workers`` processes: together no more than ``concurrency``."""
        return max(1, self.concurrency // self.workers)


QUICK = Settings(
    runs=1,
    warm=1_000,
    cold=200,
    requests_jobs=500,
    curl_jobs=100,
    scale_jobs=500,
    scale_profiles=(1, 10, 100),
    latency_seconds=2.0,
    s_time_seconds=1,
)


@dataclass
class Figures:
    """Every measurement by name, one value per run; reported as medians."""

    values: dict[str, list[float]] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)  # the last round's latencies

    def add(self, name: str, value: float | None) -> None:
        if value is not None:
            print(f"    {name} = {value:,.1f}", file=sys.stderr, flush=True)
            self.values.setdefault(name, []).append(value)

    def get(self, name: str) -> float | None:
        vals = self.values.get(name)
        return statistics.median(vals) if vals else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class Bench:
    def __init__(self, settings: Settings, work: Path, pki: BenchPKI, nginx: BenchNginx) -> None:
        self.s = settings
        self.work = work
        self.pki = pki
        self.nginx = nginx
        self.ctx: ssl.SSLContext = clients.client_context(pki)
        self.fig = Figures()
        self.pg_url: str | None = None
        self.notes: list[str] = []
        self._clients: dict[int, list[tuple[Path, Path]]] = {}  # client certificates by count

    def say(self, text: str) -> None:
        print(f"  {text}", file=sys.stderr, flush=True)

    # -- the daemon ---------------------------------------------------------------------------

    async def agent_burst(
        self,
        tag: str,
        *,
        port: int,
        n: int,
        profiles: int = 1,
        url: str | None = None,
        workers: int = 1,
    ) -> tuple[float, agentrun.DaemonRun]:
        """Enqueue ``n`` jobs, run ``agent run --burst``; jobs/s from first claim to last result."""
        jobs = agentrun.make_jobs(n, port, profiles, tag)
        threads = self.s.concurrency if workers == 1 else self.s.threads_per_worker
        run, first_claim = await self._burst(
            tag, jobs, 600, port=port, threads=threads, profiles=profiles, url=url, workers=workers
        )
        last = run.exited
        if url is None:
            rows = agentrun.sqlite_rows(self.work / tag / "queue.db", tag)
            agentrun.check_processed(rows, n, tag)
            last = max(u for _, _, u in rows)
        return n / (last - first_claim), run

    async def _burst(
        self, tag: str, jobs: list[Job], timeout: float, **config: Any
    ) -> tuple[agentrun.DaemonRun, float]:
        """Write ``tag``'s config.xml (``config``: ``write_config``'s settings), enqueue
        ``jobs``, run ``agent run --burst`` over them; the run and its first claim's time."""
        config_path = agentrun.write_config(self.work / tag, self.pki, **config)
        await agentrun.enqueue(load_config(config_path), jobs)
        run = await agentrun.run_burst(config_path, jobs[0].id, timeout=timeout)
        if run.first_claim is None:
            raise RuntimeError(f"{tag}: the first claim was not seen")
        return run, run.first_claim

    async def agent_paced(self, tag: str, rate: float, n: int) -> list[float]:
        """Queue-to-result latencies with jobs enqueued at ``rate`` while the daemon runs."""
        directory = self.work / tag
        port = self.nginx.warm_port
        config_path = agentrun.write_config(
            directory, self.pki, port=port, threads=self.s.concurrency, poll=self.s.poll
        )
        config = load_config(config_path)
        warm = agentrun.make_jobs(self.s.concurrency * 4, port, 1, f"{tag}w")
        await agentrun.enqueue(config, warm)
        daemon = agentrun.Daemon(config_path, burst=False)
        await daemon.start()
        db = directory / "queue.db"
        try:
            await _until(lambda: agentrun.sqlite_pending(db) == 0, 60, "warm-up jobs")
            jobs = agentrun.make_jobs(n, port, 1, tag)
            queue = open_queue(config)
            await queue.open()
            try:
                sent = 0

                async def emit(count: int, now: float) -> None:
                    nonlocal sent
                    await queue.enqueue(jobs[sent : sent + count])
                    sent += count

                await clients.pace(rate, n, emit)
            finally:
                await queue.close()
            await _until(lambda: agentrun.sqlite_pending(db) == 0, 120, "paced jobs")
        finally:
            await daemon.stop()
        rows = agentrun.sqlite_rows(db, tag)
        agentrun.check_processed(rows, n, tag)
        return [u - c for _, c, u in rows]

    # -- one round of every scenario -----------------------------------------------------------

    async def round(self, i: int) -> None:
        only = self.s.only
        if only & {"warm", "paced"}:
            await self.warm_round(i, baselines="warm" in only)
        if "paced" in only:
            await self.latency_round(i)
        if "cold" in only:
            await self.cold_round(i)
        if "scale" in only:
            await self.scale_round(i)

    async def warm_round(self, i: int, *, baselines: bool) -> None:
        """The warm figures (one process alone when only its peak is needed, for ``paced``)."""
        s, f, warm_url = self.s, self.fig, self.nginx.url(self.nginx.warm_port)
        self.say(f"round {i + 1}/{s.runs}: warm")
        rate, run = await self.agent_burst(f"warm-sqlite-{i}", port=self.nginx.warm_port, n=s.warm)
        f.add("warm.agent.sqlite", rate)
        if run.cpu_main is not None and run.cpu_other is not None:
            f.add("warm.agent.cpu_main", run.cpu_main / s.warm * 1e6)
            f.add("warm.agent.cpu_other", run.cpu_other / s.warm * 1e6)
        if not baselines:
            return
        if s.workers > 1:
            self.say(f"round {i + 1}/{s.runs}: warm, agent.workers={s.workers}")
            rate, _ = await self.agent_burst(
                f"warm-workers-{i}", port=self.nginx.warm_port, n=s.warm, workers=s.workers
            )
            f.add("warm.agent.workers", rate)
        if self.pg_url is not None:
            db = await _pg_create(f"bench_{i}")
            try:
                url = self.pg_url.rsplit("/", 1)[0] + f"/{db}"
                rate, _ = await self.agent_burst(
                    f"warm-pg-{i}", port=self.nginx.warm_port, n=s.warm, url=url
                )
                f.add("warm.agent.postgres", rate)
            finally:
                await _pg_drop(db)
        before = _cpu()
        f.add("warm.aiohttp", await clients.aiohttp_loop(warm_url, self.ctx, s.warm, s.concurrency))
        f.add("warm.aiohttp.cpu", (_cpu() - before) / s.warm * 1e6)
        f.add(
            "warm.requests",
            await asyncio.to_thread(
                clients.requests_pool, warm_url, self.pki, s.requests_jobs, s.concurrency
            ),
        )

    async def latency_round(self, i: int) -> None:
        peak = self.fig.get("warm.agent.sqlite")
        assert peak is not None
        rate = peak / 2
        n = max(self.s.concurrency, int(rate * self.s.latency_seconds))
        self.say(f"round {i + 1}: paced latency at {rate:.0f} jobs/s")
        agent = await self.agent_paced(f"paced-{i}", rate, n)
        bare = await clients.aiohttp_paced(
            self.nginx.url(self.nginx.warm_port), self.ctx, n, rate, self.s.concurrency
        )
        self.fig.add("paced.rate", rate)
        self.fig.samples = {"agent, queue → result": agent, "bare aiohttp, due → answer": bare}
        for name, lat in (("agent", agent), ("aiohttp", bare)):
            self.fig.add(f"paced.{name}.p50", percentile(lat, 0.5) * 1000)
            self.fig.add(f"paced.{name}.p99", percentile(lat, 0.99) * 1000)

    async def cold_round(self, i: int) -> None:
        s, f, port = self.s, self.fig, self.nginx.cold_port
        url = self.nginx.url(port)
        self.say(f"round {i + 1}: cold")
        rate, _ = await self.agent_burst(f"cold-{i}", port=port, n=s.cold)
        f.add("cold.agent", rate)
        if s.workers > 1:
            rate, _ = await self.agent_burst(
                f"cold-workers-{i}", port=port, n=s.cold, workers=s.workers
            )
            f.add("cold.agent.workers", rate)
        f.add("cold.aiohttp", await clients.aiohttp_loop(url, self.ctx, s.cold, s.concurrency))
        f.add(
            "cold.curl",
            await clients.curl_per_job(url, port, self.pki, s.curl_jobs, s.concurrency),
        )
        f.add(
            "cold.s_time",
            await asyncio.to_thread(clients.s_time, port, self.pki, s.s_time_seconds, "/bench"),
        )

    async def scale_round(self, i: int) -> None:
        for k in self.s.scale_profiles:
            self.say(f"round {i + 1}: scale, {k} profiles")
            self.scale_figures(k, "", await self.agent_scale(f"scale-{k}-{i}", k))
        if self.s.scale_wide:  # as many idle connections kept as identities, long enough
            k = self.s.scale_profiles[-1]  # for the first jobs of all of them to pass (> 30 s)
            self.say(f"round {i + 1}: scale, {k} profiles, agent.http.max_idle_connections={k}")
            extra = {"agent.http.max_idle_connections": str(k), "agent.http.idle_seconds": "900"}
            self.scale_figures(k, "wide.", await self.agent_scale(f"wide-{k}-{i}", k, extra))

    def scale_figures(self, k: int, prefix: str, run: ScaleRun) -> None:
        self.fig.add(f"{prefix}scale.{k}", run.rate_after)
        self.fig.add(f"{prefix}scale_all.{k}", run.rate_all)
        self.fig.add(f"{prefix}handshakes.{k}", run.handshakes / k)
        self.fig.add(f"{prefix}rss.{k}", run.daemon.peak_rss)
        if not prefix:
            self.fig.add(f"startup.{k}", run.daemon.startup)

    async def agent_scale(self, tag: str, k: int, extra: dict[str, str] | None = None) -> ScaleRun:
        """``k`` profiles, each its own client certificate: one job each (their first
        handshakes), then ``scale_jobs`` round-robin; jobs/s of those after the last first one,
        and nginx's accepted connections (handshakes) over the whole run."""
        clients = self._clients.get(k)
        if clients is None:
            clients = self._clients[k] = self.pki.clients(self.work / f"clients-{k}", k)
        port = self.nginx.warm_port
        first = agentrun.make_jobs(k, port, k, f"{tag}-w")
        jobs = first + agentrun.make_jobs(self.s.scale_jobs, port, k, f"{tag}-m")
        accepted = self.nginx.accepted()
        daemon, first_claim = await self._burst(
            tag,
            jobs,
            900,
            port=port,
            threads=self.s.concurrency,
            profiles=k,
            clients=clients,
            extra=extra,
        )
        handshakes = self.nginx.accepted() - accepted - 1  # the second read is a connection too
        db = self.work / tag / "queue.db"
        warm = agentrun.sqlite_rows(db, f"{tag}-w")
        main = agentrun.sqlite_rows(db, f"{tag}-m")
        agentrun.check_processed(warm, k, f"{tag} first jobs")
        agentrun.check_processed(main, self.s.scale_jobs, tag)
        firsts_done = max(u for _, _, u in warm)
        after = [u for _, _, u in main if u > firsts_done]
        last = max(u for _, _, u in main)
        rate_after = len(after) / (max(after) - firsts_done) if len(after) > 1 else None
        rate_all = (k + self.s.scale_jobs) / (max(last, firsts_done) - first_claim)
        return ScaleRun(rate_all, rate_after, handshakes, daemon)


@dataclass(frozen=True)
class ScaleRun:
    rate_all: float  # all jobs, from the first claim
    rate_after: float | None  # jobs finished after every profile's first job had
    handshakes: int  # connections nginx accepted during the run
    daemon: agentrun.DaemonRun


def _cpu() -> float:
    """This process's CPU seconds so far (the bare loop runs in it, alone)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not finish within {timeout:g} s")
        await asyncio.sleep(0.01)


# -- PostgreSQL: a database of our own per run, dropped afterwards -------------------------------


async def _pg_connect(url: str) -> Any:
    import asyncpg

    return await asyncio.wait_for(asyncpg.connect(url), 5)


async def postgres_available(url: str) -> str | None:
    """None when the PostgreSQL queue can be benchmarked, else why not."""
    if not (Path(agentrun.REPO) / "agent" / "queues" / "postgres.py").exists():
        return "agent/queues/postgres.py does not exist yet"
    try:
        con = await _pg_connect(url)
    except Exception as exc:  # noqa: BLE001 - any failure means: skip with the reason
        return f"PostgreSQL at {url} does not answer ({exc.__class__.__name__})"
    await con.close()
    return None


async def _pg_create(stem: str) -> str:
    name = f"{stem}_{os.getpid()}"
    con = await _pg_connect(PG_URL)
    try:
        await con.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await con.execute(f'CREATE DATABASE "{name}"')
    finally:
        await con.close()
    return name


async def _pg_drop(name: str) -> None:
    con = await _pg_connect(PG_URL)
    try:
        await con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await con.close()


# -- output ------------------------------------------------------------------------------------


def environment() -> list[str]:
    import platform

    import aiohttp

    return [
        f"machine: {os.cpu_count()} CPU(s), {clients.cpu_model()}, {platform.machine()}",
        f"python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"{ssl.OPENSSL_VERSION}, nginx {nginx_version()}",
        f"{clients.tool_version(['curl', '--version'])}",
    ]


def table(s: Settings, f: Figures) -> list[str]:
    def val(name: str, fmt: str = "{:,.0f}", scale: float = 1.0) -> str:
        v = f.get(name)
        return "n/a" if v is None else fmt.format(v / scale)

    c = s.concurrency
    rows = [
        (
            "warm",
            f"agent, embedded SQLite queue ({s.warm:,} jobs)",
            "jobs/s",
            val("warm.agent.sqlite"),
        ),
        (
            "warm",
            f"agent, SQLite, agent.workers={s.workers} × threads.max {s.threads_per_worker}",
            "jobs/s",
            val("warm.agent.workers"),
        ),
        ("warm", "agent, PostgreSQL queue", "jobs/s", val("warm.agent.postgres")),
        ("warm", f"bare aiohttp loop, {c} at once", "jobs/s", val("warm.aiohttp")),
        (
            "warm",
            "agent, one process: CPU per job, event loop / other threads",
            "µs",
            f"{val('warm.agent.cpu_main', '{:.0f}')} / {val('warm.agent.cpu_other', '{:.0f}')}",
        ),
        ("warm", "bare aiohttp loop: CPU per request", "µs", val("warm.aiohttp.cpu", "{:.0f}")),
        (
            "warm",
            f"requests pool, {c} threads ({s.requests_jobs:,} jobs)",
            "jobs/s",
            val("warm.requests"),
        ),
        ("paced", "rate = half the agent's warm peak", "jobs/s", val("paced.rate")),
        (
            "paced",
            "agent queue→result p50 / p99",
            "ms",
            f"{val('paced.agent.p50', '{:.1f}')} / {val('paced.agent.p99', '{:.1f}')}",
        ),
        (
            "paced",
            "bare aiohttp due→answer p50 / p99",
            "ms",
            f"{val('paced.aiohttp.p50', '{:.1f}')} / {val('paced.aiohttp.p99', '{:.1f}')}",
        ),
        ("cold", f"agent ({s.cold:,} jobs, new handshake each)", "jobs/s", val("cold.agent")),
        (
            "cold",
            f"agent, agent.workers={s.workers} × threads.max {s.threads_per_worker}",
            "jobs/s",
            val("cold.agent.workers"),
        ),
        ("cold", "bare aiohttp, force_close", "jobs/s", val("cold.aiohttp")),
        ("cold", f"curl process per job ({s.curl_jobs:,})", "jobs/s", val("cold.curl")),
        ("cold", "openssl s_time -new (one at a time)", "conn/s", val("cold.s_time")),
    ]
    wide = [("", s.scale_profiles)]
    if s.scale_wide:
        wide.append(("wide.", s.scale_profiles[-1:]))
    for prefix, ks in wide:
        for k in ks:
            what = f"{k:,} profile(s)" + (f", {k:,} idle kept 900 s" if prefix else "")
            rows += [
                (
                    "scale",
                    f"{what}: jobs/s after first handshakes",
                    "jobs/s",
                    val(f"{prefix}scale.{k}"),
                ),
                ("scale", f"{what}: jobs/s, all", "jobs/s", val(f"{prefix}scale_all.{k}")),
                (
                    "scale",
                    f"{what}: handshakes per profile",
                    "",
                    val(f"{prefix}handshakes.{k}", "{:.2f}"),
                ),
                (
                    "scale",
                    f"{what}: daemon peak RSS",
                    "MiB",
                    val(f"{prefix}rss.{k}", "{:.1f}", MIB),
                ),
            ]
    for k in (s.scale_profiles[0], s.scale_profiles[-1]):
        rows.append(
            (
                "start",
                f"spawn → first claim, {k:,} profile(s)",
                "ms",
                val(f"startup.{k}", "{:.0f}", 0.001),
            )
        )
    if s.only != SCENARIOS:  # leave out what was not run
        rows = [r for r in rows if any(part.strip() != "n/a" for part in r[3].split(" / "))]
    width = max(len(r[1]) for r in rows)
    out = [f"{'scenario':<8} {'what':<{width}} {'value':>14} unit", "-" * (width + 32)]
    out += [f"{a:<8} {b:<{width}} {d:>14} {u}" for a, b, u, d in rows]
    return out


def targets(s: Settings, f: Figures) -> list[str]:
    """PASS/MISS per target. A ratio is the median of the rounds' own ratios: each round runs the
    agent and its baseline minutes apart, so a slow spell of the machine shows in both."""

    def paired(a: str, b: str, op: Callable[[float, float], float | None]) -> float | None:
        xs, ys = f.values.get(a, []), f.values.get(b, [])
        if len(xs) == len(ys) and xs:
            per_round = [
                v for v in (op(x, y) for x, y in zip(xs, ys, strict=True)) if v is not None
            ]
            return statistics.median(per_round) if per_round else None
        x, y = f.get(a), f.get(b)
        return None if x is None or y is None else op(x, y)

    def ratio(a: str, b: str) -> float | None:
        return paired(a, b, lambda x, y: x / y if y else None)

    lines = []

    def check(label: str, value: float | None, ok: Callable[[float], bool], fmt: str) -> None:
        verdict = "n/a " if value is None else ("PASS" if ok(value) else "MISS")
        shown = "n/a" if value is None else fmt.format(value)
        lines.append(f"{verdict}  {label}: {shown}")

    def at_least(label: str, over: str, under: str, floor: float) -> None:
        check(f"{label} >= {floor:g}", ratio(over, under), lambda v: v >= floor, "{:.2f}")

    # The targets of the issue that set them (identities at scale, the one-process ceiling):
    # one process and PostgreSQL at 0.8 of the bare loop, agent.workers=CPUs beating it.
    at_least(
        "warm agent(SQLite, one process) / bare aiohttp", "warm.agent.sqlite", "warm.aiohttp", 0.8
    )
    if f.get("warm.agent.workers") is not None:
        workers = f"warm agent(SQLite, {s.workers} processes) / bare aiohttp"
        at_least(workers, "warm.agent.workers", "warm.aiohttp", 1.0)
    if f.get("warm.agent.postgres") is not None:
        at_least(
            "warm agent(PostgreSQL) / bare aiohttp", "warm.agent.postgres", "warm.aiohttp", 0.8
        )
    best = "warm.agent.workers" if f.get("warm.agent.workers") is not None else "warm.agent.sqlite"
    at_least("warm agent(SQLite, best shape) / requests pool", best, "warm.requests", 5)
    at_least(
        "cold agent(one process) / bare aiohttp fresh connections",
        "cold.agent",
        "cold.aiohttp",
        0.9,
    )
    if f.get("cold.agent.workers") is not None:
        label = f"cold agent({s.workers} processes) / bare aiohttp fresh connections"
        at_least(label, "cold.agent.workers", "cold.aiohttp", 0.9)
    added = paired("paced.agent.p99", "paced.aiohttp.p99", lambda x, y: x - y)
    check("p99 added over the bare loop at half peak < 5 ms", added, lambda v: v < 5, "{:.1f} ms")
    ks = s.scale_profiles
    big = 1000 if 1000 in ks else ks[-1]  # the target is at 1,000 (--plots adds 10,000)
    at_least(
        f"{big:,} profiles / 1 profile, jobs/s after first handshakes",
        f"scale.{big}",
        "scale.1",
        0.8,
    )
    per = f.get(f"handshakes.{big}")
    check(f"handshakes per profile with {big:,} profiles <= 1.1", per, lambda v: v <= 1.1, "{:.2f}")
    rss = f.get(f"rss.{big}")
    check(
        f"peak RSS with {big:,} profiles < 150 MiB",
        None if rss is None else rss / MIB,
        lambda v: v < 150,
        "{:.1f} MiB",
    )
    k1, k2, k3 = (1, 100, 1000) if {1, 100, 1000} <= set(ks) else ks[:3]
    r1, r2, r3 = (f.get(f"rss.{k}") for k in (k1, k2, k3))
    if None not in (r1, r2, r3):
        assert r1 is not None and r2 is not None and r3 is not None
        low, high = (r2 - r1) / (k2 - k1), (r3 - r2) / (k3 - k2)
        check(
            f"sub-linear: KiB per profile {k2}→{k3} <= {k1}→{k2} ({low / 1024:.1f})",
            high / 1024,
            lambda v: v <= max(low / 1024, 0.0) * 1.05,
            "{:.1f}",
        )
    if s.only != SCENARIOS:  # leave out the targets of what was not run
        lines = [line for line in lines if not line.startswith("n/a")]
    return lines


# -- main --------------------------------------------------------------------------------------


async def main_async(s: Settings, work: Path, pg: bool) -> Figures:
    pki = BenchPKI.create(work / "pki")
    with BenchNginx(work / "nginx", pki) as nginx:
        bench = Bench(s, work, pki, nginx)
        if pg:
            why_not = await postgres_available(PG_URL)
            if why_not is None:
                bench.pg_url = PG_URL
            else:
                print(f"PostgreSQL queue skipped: {why_not}", file=sys.stderr)
        for i in range(s.runs):
            await bench.round(i)
        return bench.fig


def draw(s: Settings, figures: Figures, out: Path) -> None:
    from . import plots

    out.mkdir(parents=True, exist_ok=True)
    points = {k: v for k in s.scale_profiles if (v := figures.get(f"scale.{k}")) is not None}
    for path in (plots.latency_cdf(figures.samples, out), plots.scale(points, out)):
        print(f"plot written: {path}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one run, small counts (a smoke test)")
    p.add_argument("--runs", type=int, help="runs per figure (median); default 3, quick 1")
    p.add_argument("--concurrency", type=int, help="threads.max and the baselines' concurrency")
    p.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL queue")
    p.add_argument(
        "--workers", type=int, help="agent.workers for the multi-process warm run (default: CPUs)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument(
        "--only",
        metavar="LIST",
        help="comma-separated scenarios to run: warm, paced, cold, scale (default: all)",
    )
    p.add_argument("--profile", metavar="DIR", help="profile the daemon (warm) instead")
    p.add_argument(
        "--plots",
        metavar="DIR",
        help="also 10 and 10,000 profiles; write the latency CDF and jobs/s by profiles to DIR",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = QUICK if args.quick else Settings()
    if args.runs:
        s = Settings(**{**s.__dict__, "runs": args.runs})
    if args.concurrency:
        s = Settings(**{**s.__dict__, "concurrency": args.concurrency})
    if args.workers:
        s = Settings(**{**s.__dict__, "workers": args.workers})
    if args.only:
        only = frozenset(args.only.split(","))
        if not only <= SCENARIOS:
            print(f"--only: unknown scenario(s) {', '.join(sorted(only - SCENARIOS))}")
            return 2
        s = Settings(**{**s.__dict__, "only": only})
    if args.plots and not args.quick:
        s = Settings(
            **{**s.__dict__, "scale_profiles": (1, 10, 100, 1000, 10_000), "scale_wide": True}
        )
    work = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    try:
        if args.profile:
            from .profiling import profile_warm

            return asyncio.run(profile_warm(s, work, Path(args.profile)))
        started = time.monotonic()
        figures = asyncio.run(main_async(s, work, pg=not args.no_postgres))
        lines = [
            f"python -m bench.run{' --quick' if args.quick else ''}: medians of {s.runs} run(s), "
            f"concurrency {s.concurrency}, {time.monotonic() - started:.0f} s",
            *environment(),
            "",
            *table(s, figures),
            "",
            *targets(s, figures),
        ]
        print("\n".join(lines))
        if args.plots:
            draw(s, figures, Path(args.plots))
        return 0
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
