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
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from agent.config.config import AgentConfig, ProfileConfig
from agent.config.vault import VaultConfig
from agent.credentials.cyberark import cyberark_material, object_refs
from agent.credentials.sources import ProfileMaterial
from agent.engine.state import RuntimeState, assemble
from agent.errors import AgentError, ConfigError, VaultError
from agent.http.allowlist import allow_list
from agent.http.call import Caller
from agent.http.policy import address_allow_list
from agent.http.targets import Hooks, Targets, target_of
from agent.http.transport import AllowingResolver, StaticResolver, Transport
from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.tls.identities import Identity, Staged

if TYPE_CHECKING:
    from agent.credentials.cyberark import CCP, ObjectRef
    from agent.credentials.vault import Vault

log = logging.getLogger("agent")

_BACKGROUND: set[asyncio.Task[None]] = set()


class Engine:
    """Everything needed to run jobs, without the queue."""

    def __init__(self, config: AgentConfig) -> None:
        self.transport = Transport()
        self.targets = Targets()  # limits and breakers per host:port, across reloads
        self.caller = Caller(self.transport)
        self.vault: Vault | None = None  # opened on the first profile that needs it
        self.cyberark: CCP | None = None  # likewise
        self.on_cyberark_error: list[Callable[[], None]] = []
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

    async def run(
        self,
        job: Job,
        attempts_before: int = 0,
        hooks: Hooks | None = None,
        *,
        history: Sequence[dict[str, Any]] = (),
        requeue: bool = False,
    ) -> Result:
        """Run one job with its retries on the state in force as it starts; never raises for
        the job's own trouble. The job first passes its target's gate (limits, breaker), where
        it may wait: ``hooks`` tell the worker when it does. ``history`` and ``requeue``: see
        ``Caller.run``."""
        state = self._state
        target = target_of(job.endpoint)
        if target is None:  # not a URL: the caller says what is wrong with it
            return await self.caller.run(job, state.call, attempts_before, history, requeue)
        limits, policy = state.traffic.limits(job.protocol_profile), state.traffic.breaker
        ticket = await self.targets.enter(target, limits, policy, hooks)
        result: Result | None = None
        try:
            result = await self.caller.run(job, state.call, attempts_before, history, requeue)
        finally:
            self.targets.leave(ticket, result, policy, limits)
        return result

    def swap(self, config: AgentConfig, staged: Staged | None = None) -> RuntimeState:
        """Put ``config`` in force for the next job: a complete new state is assembled first,
        then replaces the old in one assignment. ``staged``: its profiles already loaded."""
        new = self._assemble(config, staged)
        old, self._state = self._state, new
        self.transport.use(new.call.network)  # running jobs keep theirs until they finish
        if self.vault is not None and config.vault != old.config.vault:
            vault, self.vault = self.vault, None  # the next load logs in to the new one
            _in_background(vault.close())
        store = (config.cyberark, config.resolve, config.outbound_allow)
        if self.cyberark is not None and store != self._cyberark_for:
            ccp, self.cyberark = self.cyberark, None  # the next load asks the new one
            _in_background(ccp.close())
        return new

    def _assemble(self, config: AgentConfig, staged: Staged | None) -> RuntimeState:
        async def store_load(profile: ProfileConfig) -> ProfileMaterial:
            if profile.store == "cyberark":
                return await cyberark_material(self._ccp(config), profile)
            return await self._vault_load(config.vault, profile)

        return assemble(config, staged=staged, vault_loader=store_load, on_rotate=self._rotated)

    def _ccp(self, config: AgentConfig) -> CCP:
        """The CyberArk CCP client, made on first use; ``agent.resolve`` and the allow-list
        apply to its connections as to a partner's."""
        if self.cyberark is None:
            from agent.credentials.cyberark import CCP

            self.cyberark = CCP(
                config.cyberark,
                resolver=AllowingResolver(
                    StaticResolver(config.resolve), address_allow_list(config)
                ),
                check_host=self._check_store_host(config),
                on_change=self._cyberark_changed,
                on_error=self._cyberark_error,
            )
            self._cyberark_for = (config.cyberark, config.resolve, config.outbound_allow)
        return self.cyberark

    @staticmethod
    def _check_store_host(config: AgentConfig) -> Callable[[str], None] | None:
        if not config.outbound_allow:
            return None
        allow = allow_list(tuple(config.outbound_allow))
        return lambda host: allow.check_name(host)

    def _cyberark_error(self) -> None:
        for callback in self.on_cyberark_error:
            callback()

    async def _cyberark_changed(self, ref: ObjectRef) -> None:
        """A CCP object changed: the profiles using it get new material for new connections."""
        state = self._state
        assert self.cyberark is not None
        for name, profile in state.config.profiles.items():
            if profile.store == "cyberark" and ref in object_refs(self.cyberark, profile):
                try:
                    material = await cyberark_material(self.cyberark, profile)
                except AgentError as exc:
                    log.error(
                        "profile %s: the changed CyberArk value cannot be used: %s", name, exc
                    )
                    continue
                state.identities.replace_profile(name, material)

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
        if self.cyberark is not None:
            await self.cyberark.close()
            self.cyberark = None
        if self.vault is not None:
            await self.vault.close()
            self.vault = None


def _in_background(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
