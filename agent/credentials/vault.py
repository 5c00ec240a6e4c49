"""Key material from HashiCorp Vault / OpenBao: KV v2 keystore records and PKI-issued certificates.

``Vault.load(profile)`` is the ``Credentials`` vault loader. It reads only what config.xml names
(``.vault_path``, ``.vault_pki``): no job can point it at another path.

- KV v2: ``<kv_mount>/<vault_path>`` holds a record in the contract's format (``keystore`` base64 +
  ``password`` [+ ``type``, ``alias``], or ``certificate`` + ``private_key`` [+ ``ca_chain``]).
- PKI: ``.vault_pki`` is ``<mount>/issue/<role>`` (the vault makes the key) or
  ``<mount>/sign/<role>`` (the key is made here in memory and only a CSR leaves); a bare role name
  means ``pki/issue/<role>``. The certificate is for ``.vault_pki.common_name`` and is renewed at
  about two thirds of its lifetime by the task ``start()`` runs; ``on_renew(profile, material)``
  hands each new one to whoever swaps it in.
- Trust: the record's ``truststore`` (PEM), else the profile's ``.truststore`` file, else the
  system CAs.

Loaded material is kept per profile. A vault outage while that material is still valid returns it
(with a warning); with nothing valid kept the load fails with ``VaultError`` (kind ``vault``).
Auth: a token (renewed with renew-self at two thirds of its TTL) or AppRole (``role_id`` +
``secret_id``; logs in again when the token is refused or can no longer be renewed).
hvac is synchronous, so every vault request runs on one dedicated worker thread (which also keeps
the client's token handling single-threaded); the event loop never blocks on the vault.
Messages name the address, path and what failed, never a token or secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import hvac
import hvac.exceptions as hvac_errors
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.config.config import VAULT_PREFIX, ProfileConfig, VaultConfig
from agent.credentials.formats import load_truststore
from agent.credentials.sources import PARAM, ProfileMaterial, material_from_record
from agent.errors import ConfigError, KeystoreError, VaultError

log = logging.getLogger("agent.vault")

RENEW_FRACTION = 2 / 3  # renew tokens and certificates after this share of their lifetime
REQUEST_TIMEOUT = 10.0  # seconds for one vault request
RETRY_MAX = 30.0  # seconds between attempts to renew after a failure, at most
IDLE_WAKE = 60.0  # the renewal task looks at the clock at least this often

T = TypeVar("T")
RenewCallback = Callable[[str, ProfileMaterial], object]
AuthCallback = Callable[[str], object]


@dataclass(frozen=True)
class PkiTarget:
    """Where ``.vault_pki`` points: ``<mount>/<verb>/<role>``."""

    mount: str
    verb: str  # "issue": the vault generates the key; "sign": the key never leaves the agent
    role: str

    @property
    def path(self) -> str:
        return f"{self.mount}/{self.verb}/{self.role}"


def parse_pki(value: str, profile: str) -> PkiTarget:
    """``<mount>/issue/<role>``, ``<mount>/sign/<role>``, or a bare role (``pki/issue/<role>``)."""
    parts = value.strip().strip("/").split("/")
    if len(parts) == 1 and parts[0]:
        return PkiTarget("pki", "issue", parts[0])
    if len(parts) >= 3 and parts[-2] in ("issue", "sign") and all(parts):
        return PkiTarget("/".join(parts[:-2]), parts[-2], parts[-1])
    raise KeystoreError(
        f"profile {profile}",
        f"{PARAM}.{profile}.vault_pki must be <mount>/issue/<role>, <mount>/sign/<role> or a "
        f"role name, got {value!r}",
    )


@dataclass(frozen=True)
class _Lease:
    """The vault token's lifetime as last granted; ttl 0 means it never expires."""

    ttl: float
    renewable: bool
    obtained: float  # time.time() when granted

    @classmethod
    def from_auth(cls, ttl: Any, renewable: Any) -> _Lease:
        return cls(float(ttl or 0), bool(renewable), time.time())

    @property
    def expires(self) -> float | None:
        return self.obtained + self.ttl if self.ttl > 0 else None

    @property
    def renew_at(self) -> float | None:
        return self.obtained + self.ttl * RENEW_FRACTION if self.ttl > 0 else None


