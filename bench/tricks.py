"""``python -m bench.tricks [--rounds N] [--quick]``: each of the daemon's speed tricks on and off.

Each trick is measured on and off in the same run, round by round (on, off, on, off...), and
the table gives the medians of the rounds and the gain (above 1: the trick helps; for a rate
on / off, for a duration off / on):

- write lock: two processes drain one embedded queue file with ``exchange`` (as
  ``agent.workers=2`` does), taking the write lock with the queue's fine-grained retries
  (``SqliteQueue._take_write_lock``) or with SQLite's own busy handler (``busy_timeout``);
- durability: enqueue one job, claim it, store its result, as when jobs arrive one at a time;
  claims committed with ``synchronous=NORMAL`` (``SqliteQueue._set_durability``) or every
  transaction with ``FULL``;
- switch interval: claim-and-store round trips of the queue's thread while the event loop is
  busy with other coroutines (about half the time, and all the time), at 1 ms and at Python's
  5 ms (the daemon no longer sets 1 ms: this showed no gain beyond the noise);
- wake-up: an idle daemon's queue waiting for work while another connection enqueues one job
  after a quiet spell longer than the queue's busy window, the wait woken by the kernel's report
  of the write to the WAL (``sqlite_wake.CommitWatch``) or by polling ``data_version`` (every
  1 ms, backing off to 50 ms when quiet); figures: enqueue committed → wait returned, and the
  version reads per second in the idle part of the spell (once both stopped looking often);
- gc.freeze: a job loop (a task per job; jobs parsed, results built and encoded, a window of
  them kept alive, a reference cycle per job as responses hold) after the daemon's imports and
  a config of 100 profiles, with that start-up heap frozen or not; the figures are the longest
  full collection and their total.

The machine may be shared: figures move from run to run; compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.queues.base import Claim
from agent.queues.sqlite import BUSY_TIMEOUT_MS, SqliteQueue
from agent.queues.sqlite_wake import BUSY_WINDOW, HINT_WINDOW

COUNTS = {"full GCs"}  # figures that are neither better nor worse when higher
LEASE = 60.0
BATCH = 25  # jobs per claim, the agent's default threads.max
TRIED_SWITCH_INTERVAL = 0.001  # seconds; the daemon once set it, and keeps Python's 5 ms now
STARTUP: list[Any] = []  # what start-up allocated, alive for the whole run as in the daemon


class BusyTimeoutQueue(SqliteQueue):
    """The embedded queue with SQLite's own busy handler in place of the fine retries."""

    def _open(self) -> None:
        super()._open()
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    @staticmethod
    def _take_write_lock(db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")


class AlwaysFullQueue(SqliteQueue):
    """The embedded queue committing every transaction with ``synchronous=FULL``."""

    def _set_durability(self, db: sqlite3.Connection, durable: bool) -> None:
        pass  # _open leaves it at FULL


def job(n: int) -> Job:
    return Job.from_dict({"id": f"j{n}", "topic": "RESTProbe", "endpoint": "https://a.example/"})


def result(claim: Claim) -> tuple[Claim, Result]:
    return claim, Result(id=claim.job.id, state="processed", status=200, body="ok")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ------------------------------------------------------------------------------- write lock


async def _drain(queue: SqliteQueue, agent: str) -> list[float]:
    """Exchange until the queue is empty; the round trips' durations."""
    trips: list[float] = []
    results: list[tuple[Claim, Result]] = []
    while True:
        start = time.perf_counter()
        got = await queue.exchange(results, agent, BATCH, LEASE)
        trips.append(time.perf_counter() - start)
        if not got.claims:
            return trips
        results = [result(c) for c in got.claims]


def _drain_process(path: str, plain: bool, ready: Any, go: Any, out: Any) -> None:
    async def run() -> tuple[float, float, list[float]]:
        queue = (BusyTimeoutQueue if plain else SqliteQueue)(Path(path))
        await queue.open()
        ready.release()
        go.wait()
        start = time.monotonic()
        trips = await _drain(queue, f"agent-{multiprocessing.current_process().pid}")
        end = time.monotonic()
        await queue.close()
        return start, end, trips

    out.put(asyncio.run(run()))


def write_lock_round(work: Path, plain: bool, jobs: int) -> dict[str, float]:
    path = work / f"lock-{time.monotonic_ns()}.db"
    asyncio.run(_fill(path, jobs))
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    args = (str(path), plain, ready, go, out)
    procs = [ctx.Process(target=_drain_process, args=args) for _ in (0, 1)]
    for p in procs:
        p.start()
    for _ in procs:  # both have imported the agent and opened the file: the clock starts now
        ready.acquire(timeout=60)
    go.set()
    done = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(30)
    span = max(e for _, e, _ in done) - min(s for s, _, _ in done)
    trips = [t for _, _, ts in done for t in ts]
    return {"jobs/s": jobs / span, "trip p99 ms": pct(trips, 0.99) * 1000}


async def _fill(path: Path, jobs: int) -> None:
    queue = SqliteQueue(path)
    await queue.open()
    for start in range(0, jobs, 1000):
        await queue.enqueue([job(n) for n in range(start, min(jobs, start + 1000))])
    await queue.close()


# ------------------------------------------------------------------------------- durability


async def _one_at_a_time(queue: SqliteQueue, jobs: int) -> dict[str, float]:
    claims: list[float] = []
    start = time.perf_counter()
    for n in range(jobs):
        await queue.enqueue([job(n)])
        t = time.perf_counter()
        got = await queue.claim("agent", 1, LEASE)
        claims.append(time.perf_counter() - t)
        await queue.complete([result(c) for c in got])
    per_job = (time.perf_counter() - start) / jobs
    return {"claim p50 ms": pct(claims, 0.5) * 1000, "job cycle ms": per_job * 1000}


def durability_round(work: Path, full: bool, jobs: int) -> dict[str, float]:
    async def run() -> dict[str, float]:
        queue = (AlwaysFullQueue if full else SqliteQueue)(work / f"dur-{time.monotonic_ns()}.db")
        await queue.open()
        try:
            return await _one_at_a_time(queue, jobs)
        finally:
            await queue.close()

    return asyncio.run(run())


# -------------------------------------------------------------------------- switch interval


async def _busy_loop(stop: asyncio.Event, rest: float) -> None:
    """Another coroutine's work: 0.2 ms of Python at a time (a job's share, roughly), then
    ``rest`` seconds of waiting (0: the loop never idles)."""
    while not stop.is_set():
        end = time.perf_counter() + 0.0002
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(rest)


async def _trips_while_busy(queue: SqliteQueue, trips: int, rest: float) -> list[float]:
    stop = asyncio.Event()
    others = [asyncio.create_task(_busy_loop(stop, rest)) for _ in range(4)]
    times: list[float] = []
    results: list[tuple[Claim, Result]] = []
    try:
        for _ in range(trips):
            start = time.perf_counter()
            got = await queue.exchange(results, "agent", BATCH, LEASE)
            times.append(time.perf_counter() - start)
            results = [result(c) for c in got.claims]
    finally:
        stop.set()
        await asyncio.gather(*others)
    return times


def switch_round(work: Path, interval: float, trips: int, rest: float) -> dict[str, float]:
    path = work / f"switch-{time.monotonic_ns()}.db"
    asyncio.run(_fill(path, trips * BATCH))

    async def run() -> list[float]:
        queue = SqliteQueue(path)
        await queue.open()
        try:
            return await _trips_while_busy(queue, trips, rest)
        finally:
            await queue.close()

    before = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    try:
        times = asyncio.run(run())
    finally:
        sys.setswitchinterval(before)
    return {"trip p50 ms": pct(times, 0.5) * 1000, "trip p99 ms": pct(times, 0.99) * 1000}


# -------------------------------------------------------------------------------- gc.freeze


def _daemon_heap() -> list[Any]:
    """What a daemon holds after start-up: its modules, and a config with 100 profiles."""
    import agent.commands.cli  # noqa: F401  (the daemon's imports: aiohttp, lxml, cryptography)
    import agent.service.runtime  # noqa: F401
    from agent.config.config import AgentConfig

    params = "".join(
        f'<parameter name="mid.httpclient.protocol.p{n}.path" value="/k/p{n}.p12"/>'
        f'<parameter name="mid.httpclient.protocol.p{n}.password" value="pw{n}"/>'
        for n in range(100)
    )
    return [AgentConfig.from_xml(f"<parameters>{params}</parameters>".encode())]


async def _one_job(n: int, window: deque[Any]) -> None:
    j = Job.from_dict({"id": f"j{n}", "topic": "RESTProbe", "endpoint": "https://a.example/x"})
    await asyncio.sleep(0)
    r = Result(id=j.id, state="processed", status=200, headers={"a": "b"}, body="ok")
    d = r.to_dict()
    d["self"] = d  # a reference cycle, as a response and its connection hold: only GC frees it
    window.append((j, r, orjson.dumps(r.to_dict()), d))


async def _job_loop(jobs: int) -> None:
    """A task per job, 25 at a time; the last 2,000 jobs' objects kept (in flight, logged)."""
    window: deque[Any] = deque(maxlen=2000)
    running: set[asyncio.Task[None]] = set()
    for n in range(jobs):
        task = asyncio.create_task(_one_job(n, window))
        running.add(task)
        task.add_done_callback(running.discard)
        if len(running) >= BATCH:
            await asyncio.sleep(0)
    await asyncio.gather(*running)


def gc_round(freeze: bool, jobs: int) -> dict[str, float]:
    pauses: list[float] = []
    began = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - began[0])

    gc.collect()
    if freeze:
        gc.freeze()
    gc.callbacks.append(watch)
    start = time.perf_counter()
    try:
        asyncio.run(_job_loop(jobs))
    finally:
        elapsed = time.perf_counter() - start
        gc.callbacks.remove(watch)
        gc.unfreeze()
    return {
        "full GC max ms": max(pauses, default=0.0) * 1000,
        "full GC total ms": sum(pauses) * 1000,
        "full GCs": float(len(pauses)),
        "loop jobs/s": jobs / elapsed,
    }


