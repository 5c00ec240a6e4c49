"""``ext.cred.hashicorp.vault.*``: where the vault is and how the agent logs in to it.

The login method is ``auth_method`` when set, else the first whose settings are present:
AppRole (``role_id`` + ``secret_id``), TLS certificate (``client_cert``), JWT (``jwt_path`` +
``role``), then a token. ``kubernetes`` is chosen only by name: its settings look like JWT's.
Each method's required settings are checked here, naming the parameter and its line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config.parameters import (
    VAULT_KEYS,
    VAULT_NUMBERS,
    VAULT_PREFIX,
    Parameter,
    as_text,
    convert,
    path_from,
)
from agent.errors import ConfigError

AUTH_METHODS = ("token", "approle", "cert", "jwt", "kubernetes")
KUBERNETES_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
PATHS = ("ca", "jwt_path", "client_cert", "client_key")

# What each method needs, as the parameters a user would set.
NEEDS: dict[str, tuple[str, ...]] = {
    "token": ("token",),
    "approle": ("role_id", "secret_id"),
    "cert": ("client_cert",),
    "jwt": ("role", "jwt_path"),
    "kubernetes": ("role",),
}


@dataclass(frozen=True)
class VaultConfig:
    address: str | None = None
    token: str | None = field(default=None, repr=False)
    role_id: str | None = None
    secret_id: str | None = field(default=None, repr=False)
    kv_mount: str = "secret"
    namespace: str | None = None
    ca: Path | None = None
    auth_method: str | None = None  # as set; ``login_method`` says which one is used
    role: str | None = None  # the cert, JWT or Kubernetes login role
    auth_mount: str | None = None  # the auth mount path; default: the method's name
    jwt_path: Path | None = None  # the JWT file, read again at each login
    client_cert: Path | None = None  # the agent's certificate for cert login (PEM or PKCS#12)
    client_key: Path | None = None  # its key, when the certificate file is PEM without one
    client_cert_password: str | None = field(default=None, repr=False)
    kv_refresh_seconds: float = 300.0  # KV records are read again this often (0: never)

    @property
    def login_method(self) -> str | None:
        """The login method in use: as set, or inferred from what is set (None: nothing)."""
        if self.auth_method:
            return self.auth_method
        if self.role_id and self.secret_id:
            return "approle"
        if self.client_cert:
            return "cert"
        if self.jwt_path and self.role:
            return "jwt"
        return "token" if self.token else None

    @property
    def token_file(self) -> Path | None:
        """The JWT file a ``jwt`` or ``kubernetes`` login reads."""
        if self.login_method == "kubernetes":
            return self.jwt_path or KUBERNETES_TOKEN
        return self.jwt_path

    @property
    def mount(self) -> str:
        """The auth mount the login goes to."""
        return (self.auth_mount or self.login_method or "token").strip("/")


def vault_config(params: dict[str, Parameter], base: Path) -> VaultConfig:
    got: dict[str, Any] = {}
    for key, attr in VAULT_KEYS.items():
        p = params.get(VAULT_PREFIX + key)
        if p is not None and p.value:
            to = (lambda v: path_from(base, v)) if attr in PATHS else as_text
            got[attr] = convert(p, VAULT_NUMBERS.get(key, to))
    config = VaultConfig(**got)
    _check_method(config, params)
    return config


def _check_method(config: VaultConfig, params: dict[str, Parameter]) -> None:
    def line(key: str) -> int | None:
        p = params.get(VAULT_PREFIX + key)
        return p.line if p else None

    if config.role_id and not config.secret_id and config.auth_method in (None, "approle"):
        raise ConfigError(
            f"AppRole login needs {VAULT_PREFIX}secret_id too",
            parameter=VAULT_PREFIX + "role_id",
            line=line("role_id"),
        )
    method = config.auth_method
    if method is None:
        return
    if method not in AUTH_METHODS:
        raise ConfigError(
            f"must be one of {', '.join(AUTH_METHODS)}; got {method!r}",
            parameter=VAULT_PREFIX + "auth_method",
            line=line("auth_method"),
        )
    missing = [key for key in NEEDS[method] if not getattr(config, key)]
    if missing:
        names = " and ".join(VAULT_PREFIX + key for key in missing)
        raise ConfigError(
            f"is {method!r}, which needs {names}",
            parameter=VAULT_PREFIX + "auth_method",
            line=line("auth_method"),
        )
