"""Assembly: config → credentials → transport → caller → queue → worker, and reload."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config.config import AgentConfig
from agent.config.secure import load_secure_config
from agent.credentials.inspect import ProfileReport
from agent.engine.engine import Engine
from agent.errors import AgentError, ConfigError, QueueError
from agent.jobs.results import Result
from agent.queues import open_queue
from agent.queues.base import Claim, Queue, redact_url
from agent.queues.journal import Journal
from agent.service.metrics import Metrics, default_metrics
from agent.service.notify import Notifier
from agent.service.readiness import Readiness, serves_health
from agent.service.status import StatusBoard, agent_version, status_of_queue
from agent.tls.identities import Staged, stage
from agent.tls.reports import collect_reports
from agent.worker.worker import Worker

if TYPE_CHECKING:
    from agent.service.health import HealthServer

log = logging.getLogger("agent")

CERT_CHECK_INTERVAL = 24 * 3600.0  # seconds between certificate checks (also on each reload)


class Daemon:
    """``agent run``: the worker plus signals (TERM/INT drain then abort, HUP reloads)."""

    def __init__(
        self,
        config: AgentConfig,
        config_path: Path | None,
        *,
        burst: bool = False,
        loader: Callable[[Path], AgentConfig] = load_secure_config,
        metrics: Metrics | None = None,
    ) -> None:
        self.config_path = config_path
        self.burst = burst
        self.loader = loader
        self.engine = Engine(config)
        self.queue: Queue | None = None
        self.worker: Worker | None = None
        self.on_report: list[Callable[[ProfileReport], None]] = []
        self._check_now = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[bool]] = set()
        self._wire_operations(metrics)

    @property
    def config(self) -> AgentConfig:
        """The configuration in force (the engine's state holds it)."""
        return self.engine.config

    async def run(self) -> int:
        self.queue = open_queue(self.config)
        await self.queue.open()
        journal = Journal(self.config.base_dir / self.config.journal_path)
        self.worker = Worker(
            self.queue,
            self.engine,
            burst=self.burst,
            journal=journal,
            on_result=self._job_done,
            on_claim=self._claimed,
        )
        self.worker.leases.on_lost = self.metrics.lease_losses.inc
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        log.info(
            "agent %s started: queue %s, %d thread(s), %d profile(s)",
            self.config.agent_name,
            redact_url(self.config.url),
            self.config.threads_max,
            len(self.config.profiles),
        )
        watch = asyncio.create_task(self._watch_certificates(), name="certificate-watch")
        try:
            await self._start_operations()
            stats = await self.worker.serve()
        finally:
            for task in (watch, *self._reloads):
                task.cancel()
            await asyncio.gather(watch, *self._reloads, return_exceptions=True)
            await self._stop_operations()
            await self.engine.close()
            await self.queue.close()
            journal.close()
            # last: a signal arriving while closing must not kill the process half-way
            self._remove_signals(loop)
        log.info(
            "agent stopped: %d processed, %d error(s), %d returned to the queue",
            stats.processed,
            stats.errors,
            stats.released,
        )
        return 0

    async def _watch_certificates(self) -> None:
        """At start, after each reload and daily: log what ``agent validate`` would report."""
        while True:
            await self.check_certificates()
            self.readiness.certificates_checked = True
            self._check_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), CERT_CHECK_INTERVAL)

    async def check_certificates(self) -> list[ProfileReport]:
        state = self.engine.state
        names = sorted(state.config.profiles)
        reports = await collect_reports(state.config, state.identities, names)
        for report in reports:
            for problem in report.problems:
                log.error("profile %s: %s", report.name, problem)
            for warning in report.warnings:
                log.warning("profile %s: %s", report.name, warning)
            for callback in self.on_report:
                callback(report)
        return reports

    # ------------------------------------------------------------ operations

    def _wire_operations(self, metrics: Metrics | None) -> None:
        """Metrics, readiness, health server and service-manager notifications."""
        self.metrics = metrics or default_metrics()
        self.notifier = Notifier()
        self.readiness = Readiness(_stale_after(self.config), busy=self._busy)
        self.readiness.checks["vault"] = self._vault_ready
        self.readiness.checks["cyberark"] = self._cyberark_ready
        self.readiness.checks["targets"] = self._targets_ready
        self.health: HealthServer | None = None
        self._operations: list[asyncio.Task[None]] = []
        self.on_report.append(self._observe_report)
        self.engine.transport.on_connection.append(self.metrics.connection)
        self.engine.transport.on_revocation_unknown.append(self.metrics.revocation_unknown.inc)
        self.engine.on_vault_error.append(self.metrics.vault_error)
        self.engine.on_renewal_failed.append(self.metrics.renewal_failed)
        self.engine.on_cyberark_error.append(self.metrics.cyberark_errors.inc)
        self.engine.targets.on_open.append(self.metrics.breaker_opened)
        self.board = StatusBoard()
        self.metrics.started(agent_version(), self.config.cert_warn_days)

    async def _start_operations(self) -> None:
        listen = self.config.health_listen
        if listen is not None and serves_health(os.environ.get("AGENT_WORKER_INDEX")):
            from agent.service.health import HealthServer  # aiohttp's web server: only here

            self.health = HealthServer(
                listen, self.readiness, self.metrics, self._refresh, status=self.status
            )
            await self.health.start()
        self._operations = [
            asyncio.create_task(self._announce_ready(), name="notify-ready"),
            asyncio.create_task(self.notifier.watchdog(), name="notify-watchdog"),
        ]

    async def _stop_operations(self) -> None:
        for task in self._operations:
            task.cancel()
        await asyncio.gather(*self._operations, return_exceptions=True)
        if self.health is not None:
            await self.health.stop()
            self.health = None

    async def _announce_ready(self) -> None:
        assert self.worker is not None
        await self.worker.ready.wait()
        self.notifier.ready(self._status())

    def _status(self) -> str:
        return f"polling {redact_url(self.config.url)} with {self.config.threads_max} thread(s)"

    def _busy(self) -> bool:
        return self.worker is not None and self.worker.in_flight >= self.config.threads_max

    async def _vault_ready(self) -> str | None:
        if self.engine.uses_vault:
            await self.engine.check_vault()  # VaultError: its message is the reason
        return None

    async def _cyberark_ready(self) -> str | None:
        """CCP failing while the last good values are served: said here, jobs still run."""
        ccp = self.engine.cyberark
        problems = ccp.problems() if ccp is not None else []
        return "; ".join(problems) or None

    async def _targets_ready(self) -> str | None:
        """Targets whose breaker is open: their jobs wait, the others run."""
        return "; ".join(self.engine.targets.reasons()) or None

    async def _refresh(self) -> None:
        self.metrics.set_targets(self.engine.targets.snapshot())
        if self.queue is not None:
            self.metrics.set_queue(await self.queue.summary())

    async def status(self) -> dict[str, Any]:
        """``/status.json``: the agent, its queue, recent errors and every profile."""
        queue: dict[str, Any] = {"available": False, "reason": "the queue is not open yet"}
        if self.queue is not None:
            try:
                summary = await asyncio.wait_for(self.queue.summary(), 5.0)
            except (QueueError, TimeoutError) as exc:
                queue["reason"] = f"the queue does not answer: {exc or 'no answer within 5 s'}"
            else:
                queue = status_of_queue(summary)
        running = self.worker.in_flight if self.worker is not None else 0
        reasons = await self.readiness.reasons()
        return self.board.snapshot(self.config, queue=queue, reasons=reasons, running=running)

    def _job_done(self, claim: Claim, result: Result, seconds: float) -> None:
        self.metrics.job_done(claim.job.topic, result, seconds)
        self.board.job_done(claim.job.topic, result)

    def _claimed(self, seconds: float, error: QueueError | None) -> None:
        self.metrics.claimed(seconds, error is not None)
        self.readiness.claimed(error)

    def _observe_report(self, report: ProfileReport) -> None:
        self.metrics.certificate(report.name, report.not_after)
        self.readiness.certificate(report)
        self.board.report(report)

    def _stop_signal(self) -> None:
        assert self.worker is not None
        self.notifier.stopping()
        self.worker.request_stop()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.worker is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    def reload(self) -> None:
        """SIGHUP: start a reload (the handler only starts it; reloads run one at a time)."""
        if self.config_path is None:
            return
        task = asyncio.get_running_loop().create_task(self.reload_now(), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload_now(self) -> bool:
        """Re-read config.xml and load every file-based profile beside the running ones; put
        the new configuration in force only if all of it loaded. Returns whether it did."""
        assert self.config_path is not None
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                checked = await self._check_reload(self.config_path)
                if checked is not None:
                    self._apply(*checked)
                return checked is not None
            finally:
                self.notifier.ready(self._status())

    async def _check_reload(self, config_path: Path) -> tuple[AgentConfig, Staged] | None:
        """The new configuration and its loaded profiles, or None (logged) to keep the old."""
        try:
            new = await asyncio.to_thread(self.loader, config_path)  # checks the allow list too
        except AgentError as exc:
            log.error("%s: %s", REFUSED, exc)
            return None
        staged = await stage(new)
        vaulted = tuple(n for n in staged.store_profiles if new.profiles[n].store == "vault")
        problems = [*staged.problems.values(), *_vault_problems(new, vaulted)]
        if problems:
            log.error("%s: %s", REFUSED, "; ".join(problems))
            return None
        if staged.store_profiles:
            log.info(
                "reload: profile(s) %s keep their material in the vault or CyberArk: checked in "
                "config.xml only; the store is asked on their next job",
                ", ".join(staged.store_profiles),
            )
        if new.url != self.config.url:
            log.warning(
                "reload: a new url needs a restart; keeping %s", redact_url(self.config.url)
            )
            new = _with_url(new, self.config.url)
        return new, staged

    def _apply(self, new: AgentConfig, staged: Staged) -> None:
        self.engine.swap(new, staged)
        if self.worker is not None:
            self.worker.wake()
        logging.getLogger().setLevel(level_of(new.log_level))
        self.readiness.stale_after = _stale_after(new)
        self.readiness.keep_profiles(set(new.profiles))
        self.board.keep_profiles(set(new.profiles))
        self.metrics.cert_warn_days.set(new.cert_warn_days)
        for name in set(self.metrics.cert_days_profiles()) - set(new.profiles):
            self.metrics.forget_profile(name)
        self._check_now.set()
        log.info("configuration reloaded: %d profile(s)", len(new.profiles))


REFUSED = "reload refused, keeping the running configuration"


def _vault_problems(config: AgentConfig, names: tuple[str, ...]) -> list[str]:
    """What config.xml alone says is wrong with reaching the vault, for profiles that use it."""
    if not names:
        return []
    from agent.credentials.vault import Vault  # hvac is only imported when a profile needs it

    try:
        Vault(config.vault)  # checks the settings; connects only on start()
    except ConfigError as exc:
        return [f"profile {', '.join(names)}: {exc.message}"]
    return []


def _stale_after(config: AgentConfig) -> float:
    """Readiness: how long without a successful claim (while idle) means the queue is gone."""
    return max(3 * config.poll_time, 30.0)


def _with_url(config: AgentConfig, url: str) -> AgentConfig:
    from dataclasses import replace

    return replace(config, url=url)


def level_of(name: str) -> int:
    return {"debug": 10, "info": 20, "warn": 30, "error": 40}.get(name, 20)
