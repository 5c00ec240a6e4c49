"""Key material from HashiCorp Vault / OpenBao: KV v2 keystore records and PKI-issued certificates.

``Vault.load(profile)`` is the ``Credentials`` vault loader. It reads only what config.xml names
(``.vault_path``, ``.vault_pki``): no job can point it at another path. Loaded material is kept
per profile. A vault outage while that material is still valid returns it (with a warning); with
nothing valid kept the load fails with ``VaultError`` (kind ``vault``). Messages name the
address, path and what failed, never a token or secret.

The parts (the facade imports them; they never import it):
- ``client``: the hvac client on its one thread; hvac/requests errors → ``VaultError``.
- ``login``: the login methods (token, AppRole, certificate, JWT, Kubernetes), the token's
  lease, its renewal and the back-off after a refused login.
- ``kv``: KV v2 records → ``ProfileMaterial`` (with the truststore fallback).
- ``pki``: ``.vault_pki`` targets, pki/issue or pki/sign, when a certificate is due.
- ``renewal``: the task that renews the token and certificates; ``timing``: its clock arithmetic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from agent.config.config import ProfileConfig
from agent.config.parameters import VAULT_PREFIX
from agent.config.vault import VaultConfig
from agent.credentials.sources import ProfileMaterial
from agent.credentials.vault.client import VaultClient
from agent.credentials.vault.kv import read_kv
from agent.credentials.vault.login import AuthCallback, Session, method_for
from agent.credentials.vault.pki import PkiTarget, issue, parse_pki, renew_time
from agent.credentials.vault.renewal import Held, Renewals, RenewCallback
from agent.credentials.vault.timing import not_after, still_valid
from agent.errors import ConfigError, KeystoreError, VaultError

__all__ = ["PkiTarget", "Vault", "parse_pki"]

log = logging.getLogger("agent.vault")


class Vault:
    """A vault client for the agent: loads profile material, keeps its token and certificates
    fresh. ``async with Vault(config.vault, on_renew=...) as vault: await vault.load(p)``."""

    def __init__(
        self,
        config: VaultConfig,
        *,
        on_renew: RenewCallback | None = None,
        on_auth: AuthCallback | None = None,
        on_renew_failed: Callable[[str], object] | None = None,
    ) -> None:
        if not config.address:
            raise ConfigError(
                "is not set, but a profile keeps its key material in the vault",
                parameter=VAULT_PREFIX + "address",
            )
        method = method_for(config)
        if method is None:
            raise ConfigError(
                f"the vault needs a login: a token, {VAULT_PREFIX}role_id + secret_id, "
                f"{VAULT_PREFIX}client_cert, or {VAULT_PREFIX}jwt_path + role "
                f"(or name one with {VAULT_PREFIX}auth_method)",
                parameter=VAULT_PREFIX + "token",
            )
        self.config = config
        self.address = config.address.rstrip("/")
        client = VaultClient(config, token=None if method.logs_in else config.token)
        self._session = Session(client, method, on_auth)
        self._held: dict[str, Held] = {}
        self._renewals = Renewals(self._session, self._held, on_renew, on_renew_failed)

    @property
    def logins(self) -> int:
        return self._session.logins

    @property
    def renewals(self) -> int:
        return self._session.renewals

    @property
    def on_renew(self) -> RenewCallback | None:
        return self._renewals.on_renew

    @property
    def on_auth(self) -> AuthCallback | None:
        return self._session.on_auth

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Vault:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the task that renews the token and PKI certificates before they expire."""
        self._renewals.start()

    async def close(self) -> None:
        """Stop renewing and close the connection to the vault."""
        await self._renewals.stop()
        await self._session.client.close()

    # ------------------------------------------------------------------ public API

    async def load(self, profile: ProfileConfig) -> ProfileMaterial:
        """The profile's material from the vault (the ``Credentials`` vault loader)."""
        held = self._held.get(profile.name)
        if held is not None and held.profile != profile:
            held = None  # config.xml changed the profile: the old material is not its own
        if held is not None and held.renew_at is not None and time.time() < held.renew_at:
            return held.material  # a PKI certificate not yet due: no need to ask for another
        try:
            material, renew_at = await self._fetch(profile)
        except VaultError as exc:
            if held is None or not still_valid(held.material):
                raise
            log.warning(
                "%s; profile %s keeps its cached material (valid until %s)",
                exc,
                profile.name,
                not_after(held.material),
            )
            return held.material
        self._held[profile.name] = Held(profile, material, renew_at)
        self._renewals.wake()
        return material

    async def check(self) -> None:
        """Raise ``VaultError`` unless the vault answers and accepts the agent's token."""
        await self._session.call(
            "checking the token", lambda client: client.auth.token.lookup_self()
        )

    def days_left(self) -> dict[str, float]:
        """Days until each loaded vault client certificate expires, by profile (for metrics)."""
        now = datetime.now(UTC)
        out = {}
        for name, held in self._held.items():
            client = held.material.client
            if client is not None:
                out[name] = (client.leaf.not_valid_after_utc - now).total_seconds() / 86400
        return out

    async def _fetch(self, profile: ProfileConfig) -> tuple[ProfileMaterial, float | None]:
        if profile.vault_path:
            every = self.config.kv_refresh_seconds
            material = await read_kv(self._session, profile, profile.vault_path)
            return material, (time.time() + every if every > 0 else None)
        if profile.vault_pki:
            material = await issue(self._session, profile, profile.vault_pki)
            return material, renew_time(material)
        raise KeystoreError(f"profile {profile.name}", "names neither vault_path nor vault_pki")
