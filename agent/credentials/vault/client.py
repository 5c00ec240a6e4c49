"""The hvac client on its one worker thread, and the boundary where vault failures become
``VaultError``.

hvac is synchronous, so every vault request runs on one dedicated thread (which also keeps the
client's token handling single-threaded); the event loop never blocks on the vault. hvac,
requests and OS errors are translated here, ``raise VaultError(...) from exc``, into a message
that names the address, the request and what to check, with every token and secret scrubbed.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import hvac
import hvac.exceptions as hvac_errors
import requests
import requests.adapters

from agent.config.parameters import VAULT_PREFIX
from agent.config.vault import VaultConfig
from agent.credentials.formats import load_keystore
from agent.credentials.memory import load_client_material
from agent.errors import ConfigError, KeystoreError, VaultError

REQUEST_TIMEOUT = 10.0  # seconds for one vault request

T = TypeVar("T")

JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")  # a JWT, wherever one shows in a message


class LocalFailure(Exception):
    """Something on the agent's side keeps a login from being made (its message says what)."""


# What a request to the vault can raise that is the vault's (or the network's) doing.
FAILURES = (hvac_errors.VaultError, requests.RequestException, OSError, LocalFailure)


class AuthFailed(Exception):
    """Getting a token (a login, or looking up the configured token) failed; wraps the cause.

    ``hint`` says what to check when the vault answered and refused."""

    def __init__(self, step: str, cause: Exception, hint: str) -> None:
        super().__init__(step)
        self.step = step
        self.cause = cause
        self.hint = hint


class VaultClient:
    """The hvac client, and the thread all its requests run on."""

    def __init__(self, config: VaultConfig, token: str | None) -> None:
        assert config.address
        self.config = config
        self.address = config.address.rstrip("/")
        self.hvac = _new_hvac(config, self.address, token)
        self._pool: ThreadPoolExecutor | None = None

    async def run(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` on the vault thread; a failure becomes ``VaultError`` about ``what``."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="agent-vault")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        except (AuthFailed, *FAILURES) as exc:
            raise VaultError(self._scrub(f"vault {self.address}: {what}: {why(exc)}")) from exc

    async def close(self) -> None:
        """Close the connection to the vault and let the thread go."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.get_running_loop().run_in_executor(pool, self.hvac.adapter.close)
            pool.shutdown(wait=False)

    def answer(self, response: Any, what: str) -> dict[str, Any]:
        """The ``data`` of a vault answer, or ``VaultError`` when it has none."""
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, dict):
            raise VaultError(f"vault {self.address}: {what}: the answer holds no data")
        return data

    def _scrub(self, text: str) -> str:
        for secret in (self.config.token, self.config.secret_id, self.hvac.token):
            if secret:
                text = text.replace(secret, "[redacted]")
        return JWT.sub("[redacted]", text)


def _new_hvac(config: VaultConfig, address: str, token: str | None) -> hvac.Client:
    session = requests.Session()
    session.trust_env = False  # the vault's trust is .ca (or the default bundle), not env
    # hvac prefers a given session's ``verify`` over its own argument: set it there.
    session.verify = str(config.ca) if config.ca else True
    if config.login_method == "cert":
        session.mount("https://", _ClientCertificate(_client_context(config)))
    return hvac.Client(
        url=address,
        token=token,
        verify=session.verify,
        timeout=REQUEST_TIMEOUT,
        namespace=config.namespace or None,
        session=session,
    )


class _ClientCertificate(requests.adapters.HTTPAdapter):
    """Connections that present the agent's own certificate (for ``auth/cert`` logins)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)


def _client_context(config: VaultConfig) -> ssl.SSLContext:
    """A TLS context presenting ``client_cert`` (its key from ``client_key`` when separate),
    the key loaded from memory; ``ConfigError`` naming the parameter when it cannot be used."""
    assert config.client_cert is not None
    parameter = VAULT_PREFIX + "client_cert"
    try:
        data = config.client_cert.read_bytes()
        key = config.client_key.read_bytes() if config.client_key else None
        material = load_keystore(
            data,
            origin=f"{parameter} ({config.client_cert})",
            password=config.client_cert_password,
            key_data=key,
        )
        context = ssl.create_default_context(cafile=str(config.ca) if config.ca else None)
        load_client_material(context, material)
    except OSError as exc:
        raise ConfigError(
            f"cannot read {exc.filename}: {exc.strerror}", parameter=parameter
        ) from None
    except KeystoreError as exc:
        raise ConfigError(str(exc), parameter=parameter) from None
    return context


def field(data: dict[str, Any], name: str, what: str) -> str:
    """A non-empty string field of a vault answer, or ``VaultError``."""
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise VaultError(f"{what}: the vault's answer has no {name}")
    return value


def why(exc: BaseException) -> str:
    """What went wrong, in words a user can act on (no tokens, no secrets)."""
    if isinstance(exc, AuthFailed):
        if isinstance(exc.cause, (requests.ConnectionError, requests.Timeout, OSError)):
            return f"{exc.step} failed: {why(exc.cause)}"  # no answer: not the credentials
        return f"{exc.step} failed: {why(exc.cause)}; {exc.hint}"
    return _reason(exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, LocalFailure):
        return str(exc)
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