# ---------------------------------------------------------------------------------- wake-up


async def _wakes(queue: SqliteQueue, other: SqliteQueue, n: int) -> tuple[list[float], float]:
    """``n`` quiet spells, each ended by an enqueue: how long each took to be noticed, and
    the version reads per second in the idle part of the spells (after the first looks)."""
    noticed: list[float] = []
    idle_reads = 0
    for i in range(n):
        waiting = asyncio.create_task(queue.wait_for_work(60))
        await asyncio.sleep(SETTLE)  # nothing is committed meanwhile
        before = queue.version_reads
        await asyncio.sleep(IDLE)
        idle_reads += queue.version_reads - before
        await other.enqueue([job(i)])
        committed = time.perf_counter()
        await waiting
        noticed.append(time.perf_counter() - committed)
        await queue.claim("agent", 1, LEASE)
    return noticed, idle_reads / (n * IDLE)


# after work, both look every 1 ms for BUSY_WINDOW; the watch looks a while after the queue's
# own last write (HINT_WINDOW), then parks
SETTLE = BUSY_WINDOW + HINT_WINDOW + 0.1
IDLE = 1.0


def wake_round(work: Path, pushed: bool, n: int) -> dict[str, float]:
    async def run() -> dict[str, float]:
        path = work / f"wake-{time.monotonic_ns()}.db"
        queue, other = SqliteQueue(path), SqliteQueue(path)
        await queue.open()
        await other.open()
        if not pushed:
            queue._watch_opened = True  # no watch: as where inotify is missing
        try:
            noticed, idle = await _wakes(queue, other, n)
        finally:
            await queue.close()
            await other.close()
        return {
            "notice p50 ms": pct(noticed, 0.5) * 1000,
            "notice max ms": max(noticed) * 1000,
            "reads/s idle": idle,
        }

    return asyncio.run(run())


