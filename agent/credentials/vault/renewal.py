"""The renewal task: sleeps until the token or a PKI certificate is due, then renews it.

A renewed certificate replaces the held one and goes to ``on_renew(profile, material)``; a failed
renewal keeps the current certificate and tries again, sooner as its expiry nears. KV records are
read again every ``kv_refresh_seconds``; a changed record goes to ``on_renew`` the same way, and a
failed read keeps the record read before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes

from agent.config.config import ProfileConfig
from agent.credentials.sources import ProfileMaterial
from agent.credentials.vault.kv import read_kv
from agent.credentials.vault.login import Session
from agent.credentials.vault.pki import issue, renew_time
from agent.credentials.vault.timing import RETRY_MAX, due, expiry, not_after, retry_delay
from agent.errors import KeystoreError, VaultError

log = logging.getLogger("agent.vault")

IDLE_WAKE = 60.0  # the renewal task looks at the clock at least this often

RenewCallback = Callable[[str, ProfileMaterial], object]


@dataclass
class Held:
    """The material last loaded for a profile; ``renew_at`` is set for PKI certificates."""

    profile: ProfileConfig
    material: ProfileMaterial
    renew_at: float | None = None
    failures: int = 0  # failed renewals in a row (the back-off grows with them)


class Renewals:
    """Keeps the session's token and the held PKI certificates fresh."""

    def __init__(
        self,
        session: Session,
        held: dict[str, Held],
        on_renew: RenewCallback | None,
        on_failure: Callable[[str], object] | None = None,
    ) -> None:
        self.session = session
        self.held = held  # by profile name; shared with the ``Vault`` that loads it
        self.on_renew = on_renew  # called with (profile name, new material) after a renewal
        self.on_failure = on_failure  # called with the profile name after a failed renewal
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        session.on_lease = self.wake

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="vault-renewals")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        """Something new to schedule: look at the due times again."""
        if self._wake is not None:
            self._wake.set()

    def _next_due(self) -> float | None:
        times = [h.renew_at for h in self.held.values() if h.renew_at is not None]
        if self.session.due is not None:
            times.append(self.session.due)
        return min(times, default=None)

    async def _run(self) -> None:
        while True:
            await self._sleep()
            try:
                await self.session.renew_if_due()
                for name in [n for n, h in self.held.items() if due(h.renew_at)]:
                    if self.held[name].profile.vault_pki:
                        await self._renew_certificate(name)
                    else:
                        await self._reread_record(name)
            except Exception:  # noqa: BLE001 - the task must outlive any one failure
                log.exception("vault %s: renewal failed", self.session.client.address)
                self.session.due = time.time() + RETRY_MAX

    async def _sleep(self) -> None:
        """Until the next due time (at most ``IDLE_WAKE``), or until woken."""
        assert self._wake is not None
        when = self._next_due()
        delay = IDLE_WAKE if when is None else min(IDLE_WAKE, max(0.0, when - time.time()))
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    async def _renew_certificate(self, name: str) -> None:
        held = self.held[name]
        profile = held.profile
        assert profile.vault_pki is not None
        try:
            material = await issue(self.session, profile, profile.vault_pki)
        except Exception as exc:  # noqa: BLE001 - keep the current certificate, try again later
            held.failures += 1
            held.renew_at = time.time() + retry_delay(expiry(held.material), held.failures)
            if self.on_failure is not None:
                self.on_failure(name)
            if not isinstance(exc, VaultError | KeystoreError):
                log.exception("profile %s: renewing the vault certificate failed", name)
            log.warning("%s; keeping the current certificate of profile %s", exc, name)
            return
        self.held[name] = Held(profile, material, renew_time(material))
        log.info(
            "profile %s: the vault issued a new client certificate (valid until %s)",
            name,
            not_after(material),
        )
        self._hand_over(name, material)

    async def _reread_record(self, name: str) -> None:
        """Read a KV record again; a changed record replaces the held material."""
        held = self.held[name]
        profile, every = held.profile, self.session.client.config.kv_refresh_seconds
        assert profile.vault_path is not None
        try:
            material = await read_kv(self.session, profile, profile.vault_path)
        except Exception as exc:  # noqa: BLE001 - keep what is held, try again later
            held.failures += 1
            held.renew_at = time.time() + min(every, retry_delay(None, held.failures))
            if not isinstance(exc, VaultError | KeystoreError):
                log.exception("profile %s: reading the vault record again failed", name)
            log.warning("%s; profile %s keeps the record read before", exc, name)
            return
        self.held[name] = Held(profile, material, time.time() + every)
        if fingerprint(material) != fingerprint(held.material):
            log.info("profile %s: the vault record changed; new connections use it", name)
            self._hand_over(name, material)

    def _hand_over(self, name: str, material: ProfileMaterial) -> None:
        if self.on_renew is not None:
            try:
                self.on_renew(name, material)
            except Exception:  # noqa: BLE001 - the next renewal must still happen
                log.exception("profile %s: handing over the renewed certificate failed", name)


def fingerprint(material: ProfileMaterial) -> tuple[bytes, ...]:
    """What tells two loads of a record apart: the client chain and the trusted certificates."""
    client = material.client
    chain = client.chain if client is not None else ()
    return tuple(c.fingerprint(hashes.SHA256()) for c in (*chain, *(material.trust or ())))