@dataclass
class _Held:
    """The material last loaded for a profile; ``renew_at`` is set for PKI certificates."""

    profile: ProfileConfig
    material: ProfileMaterial
    renew_at: float | None = None


class _AuthFailed(Exception):
    """Logging in (AppRole) or looking up the configured token failed; wraps the cause."""

    def __init__(self, step: str, cause: Exception) -> None:
        super().__init__(step)
        self.step = step
        self.cause = cause


class Vault:
    """A vault client for the agent: loads profile material, keeps its token and certificates
    fresh. ``async with Vault(config.vault, on_renew=...) as vault: await vault.load(p)``."""

    def __init__(
        self,
        config: VaultConfig,
        *,
        on_renew: RenewCallback | None = None,
        on_auth: AuthCallback | None = None,
    ) -> None:
        if not config.address:
            raise ConfigError(
                "is not set, but a profile keeps its key material in the vault",
                parameter=VAULT_PREFIX + "address",
            )
        if not config.token and not (config.role_id and config.secret_id):
            raise ConfigError(
                f"the vault needs a token or {VAULT_PREFIX}role_id + {VAULT_PREFIX}secret_id",
                parameter=VAULT_PREFIX + "token",
            )
        self.config = config
        self.address = config.address.rstrip("/")
        self.on_renew = on_renew  # called with (profile name, new material) after a PKI renewal
        self.on_auth = on_auth  # called with "login" or "renew" (metrics, tests)
        self.logins = 0
        self.renewals = 0
        self._approle = bool(config.role_id and config.secret_id)
        self._client = self._new_client()
        self._lease: _Lease | None = None
        self._granted = 0.0  # the TTL the last login (or first lookup) granted
        self._token_due: float | None = None
        self._held: dict[str, _Held] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    def _new_client(self) -> hvac.Client:
        session = requests.Session()
        session.trust_env = False  # the vault's trust is .ca (or the default bundle), not env
        # hvac prefers a given session's ``verify`` over its own argument: set it there.
        session.verify = str(self.config.ca) if self.config.ca else True
        return hvac.Client(
            url=self.address,
            token=None if self._approle else self.config.token,
            verify=session.verify,
            timeout=REQUEST_TIMEOUT,
            namespace=self.config.namespace or None,
            session=session,
        )

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Vault:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the task that renews the token and PKI certificates before they expire."""
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self._renewals(), name="vault-renewals")

    async def close(self) -> None:
        """Stop renewing and close the connection to the vault."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.get_running_loop().run_in_executor(pool, self._client.adapter.close)
            pool.shutdown(wait=False)

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
            if held is None or not _still_valid(held.material):
                raise
            log.warning(
                "%s; profile %s keeps its cached material (valid until %s)",
                exc,
                profile.name,
                _not_after(held.material),
            )
            return held.material
        self._held[profile.name] = _Held(profile, material, renew_at)
        self._wake_up()
        return material

    async def check(self) -> None:
        """Raise ``VaultError`` unless the vault answers and accepts the agent's token."""
        await self._call("checking the token", lambda client: client.auth.token.lookup_self())

    def days_left(self) -> dict[str, float]:
        """Days until each loaded vault client certificate expires, by profile (for metrics)."""
        now = datetime.now(UTC)
        out = {}
        for name, held in self._held.items():
            client = held.material.client
            if client is not None:
                out[name] = (client.leaf.not_valid_after_utc - now).total_seconds() / 86400
        return out

    # ------------------------------------------------------------------ reading material

    async def _fetch(self, profile: ProfileConfig) -> tuple[ProfileMaterial, float | None]:
        if profile.vault_path:
            return await self._read_kv(profile, profile.vault_path), None
        if profile.vault_pki:
            material = await self._issue(profile, profile.vault_pki)
            return material, _renew_time(material)
        raise KeystoreError(f"profile {profile.name}", "names neither vault_path nor vault_pki")

    async def _read_kv(self, profile: ProfileConfig, vault_path: str) -> ProfileMaterial:
        mount, path = self.config.kv_mount.strip("/"), vault_path.strip("/")
        where = f"{mount}/{path}"
        response = await self._call(
            f"reading KV v2 record {where} for profile {profile.name}",
            lambda client: client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=mount, raise_on_deleted_version=True
            ),
        )
        record = ((response or {}).get("data") or {}).get("data")
        if not isinstance(record, dict):
            raise VaultError(
                f"vault {self.address}: {where} (profile {profile.name}) is not a KV v2 record: "
                f"check {VAULT_PREFIX}kv_mount"
            )
        origin = f"profile {profile.name} (vault record {where})"
        return await asyncio.to_thread(_build, record, origin, profile)

    async def _issue(self, profile: ProfileConfig, vault_pki: str) -> ProfileMaterial:
        target = parse_pki(vault_pki, profile.name)
        cn = profile.vault_pki_common_name
        if not cn:
            raise KeystoreError(
                f"profile {profile.name}", f"set {PARAM}.{profile.name}.vault_pki.common_name"
            )
        what = f"requesting a certificate for {cn} from {target.path} for profile {profile.name}"
        if target.verb == "issue":
            response = await self._call(
                what,
                lambda client: client.secrets.pki.generate_certificate(
                    name=target.role, common_name=cn, mount_point=target.mount
                ),
            )
            data = self._answer(response, what)
            key_pem = _field(data, "private_key", what)
        else:
            key_pem, csr_pem = await asyncio.to_thread(_key_and_csr, cn)
            response = await self._call(
                what,
                lambda client: client.secrets.pki.sign_certificate(
                    name=target.role, csr=csr_pem, common_name=cn, mount_point=target.mount
                ),
            )
            data = self._answer(response, what)
        record = {
            "certificate": _field(data, "certificate", what),
            "private_key": key_pem,
            "ca_chain": data.get("ca_chain") or data.get("issuing_ca") or [],
        }
        origin = f"profile {profile.name} (vault {target.path}, CN {cn})"
        return await asyncio.to_thread(_build, record, origin, profile)

    # ------------------------------------------------------------------ talking to the vault

    async def _call(self, what: str, request: Callable[[hvac.Client], T]) -> T:
        """Run ``request`` on the vault thread, logged in; translate failures to ``VaultError``."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="agent-vault")
        logins, lease = self.logins, self._lease
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, self._authed, request
            )
        except (_AuthFailed, hvac_errors.VaultError, requests.RequestException, OSError) as exc:
            raise VaultError(
                self._scrub(f"vault {self.address}: {what}: {self._why(exc)}")
            ) from exc
        finally:
            if self._lease is not lease:
                self._wake_up()  # a new lease: the renewal task reschedules
            if self.logins != logins:
                self._notify("login")

    def _authed(self, request: Callable[[hvac.Client], T]) -> T:
        """On the vault thread: make sure a token is in hand, run, and log in again on a 403."""
        if self._lease is None:
            self._authenticate()
        try:
            return request(self._client)
        except hvac_errors.Forbidden:
            if not self._approle:
                raise
            log.info("vault %s: token refused; logging in again with AppRole", self.address)
            self._authenticate()
            return request(self._client)

    def _authenticate(self) -> None:
        """AppRole login, or a lookup of the configured token to learn its TTL."""
        step = "AppRole login" if self._approle else "token lookup"
        try:
            if self._approle:
                auth = self._client.auth.approle.login(
                    role_id=self.config.role_id, secret_id=self.config.secret_id
                )["auth"]
                self.logins += 1
                lease = _Lease.from_auth(auth.get("lease_duration"), auth.get("renewable"))
            else:
                data = self._client.auth.token.lookup_self()["data"]
                lease = _Lease.from_auth(data.get("ttl"), data.get("renewable"))
        except (hvac_errors.VaultError, requests.RequestException, OSError) as exc:
            raise _AuthFailed(step, exc) from exc
        self._granted = lease.ttl
        self._set_lease(lease)

    def _set_lease(self, lease: _Lease) -> None:
        self._lease = lease
        self._token_due = lease.renew_at if lease.renewable or self._approle else None

    def _renew_token(self, client: hvac.Client) -> bool:
        """On the vault thread: renew-self, or (AppRole) log in again when renewal runs out.

        True when the token was renewed, False when a new one came from a login instead."""
        lease = self._lease
        if self._approle and (lease is None or not lease.renewable):
            self._authenticate()
            return False
        auth = client.auth.token.renew_self()["auth"]
        lease = _Lease.from_auth(auth.get("lease_duration"), auth.get("renewable"))
        if lease.ttl < self._granted / 2:  # the token's max TTL is near
            if self._approle:
                self._authenticate()
                return False
            log.warning(
                "vault %s: the token expires in %.0f s and cannot be renewed further: "
                "set a new %stoken",
                self.address,
                lease.ttl,
                VAULT_PREFIX,
            )
        self.renewals += 1
        self._set_lease(lease)
        return True

    def _answer(self, response: Any, what: str) -> dict[str, Any]:
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, dict):
            raise VaultError(f"vault {self.address}: {what}: the answer holds no data")
        return data

    def _why(self, exc: BaseException) -> str:
        """What went wrong, in words a user can act on (no tokens, no secrets)."""
        if isinstance(exc, _AuthFailed):
            if isinstance(exc.cause, (requests.ConnectionError, requests.Timeout, OSError)):
                return f"{exc.step} failed: {self._why(exc.cause)}"  # no answer: not the token
            hint = (
                f"check {VAULT_PREFIX}role_id and {VAULT_PREFIX}secret_id"
                if self._approle
                else f"the token is expired, revoked or wrong: check {VAULT_PREFIX}token"
            )
            return f"{exc.step} failed: {self._why(exc.cause)}; {hint}"
        return _reason(exc)

    def _scrub(self, text: str) -> str:
        for secret in (self.config.token, self.config.secret_id, self._client.token):
            if secret:
                text = text.replace(secret, "[redacted]")
        return text

    def _notify(self, event: str) -> None:
        if self.on_auth is not None:
            try:
                self.on_auth(event)
            except Exception:  # noqa: BLE001 - a listener must not break vault access
                log.exception("vault %s: %s listener failed", self.address, event)

    # ------------------------------------------------------------------ renewals

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _next_due(self) -> float | None:
        times = [h.renew_at for h in self._held.values() if h.renew_at is not None]
        if self._token_due is not None:
            times.append(self._token_due)
        return min(times, default=None)

    async def _renewals(self) -> None:
        """The renewal task: sleep until the token or a certificate is due, then renew it."""
        assert self._wake is not None
        while True:
            due = self._next_due()
            delay = IDLE_WAKE if due is None else min(IDLE_WAKE, max(0.0, due - time.time()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            try:
                await self._renew_token_if_due()
                for name in [n for n, h in self._held.items() if _due(h.renew_at)]:
                    await self._renew_certificate(name)
            except Exception:  # noqa: BLE001 - the task must outlive any one failure
                log.exception("vault %s: renewal failed", self.address)
                self._token_due = time.time() + RETRY_MAX

    async def _renew_token_if_due(self) -> None:
        if not _due(self._token_due):
            return
        try:
            renewed = await self._call("renewing the token", self._renew_token)
        except VaultError as exc:
            if isinstance(exc.__cause__, hvac_errors.Forbidden) and not self._approle:
                self._token_due = None  # expired or revoked: only a new token helps
                log.error("%s: set a new %stoken", exc, VAULT_PREFIX)
                return
            lease = self._lease
            self._token_due = time.time() + _retry_delay(lease.expires if lease else None)
            log.warning("%s (trying again in %.0f s)", exc, self._token_due - time.time())
            return
        if renewed:
            self._notify("renew")

    async def _renew_certificate(self, name: str) -> None:
        held = self._held[name]
        profile = held.profile
        assert profile.vault_pki is not None
        try:
            material = await self._issue(profile, profile.vault_pki)
        except Exception as exc:  # noqa: BLE001 - keep the current certificate, try again later
            held.renew_at = time.time() + _retry_delay(_expiry(held.material))
            if not isinstance(exc, VaultError | KeystoreError):
                log.exception("profile %s: renewing the vault certificate failed", name)
            log.warning("%s; keeping the current certificate of profile %s", exc, name)
            return
        self._held[name] = _Held(profile, material, _renew_time(material))
        log.info(
            "profile %s: the vault issued a new client certificate (valid until %s)",
            name,
            _not_after(material),
        )
        if self.on_renew is not None:
            try:
                self.on_renew(name, material)
            except Exception:  # noqa: BLE001 - the next renewal must still happen
                log.exception("profile %s: handing over the renewed certificate failed", name)


# ---------------------------------------------------------------------- helpers


def _build(record: dict[str, Any], origin: str, profile: ProfileConfig) -> ProfileMaterial:
    """Material from a record; the profile's ``.truststore`` file when the record has none."""
    material = material_from_record(record, origin=origin)
    if material.trust is not None or profile.truststore is None:
        return material
    return ProfileMaterial(
        material.client, _trust_file(profile, profile.truststore), material.notes
    )