# ------------------------------------------------------------------------------------ table


@dataclass
class Trick:
    name: str
    on: str
    off: str
    measure: Callable[[bool], dict[str, float]]  # True: the trick on


def _interval(on: bool) -> float:
    return TRIED_SWITCH_INTERVAL if on else 0.005


def tricks(work: Path, quick: bool) -> list[Trick]:
    scale = 5 if quick else 1
    STARTUP[:] = _daemon_heap()
    return [
        Trick(
            "write lock",
            "fine retries",
            "busy_timeout",
            lambda on: write_lock_round(work, not on, 20_000 // scale),
        ),
        Trick(
            "durability",
            "claims NORMAL",
            "all FULL",
            lambda on: durability_round(work, not on, 400 // scale),
        ),
        Trick(
            "switch, loop ~half busy",
            f"{TRIED_SWITCH_INTERVAL * 1000:g} ms",
            "5 ms",
            lambda on: switch_round(work, _interval(on), 400 // scale, 0.001),
        ),
        Trick(
            "switch, loop saturated",
            f"{TRIED_SWITCH_INTERVAL * 1000:g} ms",
            "5 ms",
            lambda on: switch_round(work, _interval(on), 200 // scale, 0.0),
        ),
        Trick(
            "wake-up after quiet",
            "inotify",
            "polled",
            lambda on: wake_round(work, on, 5 // scale),
        ),
        Trick(
            "gc.freeze",
            "frozen",
            "not frozen",
            lambda on: gc_round(on, 100_000 // scale),
        ),
    ]


def run_trick(trick: Trick, rounds: int) -> list[str]:
    on: list[dict[str, float]] = []
    off: list[dict[str, float]] = []
    for n in range(rounds):
        order = (True, False) if n % 2 == 0 else (False, True)
        for state in order:
            (on if state else off).append(trick.measure(state))
    lines = []
    for key in on[0]:
        a = statistics.median(r[key] for r in on)
        b = statistics.median(r[key] for r in off)
        better, worse = (a, b) if key.endswith("/s") else (b, a)
        gain = "-" if key in COUNTS or not worse else f"{better / worse:.2f}"
        each = ", ".join(f"{r[key]:.2f}/{s[key]:.2f}" for r, s in zip(on, off, strict=True))
        lines.append(
            f"{trick.name:<24}{key:<16}{trick.on:>14} {a:>10.2f}  {trick.off:>13} {b:>10.2f}"
            f"  {gain:>6}   rounds on/off: {each}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tricks", description=__doc__)
    p.add_argument("--rounds", type=int, default=3, help="rounds per trick (medians)")
    p.add_argument("--quick", action="store_true", help="1 round, small counts")
    p.add_argument(
        "--only", help="the tricks whose name starts so: write, durability, switch, wake, gc"
    )
    args = p.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    print(f"{'trick':<24}{'figure':<16}{'on':>14} {'':>10}  {'off':>13} {'':>10}  gain")
    # the working directory's disk: /tmp may be a tmpfs, where an fsync costs nothing
    with tempfile.TemporaryDirectory(prefix="agent-tricks-", dir=Path.cwd()) as tmp:
        for trick in tricks(Path(tmp), args.quick):
            if args.only and not trick.name.startswith(args.only):
                continue
            for line in run_trick(trick, rounds):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
