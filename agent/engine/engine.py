"""The engine: everything needed to run jobs, without the queue (the daemon, ``agent call``,
``agent validate``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.config.config import AgentConfig, ProfileConfig
from agent.credentials.sources import ProfileMaterial
from agent.errors import ConfigError, VaultError
from agent.http.call import Caller, address_allow_list
from agent.http.transport import Transport
from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.tls.identities import Credentials, Staged

if TYPE_CHECKING:
    from agent.credentials.vault import Vault

log = logging.getLogger("agent")


class Engine:
    """Everything needed to run jobs, without the queue: used by ``call`` and the daemon."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.transport = Transport(config.resolve)
        self.credentials = Credentials(config, vault_loader=self._vault_load)
        self.credentials.on_rotate.append(self.transport.retire)
        self.caller = Caller(config, self.credentials, self.transport)
        self.transport.set_allow(address_allow_list(config))
        self.vault: Vault | None = None  # opened on the first profile that needs it
        self.on_vault_error: list[Callable[[], None]] = []
        self.on_vault_renew: list[Callable[[str, ProfileMaterial], None]] = []

    def reload(self, config: AgentConfig, staged: Staged | None = None) -> None:
        """New config in force for the next job; connections under old material retire.
        ``staged``: the new config's profiles already loaded (``credentials.stage``)."""
        old_vault = self.config.vault
        self.config = config
        self.caller.config = config
        self.credentials.reload(config, staged)
        self.transport.set_resolve(config.resolve)
        self.transport.set_allow(address_allow_list(config))
        self.transport.retire_all()
        if self.vault is not None and config.vault != old_vault:
            vault, self.vault = self.vault, None  # the next load logs in to the new one
            task = asyncio.get_running_loop().create_task(vault.close())
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

    async def run(self, job: Job, attempts_before: int = 0) -> Result:
        """Run one job with its retries; never raises for the job's own trouble."""
        return await self.caller.run(job, attempts_before)

    @property
    def uses_vault(self) -> bool:
        return any(p.vault_path or p.vault_pki for p in self.config.profiles.values())

    async def _vault_load(self, profile: ProfileConfig) -> ProfileMaterial:
        if self.vault is None:
            from agent.credentials.vault import (
                Vault,  # hvac is only imported when a profile needs it
            )

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
