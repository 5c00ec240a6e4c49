"""The engine: runs jobs on the runtime state in force (the daemon, ``agent call``,
``agent validate``), and swaps in a new state on reload.

The engine holds one reference to the state in force. ``run`` reads it once, when the job
starts, and hands that state to the caller: every attempt of the job, its identity, its route
and its limits come from it, whatever reload happens meanwhile. ``swap`` replaces the reference
in one assignment; connections opened under the old state retire once their requests finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.config.config import AgentConfig, ProfileConfig, VaultConfig
from agent.credentials.sources import ProfileMaterial
from agent.engine.state import RuntimeState, assemble
from agent.errors import ConfigError, VaultError
from agent.http.call import Caller
from agent.http.transport import Transport
from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.tls.identities import Identity, Staged

if TYPE_CHECKING:
    from agent.credentials.vault import Vault

log = logging.getLogger("agent")

_BACKGROUND: set[asyncio.Task[None]] = set()


class Engine:
    """Everything needed to run jobs, without the queue."""

    def __init__(self, config: AgentConfig) -> None:
        self.transport = Transport()
        self.caller = Caller(self.transport)
        self.vault: Vault | None = None  # opened on the first profile that needs it
        self.on_vault_error: list[Callable[[], None]] = []
        self.on_vault_renew: list[Callable[[str, ProfileMaterial], None]] = []
        self.on_renewal_failed: list[Callable[[str], None]] = []  # with the profile's name
        self._state = self._assemble(config, None)
        self.transport.use(self._state.call.network)

    @property
    def state(self) -> RuntimeState:
        """The state in force: what a job starting now runs on."""
        return self._state

    @property
    def config(self) -> AgentConfig:
        return self._state.config

    async def run(self, job: Job, attempts_before: int = 0) -> Result:
        """Run one job with its retries on the state in force as it starts; never raises for
        the job's own trouble."""
        return await self.caller.run(job, self._state.call, attempts_before)

    def swap(self, config: AgentConfig, staged: Staged | None = None) -> RuntimeState:
        """Put ``config`` in force for the next job: a complete new state is assembled first,
        then replaces the old in one assignment. ``staged``: its profiles already loaded."""
        new = self._assemble(config, staged)
        old, self._state = self._state, new
        self.transport.use(new.call.network)  # running jobs keep theirs until they finish
        if self.vault is not None and config.vault != old.config.vault:
            vault, self.vault = self.vault, None  # the next load logs in to the new one
            task = asyncio.get_running_loop().create_task(vault.close())
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)
        return new

    def _assemble(self, config: AgentConfig, staged: Staged | None) -> RuntimeState:
        async def vault_load(profile: ProfileConfig) -> ProfileMaterial:
            return await self._vault_load(config.vault, profile)

        return assemble(config, staged=staged, vault_loader=vault_load, on_rotate=self._rotated)

    def _rotated(self, identity: Identity) -> None:
        self.transport.forget(identity.contexts())

    @property
    def uses_vault(self) -> bool:
        return any(p.vault_path or p.vault_pki for p in self.config.profiles.values())

    async def _vault_load(self, settings: VaultConfig, profile: ProfileConfig) -> ProfileMaterial:
        if self.vault is None:
            from agent.credentials.vault import (
                Vault,  # hvac is only imported when a profile needs it
            )

            try:
                vault = Vault(
                    settings, on_renew=self._renewed, on_renew_failed=self._renewal_failed
                )
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
        state = self._state
        if name in state.config.profiles:
            state.identities.replace_profile(name, material)
            log.info("profile %s: renewed certificate from the vault in force", name)
        for callback in self.on_vault_renew:
            callback(name, material)

    def _renewal_failed(self, name: str) -> None:
        for callback in self.on_renewal_failed:
            callback(name)

    async def check_vault(self) -> None:
        """Raise VaultError unless the vault (when profiles use it) answers: for readiness."""
        if self.vault is not None:
            await self.vault.check()

    async def close(self) -> None:
        await self.transport.close()
        if self.vault is not None:
            await self.vault.close()
            self.vault = None
