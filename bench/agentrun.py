"""Driving the real daemon: config.xml, enqueueing, one ``agent run`` subprocess, its figures.

Jobs go into the queue through the agent's own backend classes (``open_queue``), as ``agent
enqueue`` would put them, and the daemon runs as a separate process exactly as deployed
(``python -m agent -c config.xml run [--burst]``). Figures come from outside the daemon:

- start-up: spawn → the first job leaves ``ready`` (polled through the queue interface);
- jobs/s: jobs / (first claim → last result stored); the last result time is the newest
  ``updated`` in the SQLite file, or the daemon's exit for other backends;
- latency: ``updated - created`` of each job (enqueue time → result stored), from the SQLite file;
- memory: the daemon's peak resident set (``VmHWM`` in /proc/<pid>/status, sampled while it runs);
- CPU: the daemon's threads' CPU time from its first claim to its last sample
  (``/proc/<pid>/task``), the main thread (the event loop) apart from the others (the queue's,
  the log writer's, ...).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config.config import AgentConfig, load_config
from agent.jobs.model import Job
from agent.queues import Queue, open_queue

from .peer import HOST, PATH, BenchPKI

PROFILE_PREFIX = "mid.httpclient.protocol"
REPO = Path(__file__).resolve().parent.parent


def write_config(
    directory: Path,
    pki: BenchPKI,
    *,
    port: int,
    threads: int,
    profiles: int = 1,
    url: str | None = None,
    poll: float = 0.2,
    workers: int = 1,
    clients: list[tuple[Path, Path]] | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    """config.xml with profiles ``p0``..``p{n-1}``, presenting ``clients[i]`` (certificate and
    key files: each profile an identity of its own, as partners' are) or, without it, all the
    bench client certificate. ``extra``: more parameters."""
    directory.mkdir(parents=True, exist_ok=True)
    params = {
        "name": "bench",
        "url": url or f"sqlite:///{directory / 'queue.db'}",
        "threads.max": str(threads),
        "mid.poll.time": str(poll),
        "agent.resolve": f"{HOST}:127.0.0.1",
        "agent.lease.seconds": "300",
        "agent.workers": str(workers),
    }
    params |= extra or {}
    for i in range(profiles):
        crt, key = clients[i] if clients is not None else (pki.client_crt, pki.client_key)
        params[f"{PROFILE_PREFIX}.p{i}.path"] = str(crt)
        params[f"{PROFILE_PREFIX}.p{i}.key"] = str(key)
        params[f"{PROFILE_PREFIX}.p{i}.truststore"] = str(pki.ca)
        params[f"{PROFILE_PREFIX}.p{i}.port"] = str(port)
    lines = [f'  <parameter name="{k}" value="{v}"/>' for k, v in params.items()]
    path = directory / "config.xml"
    path.write_text("<parameters>\n" + "\n".join(lines) + "\n</parameters>\n")
    return path


def make_jobs(n: int, port: int, profiles: int, prefix: str) -> list[Job]:
    """``n`` GET jobs, spread round-robin over the profiles."""
    return [
        Job.from_dict(
            {
                "id": f"{prefix}-{i}",
                "topic": "RESTProbe",
                "endpoint": f"https://{HOST}:{port}{PATH}",
                "protocol_profile": f"p{i % profiles}",
                "timeout": 30,
            }
        )
        for i in range(n)
    ]


async def enqueue(config: AgentConfig, jobs: list[Job], batch: int = 5000) -> None:
    queue = open_queue(config)
    await queue.open()
    try:
        for i in range(0, len(jobs), batch):
            await queue.enqueue(jobs[i : i + batch])
    finally:
        await queue.close()


@dataclass
class DaemonRun:
    spawned: float  # time.time() at spawn
    first_claim: float | None  # time.time() when the first job left ready
    exited: float
    returncode: int
    peak_rss: int  # bytes
    stderr: Path
    cpu_main: float | None = None  # seconds of CPU the event loop's thread took after the claim
    cpu_other: float | None = None  # the other threads' (queue, log writer, executor)

    @property
    def startup(self) -> float | None:
        return None if self.first_claim is None else self.first_claim - self.spawned


def daemon_cmd(config: Path, *, burst: bool, wrapper: list[str] | None = None) -> list[str]:
    args = ["-c", str(config), "run", *(["--burst"] if burst else [])]
    if wrapper is not None:
        return [*wrapper, *args]
    return [sys.executable, "-m", "agent", *args]


_TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each of ``pid``'s threads, by thread id."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended
        fields = stat.rsplit(")", 1)[1].split()
        out[tid] = (int(fields[11]) + int(fields[12])) / _TICK
    return out


def _peak_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class Daemon:
    """One ``agent run`` subprocess, watched for its first claim and its memory."""

    def __init__(self, config_path: Path, *, burst: bool, wrapper: list[str] | None = None):
        self.config_path = config_path
        self.cmd = daemon_cmd(config_path, burst=burst, wrapper=wrapper)
        self.stderr = config_path.parent / "daemon.stderr"
        self.proc: asyncio.subprocess.Process | None = None
        self.spawned = 0.0
        self.first_claim: float | None = None
        self.peak_rss = 0
        self._cpu_at_claim: dict[str, float] | None = None
        self._cpu_seen: dict[str, float] = {}  # by thread, the last seen (ended threads stay)
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self, queue: Queue | None = None, first_id: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MID_CONFIG_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with self.stderr.open("wb") as err:
            self.spawned = time.time()
            self.proc = await asyncio.create_subprocess_exec(
                *self.cmd, stdout=err, stderr=err, stdin=asyncio.subprocess.DEVNULL, env=env
            )
        self._watchers.append(asyncio.create_task(self._watch_rss()))
        if queue is not None and first_id is not None:
            self._watchers.append(asyncio.create_task(self._watch_claim(queue, first_id)))

    async def _watch_rss(self) -> None:
        assert self.proc is not None
        while self.proc.returncode is None:
            self.peak_rss = max(self.peak_rss, _peak_rss(self.proc.pid))
            self._cpu_seen.update(thread_cpu(self.proc.pid))
            await asyncio.sleep(0.05)

    async def _watch_claim(self, queue: Queue, job_id: str) -> None:
        while True:
            status = await queue.status(job_id)
            if status is not None and status.state != "ready":
                self.first_claim = time.time()
                assert self.proc is not None
                self._cpu_at_claim = {**self._cpu_seen, **thread_cpu(self.proc.pid)}
                return
            await asyncio.sleep(0.002)

    async def wait(self, timeout: float) -> DaemonRun:
        assert self.proc is not None
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise RuntimeError(f"the daemon did not finish within {timeout:g} s") from None
        finally:
            for task in self._watchers:
                task.cancel()
            await asyncio.gather(*self._watchers, return_exceptions=True)
        if code != 0:
            tail = self.stderr.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the daemon exited with {code}:\n{tail}")
        cpu_main = cpu_other = None
        if self._cpu_at_claim is not None:
            at_claim, main = self._cpu_at_claim, str(self.proc.pid)
            spent = {t: s - at_claim.get(t, 0.0) for t, s in self._cpu_seen.items()}
            cpu_main = spent.pop(main, 0.0)
            cpu_other = sum(spent.values())
        return DaemonRun(
            self.spawned,
            self.first_claim,
            time.time(),
            code,
            self.peak_rss,
            self.stderr,
            cpu_main,
            cpu_other,
        )

    async def stop(self, timeout: float = 60) -> DaemonRun:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait(timeout)


async def run_burst(
    config_path: Path, first_id: str, timeout: float, wrapper: list[str] | None = None
) -> DaemonRun:
    """Run ``agent run --burst`` over what is queued; return its figures."""
    config = load_config(config_path)
    queue = open_queue(config)
    await queue.open()
    try:
        daemon = Daemon(config_path, burst=True, wrapper=wrapper)
        await daemon.start(queue, first_id)
        return await daemon.wait(timeout)
    finally:
        await queue.close()


def sqlite_rows(db: Path, prefix: str) -> list[tuple[str, float, float]]:
    """(state, created, updated) of the jobs whose id starts with ``prefix``."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows: list[Any] = con.execute(
            "SELECT state, created, updated FROM jobs WHERE id LIKE ?", (f"{prefix}-%",)
        ).fetchall()
    finally:
        con.close()
    return [(str(s), float(c), float(u)) for s, c, u in rows]


def sqlite_pending(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        n: int = con.execute(
            "SELECT count(*) FROM jobs WHERE state IN ('ready', 'processing')"
        ).fetchone()[0]
    finally:
        con.close()
    return n


def check_processed(rows: list[tuple[str, float, float]], expected: int, what: str) -> None:
    bad = [s for s, _, _ in rows if s != "processed"]
    if len(rows) != expected or bad:
        raise RuntimeError(
            f"{what}: {len(rows)} job(s) found, {len(bad)} not processed (states: {set(bad)});"
            " see daemon.stderr in the run directory"
        )
