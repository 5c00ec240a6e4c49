"""The agent's vault token: how it is obtained (the login methods), its lease, its renewal.

A login method is one row of ``METHODS``, chosen by ``VaultConfig.login_method``
(``auth_method``, or inferred from what config.xml sets).
- token: the configured token; it is only looked up (to learn its TTL) and renewed with
  renew-self at two thirds of its TTL, until the vault will not renew it further.
- AppRole (``role_id`` + ``secret_id``), TLS certificate (``auth/cert``: the agent's own
  certificate on the connection, ``role`` names the certificate entry), JWT and Kubernetes
  (``role`` + the JWT file, read again at each login, so a rotated token is picked up): each
  logs in again when the token is refused or can no longer be renewed.
A failed login is not tried again before a back-off (1, 2, 4 ... 30 s, with jitter) has
passed: until then the same failure is raised without asking the vault, so a refusing vault is
not flooded by every job that needs it.
To add a method, write its ``authenticate`` function and add a row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import hvac
import hvac.exceptions as hvac_errors

from agent.config.parameters import VAULT_PREFIX
from agent.config.vault import VaultConfig
from agent.credentials.vault.client import FAILURES, AuthFailed, LocalFailure, VaultClient
from agent.credentials.vault.timing import RENEW_FRACTION, due, retry_delay
from agent.errors import VaultError

log = logging.getLogger("agent.vault")

T = TypeVar("T")
MAX_JWT = 64 * 1024  # a JWT file larger than this is not a JWT
AuthCallback = Callable[[str], object]


class Grant(NamedTuple):
    """What the vault said about a token: its TTL (0: never expires) and whether it renews."""

    ttl: Any
    renewable: Any


@dataclass(frozen=True)
class LoginMethod:
    """One way to get a token. ``logs_in``: a new token comes from logging in again; without
    it the configured token is all there is."""

    key: str  # as ext.cred.hashicorp.vault.auth_method names it
    name: str
    step: str  # the request, as messages name it
    hint: str  # what to check when the vault refuses it
    logs_in: bool
    authenticate: Callable[[hvac.Client, VaultConfig], Grant]


def _approle(client: hvac.Client, config: VaultConfig) -> Grant:
    auth = client.auth.approle.login(role_id=config.role_id, secret_id=config.secret_id)["auth"]
    return Grant(auth.get("lease_duration"), auth.get("renewable"))


def _token(client: hvac.Client, config: VaultConfig) -> Grant:
    data = client.auth.token.lookup_self()["data"]
    return Grant(data.get("ttl"), data.get("renewable"))


def _cert(client: hvac.Client, config: VaultConfig) -> Grant:
    """auth/cert: the vault matches the certificate the connection presented (VaultClient
    mounts it); ``role`` picks the entry, else the vault tries them all."""
    return _login(client, config, {"name": config.role} if config.role else {})


def _jwt(client: hvac.Client, config: VaultConfig) -> Grant:
    """auth/jwt and auth/kubernetes: the same request, ``role`` and the JWT read just now."""
    assert config.token_file is not None
    return _login(client, config, {"role": config.role, "jwt": read_jwt(config.token_file)})


def _login(client: hvac.Client, config: VaultConfig, body: dict[str, Any]) -> Grant:
    auth = client.login(f"/v1/auth/{config.mount}/login", json=body)["auth"]
    return Grant(auth.get("lease_duration"), auth.get("renewable"))


def read_jwt(path: Path) -> str:
    """The JWT in ``path``, stripped; ``LocalFailure`` naming the file when it cannot be used."""
    where = f"{VAULT_PREFIX}jwt_path ({path})"
    try:
        with path.open("rb") as f:
            data = f.read(MAX_JWT + 1)
    except OSError as exc:
        raise LocalFailure(f"cannot read {where}: {exc.strerror or exc}") from None
    if len(data) > MAX_JWT:
        raise LocalFailure(f"{where} is over {MAX_JWT // 1024} KiB: not a JWT")
    text = data.decode("ascii", "replace").strip()
    if text.count(".") != 2:
        raise LocalFailure(f"{where} holds no JWT (three dot-separated parts)")
    return text


P = VAULT_PREFIX
METHODS = (
    LoginMethod(
        "approle",
        "AppRole",
        "AppRole login",
        f"check {P}role_id and {P}secret_id",
        True,
        _approle,
    ),
    LoginMethod(
        "cert",
        "TLS certificate",
        "certificate login",
        f"is the CA of {P}client_cert registered at auth/{{mount}}/certs? check {P}role and "
        f"{P}auth_mount",
        True,
        _cert,
    ),
    LoginMethod(
        "jwt",
        "JWT",
        "JWT login",
        f"check the JWT in {P}jwt_path (signature, audience, expiry) and {P}role",
        True,
        _jwt,
    ),
    LoginMethod(
        "kubernetes",
        "Kubernetes",
        "Kubernetes login",
        f"check the service-account token ({P}jwt_path) and {P}role",
        True,
        _jwt,
    ),
    LoginMethod(
        "token",
        "token",
        "token lookup",
        f"the token is expired, revoked or wrong: check {P}token",
        False,
        _token,
    ),
)


def method_for(config: VaultConfig) -> LoginMethod | None:
    """The login method config.xml sets up, if any."""
    return next((method for method in METHODS if method.key == config.login_method), None)


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
        self.attempts = 0  # logins tried, refused or not
        self._refused: AuthFailed | None = None  # the last login's failure, until one succeeds
        self._refusals = 0  # failed logins in a row
        self._retry_at = 0.0  # no login before this after a failure
        self._renew_failures = 0  # failed renewals in a row

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
            self._renew_failures += 1
            delay = retry_delay(lease.expires if lease else None, self._renew_failures)
            self.due = time.time() + delay
            log.warning("%s (trying again in %.0f s)", exc, delay)
            return
        self._renew_failures = 0
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
        method, config = self.method, self.client.config
        hint = method.hint.format(mount=config.mount)
        wait = self._retry_at - time.time()
        if method.logs_in and self._refused is not None and wait > 0:
            cause = self._refused.cause
            raise AuthFailed(method.step, cause, f"{hint} (next attempt in {wait:.0f} s)")
        try:
            self.attempts += method.logs_in
            grant = method.authenticate(self.client.hvac, config)
            lease = Lease.of(grant)
        except FAILURES as exc:
            self._refused = AuthFailed(method.step, exc, hint)
            self._refusals += 1
            self._retry_at = time.time() + retry_delay(None, self._refusals)
            raise self._refused from exc
        self.logins += method.logs_in
        self._refused, self._refusals = None, 0
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