def _trust_file(profile: ProfileConfig, path: Path) -> tuple[x509.Certificate, ...]:
    origin = f"profile {profile.name} (truststore {path})"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeystoreError(
            origin,
            f"cannot read the file: {exc.strerror or exc}; check {PARAM}.{profile.name}.truststore",
        ) from exc
    return load_truststore(data, origin=origin, password=profile.truststore_password)


def _key_and_csr(cn: str) -> tuple[str, str]:
    """A fresh EC P-256 key (PEM, kept in memory) and a CSR for ``cn``."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem.decode(), csr.public_bytes(serialization.Encoding.PEM).decode()


def _field(data: dict[str, Any], name: str, what: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise VaultError(f"{what}: the vault's answer has no {name}")
    return value


def _reason(exc: BaseException) -> str:
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS to the vault failed (is its certificate trusted? set {VAULT_PREFIX}ca)"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"no answer within {REQUEST_TIMEOUT:g} s"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "cannot connect (is the vault running at this address?)"
    if isinstance(exc, requests.RequestException):
        return f"request failed ({type(exc).__name__})"
    if isinstance(exc, OSError):
        return f"cannot use {VAULT_PREFIX}ca ({exc.strerror or exc})"
    if isinstance(exc, hvac_errors.VaultError):
        said = ", ".join(str(e) for e in exc.errors or [] if e)
        status = _STATUS.get(type(exc), f"refused ({type(exc).__name__})")
        return f"{status} (the vault said: {said})" if said else status
    return type(exc).__name__


_STATUS: dict[type[Exception], str] = {
    hvac_errors.InvalidRequest: "bad request (400)",
    hvac_errors.Unauthorized: "unauthorized (401)",
    hvac_errors.Forbidden: "permission denied (403): the token lacks a policy for this path",
    hvac_errors.InvalidPath: "nothing at this path (404): check the path and the mount",
    hvac_errors.RateLimitExceeded: "rate limited (429)",
    hvac_errors.InternalServerError: "vault internal error (500)",
    hvac_errors.VaultDown: "the vault is sealed or unavailable (503)",
}


def _due(when: float | None) -> bool:
    return when is not None and when <= time.time()


def _expiry(material: ProfileMaterial) -> float | None:
    client = material.client
    return client.leaf.not_valid_after_utc.timestamp() if client is not None else None


def _not_after(material: ProfileMaterial) -> str:
    expiry = _expiry(material)
    if expiry is None:
        return "no expiry"
    return f"{datetime.fromtimestamp(expiry, UTC):%Y-%m-%d %H:%M:%S} UTC"


def _still_valid(material: ProfileMaterial) -> bool:
    expiry = _expiry(material)
    return expiry is None or expiry > time.time()


def _renew_time(material: ProfileMaterial) -> float | None:
    """Two thirds into the certificate's remaining lifetime, counted from now or its start."""
    client = material.client
    if client is None:
        return None
    start = max(time.time(), client.leaf.not_valid_before_utc.timestamp())
    end = client.leaf.not_valid_after_utc.timestamp()
    return start + max(0.0, end - start) * RENEW_FRACTION


def _retry_delay(expires: float | None) -> float:
    """After a failed renewal: try again soon, sooner as expiry nears, never in a tight loop."""
    left = None if expires is None else expires - time.time()
    if left is None or left <= 0:
        return RETRY_MAX / 3  # nothing left to save: keep trying, quietly
    return min(RETRY_MAX, max(1.0, left / 4))
