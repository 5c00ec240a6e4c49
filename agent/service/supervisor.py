"""``agent.workers`` > 1: one supervisor process and N worker processes sharing the queue.

Each worker is an ordinary ``agent run`` (``AGENT_WORKER_INDEX`` set, ``agent.workers`` forced to
1). The supervisor forwards SIGTERM/SIGINT/SIGHUP to every worker, restarts a worker that dies
unexpectedly (with a capped backoff), and exits 0 once every worker stopped cleanly. Claims are
leases, so a worker that dies mid-job loses nothing: its jobs return to the queue.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from agent.service.metrics import MULTIPROCESS_ENV
from agent.service.notify import Notifier

log = logging.getLogger("agent.supervisor")

RESTART_BACKOFF_CAP = 30.0
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Supervisor:
    def __init__(self, config_path: Path, workers: int, *, burst: bool = False) -> None:
        self.config_path = config_path
        self.workers = workers
        self.burst = burst
        self.stopping = False
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self.notifier = Notifier()  # the supervisor, not its workers, speaks to systemd
        self._announced = False
        # Workers write their metrics here; worker 0's /metrics adds up every worker's.
        self.metrics_dir: Path | None = None

    def _command(self) -> list[str]:
        cmd = [sys.executable, "-m", "agent", "-c", str(self.config_path), "run"]
        return [*cmd, "--burst"] if self.burst else cmd

    def _env(self, index: int) -> dict[str, str]:
        env = dict(os.environ)
        env["MID_CONFIG_agent.workers"] = "1"
        env["AGENT_WORKER_INDEX"] = str(index)
        env.pop("NOTIFY_SOCKET", None)  # the supervisor speaks to the service manager
        if self.metrics_dir is not None:
            env[MULTIPROCESS_ENV] = str(self.metrics_dir)
        return env

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(*self._command(), env=self._env(index))
        self._procs[index] = proc
        log.info("worker %d started (pid %d)", index, proc.pid)
        if not self._announced and len(self._procs) == self.workers:
            self._announced = True
            self.notifier.ready(f"supervising {self.workers} worker processes")
        return proc

    async def _keep(self, index: int) -> int:
        """Run worker ``index``; restart it after an unexpected exit until we stop."""
        failures = 0
        while True:
            proc = await self._spawn(index)
            code = await proc.wait()
            self._forget_metrics(proc.pid)
            if self.stopping or (self.burst and code == 0):
                return code
            failures += 1
            delay = min(RESTART_BACKOFF_CAP, 0.5 * 2**failures)
            log.error("worker %d exited with %d; restarting in %.1f s", index, code, delay)
            await asyncio.sleep(delay)

    def _forget_metrics(self, pid: int) -> None:
        """A worker is gone: its gauges no longer count (its counters still do)."""
        if self.metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]

    def _forward(self, sig: signal.Signals) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
            self.notifier.stopping()
        elif sig == signal.SIGHUP:
            self.notifier.reloading()
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.send_signal(sig)
        if sig == signal.SIGHUP:  # each worker reloads on its own and logs the outcome
            self.notifier.ready(f"supervising {self.workers} worker processes")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in FORWARDED:
            loop.add_signal_handler(sig, self._forward, sig)
        log.info("supervising %d worker processes", self.workers)
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="agent-metrics-"))
        watchdog = asyncio.create_task(self.notifier.watchdog(), name="notify-watchdog")
        try:
            codes = await asyncio.gather(*(self._keep(i) for i in range(self.workers)))
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
            for sig in FORWARDED:
                loop.remove_signal_handler(sig)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        bad = [c for c in codes if c != 0]
        return 0 if not bad else 1
