"""The agent's vault token: how it is obtained (the login methods), its lease, its renewal.

A login method is one row of ``METHODS``: the first whose settings are all in config.xml is used.
- token: the configured token; it is only looked up (to learn its TTL) and renewed with
  renew-self at two thirds of its TTL, until the vault will not renew it further.
- AppRole: ``role_id`` + ``secret_id``; logs in again when the token is refused or can no longer
  be renewed.
To add a method, write its ``authenticate`` function and add a row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import hvac
import hvac.exceptions as hvac_errors

from agent.config.config import VaultConfig
from agent.config.parameters import VAULT_PREFIX
from agent.credentials.vault.client import FAILURES, AuthFailed, VaultClient
from agent.credentials.vault.timing import RENEW_FRACTION, due, retry_delay
from agent.errors import VaultError

log = logging.getLogger("agent.vault")

T = TypeVar("T")
AuthCallback = Callable[[str], object]


class Grant(NamedTuple):
    """What the vault said about a token: its TTL (0: never expires) and whether it renews."""

    ttl: Any
    renewable: Any


@dataclass(frozen=True)
class LoginMethod:
    """One way to get a token. ``logs_in``: a new token comes from logging in again; without
    it the configured token is all there is."""

    name: str
    step: str  # the request, as messages name it
    hint: str  # what to check when the vault refuses it
    logs_in: bool
    configured: Callable[[VaultConfig], bool]
    authenticate: Callable[[hvac.Client, VaultConfig], Grant]


def _approle(client: hvac.Client, config: VaultConfig) -> Grant:
    auth = client.auth.approle.login(role_id=config.role_id, secret_id=config.secret_id)["auth"]
    return Grant(auth.get("lease_duration"), auth.get("renewable"))


def _token(client: hvac.Client, config: VaultConfig) -> Grant:
    data = client.auth.token.lookup_self()["data"]
    return Grant(data.get("ttl"), data.get("renewable"))


METHODS = (
    LoginMethod(
        "AppRole",
        "AppRole login",
        f"check {VAULT_PREFIX}role_id and {VAULT_PREFIX}secret_id",
        True,
        lambda config: bool(config.role_id and config.secret_id),
        _approle,
    ),
    LoginMethod(
        "token",
        "token lookup",
        f"the token is expired, revoked or wrong: check {VAULT_PREFIX}token",
        False,
        lambda config: bool(config.token),
        _token,
    ),
)


def method_for(config: VaultConfig) -> LoginMethod | None:
    """The login method config.xml sets up, if any."""
    return next((method for method in METHODS if method.configured(config)), None)


@dataclass(frozen=True)
class Lease:
    """The vault token's lifetime as last granted; ttl 0 means it never expires."""

    ttl: float
    renewable: bool
    obtained: float  # time.time() when granted

    @classmethod
    def of(cls, grant: Grant) -> Lease:
        return cls(float(grant.ttl or 0), bool(grant.renewable), time.time())

    @property
    def expires(self) -> float | None:
        return self.obtained + self.ttl if self.ttl > 0 else None

    @property
    def renew_at(self) -> float | None:
        return self.obtained + self.ttl * RENEW_FRACTION if self.ttl > 0 else None


class Session:
    """Vault requests made with a valid token: logs in first, again on a refusal (when the
    method can), and renews the token when ``renew_if_due`` finds it due."""

    def __init__(
        self,
        client: VaultClient,
        method: LoginMethod,
        on_auth: AuthCallback | None = None,
    ) -> None:
        self.client = client
        self.method = method
        self.on_auth = on_auth  # called with "login" or "renew" (metrics, tests)
        self.on_lease: Callable[[], object] = lambda: None  # a new lease: reschedule renewals
        self.logins = 0
        self.renewals = 0
        self.lease: Lease | None = None
        self.due: float | None = None  # when to renew the token
        self._granted = 0.0  # the TTL the last login (or first lookup) granted

    async def call(self, what: str, request: Callable[[hvac.Client], T]) -> T:
        """Run ``request`` on the vault thread, logged in; failures become ``VaultError``."""
        logins, lease = self.logins, self.lease
        try:
            return await self.client.run(what, lambda: self._authed(request))
        finally:
            if self.lease is not lease:
                self.on_lease()
            if self.logins != logins:
                self.notify("login")

    async def renew_if_due(self) -> None:
        """Renew the token (or log in again) when it is due; on failure, schedule a retry."""
        if not due(self.due):
            return
        try:
            renewed = await self.call("renewing the token", self._renew)
        except VaultError as exc:
            if isinstance(exc.__cause__, hvac_errors.Forbidden) and not self.method.logs_in:
                self.due = None  # expired or revoked: only a new token helps
                log.error("%s: set a new %stoken", exc, VAULT_PREFIX)
                return
            lease = self.lease
            self.due = time.time() + retry_delay(lease.expires if lease else None)
            log.warning("%s (trying again in %.0f s)", exc, self.due - time.time())
            return
        if renewed:
            self.notify("renew")

    def notify(self, event: str) -> None:
        if self.on_auth is not None:
            try:
                self.on_auth(event)
            except Exception:  # noqa: BLE001 - a listener must not break vault access
                log.exception("vault %s: %s listener failed", self.client.address, event)

    # ------------------------------------------------------------------ on the vault thread

    def _authed(self, request: Callable[[hvac.Client], T]) -> T:
        """Make sure a token is in hand, run, and log in again on a 403."""
        if self.lease is None:
            self._authenticate()
        try:
            return request(self.client.hvac)
        except hvac_errors.Forbidden:
            if not self.method.logs_in:
                raise
            log.info(
                "vault %s: token refused; logging in again with %s",
                self.client.address,
                self.method.name,
            )
            self._authenticate()
            return request(self.client.hvac)

    def _authenticate(self) -> None:
        """Log in, or look up the configured token to learn its TTL."""
        method = self.method
        try:
            grant = method.authenticate(self.client.hvac, self.client.config)
            if method.logs_in:
                self.logins += 1
            lease = Lease.of(grant)
        except FAILURES as exc:
            raise AuthFailed(method.step, exc, method.hint) from exc
        self._granted = lease.ttl
        self._set_lease(lease)

    def _set_lease(self, lease: Lease) -> None:
        self.lease = lease
        self.due = lease.renew_at if lease.renewable or self.method.logs_in else None

    def _renew(self, client: hvac.Client) -> bool:
        """renew-self, or log in again when renewal runs out (when the method can).

        True when the token was renewed, False when a new one came from a login instead."""
        if self.method.logs_in and (self.lease is None or not self.lease.renewable):
            self._authenticate()
            return False
        auth = client.auth.token.renew_self()["auth"]
        lease = Lease.of(Grant(auth.get("lease_duration"), auth.get("renewable")))
        if lease.ttl < self._granted / 2:  # the token's max TTL is near
            if self.method.logs_in:
                self._authenticate()
                return False
            log.warning(
                "vault %s: the token expires in %.0f s and cannot be renewed further: "
                "set a new %stoken",
                self.client.address,
                lease.ttl,
                VAULT_PREFIX,
            )
        self.renewals += 1
        self._set_lease(lease)
        return True
