"""Assembly: config → credentials → transport → caller → queue → worker, and reload."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .call import Caller
from .config import AgentConfig, ProfileConfig, load_config
from .credentials import Credentials
from .errors import AgentError, ConfigError, VaultError
from .journal import Journal
from .keystores.inspect import ProfileReport
from .keystores.sources import ProfileMaterial
from .queues import open_queue
from .queues.base import Queue
from .transport import Transport
from .validate import collect_reports
from .worker import Worker

if TYPE_CHECKING:
    from .keystores.vault import Vault

log = logging.getLogger("agent")

CERT_CHECK_INTERVAL = 24 * 3600.0  # seconds between certificate checks (also on each reload)


class Engine:
    """Everything needed to run jobs, without the queue: used by ``call`` and the daemon."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.transport = Transport(config.resolve)
        self.credentials = Credentials(config, vault_loader=self._vault_load)
        self.credentials.on_rotate.append(self.transport.retire)
        self.caller = Caller(config, self.credentials, self.transport)
        self.vault: Vault | None = None  # opened on the first profile that needs it
        self.on_vault_error: list[Callable[[], None]] = []
        self.on_vault_renew: list[Callable[[str, ProfileMaterial], None]] = []

    def reload(self, config: AgentConfig) -> None:
        """New config in force for the next job; connections under old material retire."""
        old_vault = self.config.vault
        self.config = config
        self.caller.config = config
        self.credentials.reload(config)
        self.transport.set_resolve(config.resolve)
        self.transport.retire_all()
        if self.vault is not None and config.vault != old_vault:
            vault, self.vault = self.vault, None  # the next load logs in to the new one
            task = asyncio.get_running_loop().create_task(vault.close())
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

    @property
    def uses_vault(self) -> bool:
        return any(p.vault_path or p.vault_pki for p in self.config.profiles.values())

    async def _vault_load(self, profile: ProfileConfig) -> ProfileMaterial:
        if self.vault is None:
            from .keystores.vault import Vault  # hvac is only imported when a profile needs it

            try:
                vault = Vault(self.config.vault, on_renew=self._renewed)
            except ConfigError as exc:
                raise VaultError(f"profile {profile.name}: {exc.message}") from None
            await vault.start()
            self.vault = vault
        try:
            return await self.vault.load(profile)
        except VaultError:
            for callback in self.on_vault_error:
                callback()
            raise

    def _renewed(self, name: str, material: ProfileMaterial) -> None:
        """A vault PKI certificate was renewed: new connections present the new one."""
        if name in self.config.profiles:
            self.credentials.replace_profile(name, material)
            log.info("profile %s: renewed certificate from the vault in force", name)
        for callback in self.on_vault_renew:
            callback(name, material)

    async def check_vault(self) -> None:
        """Raise VaultError unless the vault (when profiles use it) answers: for readiness."""
        if self.vault is not None:
            await self.vault.check()

    async def close(self) -> None:
        await self.transport.close()
        if self.vault is not None:
            await self.vault.close()
            self.vault = None


_BACKGROUND: set[asyncio.Task[None]] = set()


class Daemon:
    """``agent run``: the worker plus signals (TERM/INT drain then abort, HUP reloads)."""

    def __init__(
        self,
        config: AgentConfig,
        config_path: Path | None,
        *,
        burst: bool = False,
        loader: Callable[[Path], AgentConfig] = load_config,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.burst = burst
        self.loader = loader
        self.engine = Engine(config)
        self.queue: Queue | None = None
        self.worker: Worker | None = None
        self.on_report: list[Callable[[ProfileReport], None]] = []
        self._check_now = asyncio.Event()

    async def run(self) -> int:
        self.queue = open_queue(self.config)
        await self.queue.open()
        journal = Journal(self.config.base_dir / self.config.journal_path)
        self.worker = Worker(
            self.config, self.queue, self.engine.caller, burst=self.burst, journal=journal
        )
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        log.info(
            "agent %s started: queue %s, %d thread(s), %d profile(s)",
            self.config.agent_name,
            _redact_url(self.config.url),
            self.config.threads_max,
            len(self.config.profiles),
        )
        watch = asyncio.create_task(self._watch_certificates(), name="certificate-watch")
        try:
            stats = await self.worker.serve()
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            self._remove_signals(loop)
            await self.engine.close()
            await self.queue.close()
            journal.close()
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
            self._check_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), CERT_CHECK_INTERVAL)

    async def check_certificates(self) -> list[ProfileReport]:
        config = self.config
        reports = await collect_reports(config, self.engine.credentials, sorted(config.profiles))
        for report in reports:
            for problem in report.problems:
                log.error("profile %s: %s", report.name, problem)
            for warning in report.warnings:
                log.warning("profile %s: %s", report.name, warning)
            for callback in self.on_report:
                callback(report)
        return reports

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.worker is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.worker.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    def reload(self) -> None:
        """SIGHUP: re-read config.xml; a broken one is reported and the old one stays."""
        if self.config_path is None:
            return
        try:
            new = self.loader(self.config_path)
        except AgentError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        if new.url != self.config.url:
            log.warning(
                "reload: a new url needs a restart; keeping %s", _redact_url(self.config.url)
            )
            new = _with_url(new, self.config.url)
        self.config = new
        self.engine.reload(new)
        if self.worker is not None:
            self.worker.config = new
            self.worker.wake()
        logging.getLogger().setLevel(level_of(new.log_level))
        self._check_now.set()
        log.info("configuration reloaded: %d profile(s)", len(new.profiles))


def _with_url(config: AgentConfig, url: str) -> AgentConfig:
    from dataclasses import replace

    return replace(config, url=url)


def _redact_url(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def level_of(name: str) -> int:
    return {"debug": 10, "info": 20, "warn": 30, "error": 40}.get(name, 20)
