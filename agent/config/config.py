"""config.xml: declared parameters, parsed into a frozen ``AgentConfig``.

``AgentConfig.from_xml`` is a pure parse (no files besides none, no network): it checks every
value's type and names the parameter and line of anything wrong. Reading key material, decrypting
``secure="true"`` values and opening the queue happen later, in the layers that need them. The
names a config.xml may hold and how each value is read are in ``parameters``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config.cyberark import CyberArkConfig, cyberark_config
from agent.config.parameters import (
    ENV_PREFIX,
    KEYSTORE_TYPES,
    PROFILE_CONVERTERS,
    PROFILE_KEYS,
    PROFILE_PREFIX,
    PROFILE_RE,
    PROXY_KEYS,
    TOP_LEVEL,
    Parameter,
    apply_env,
    as_text,
    convert,
    known_parameter,
    parse_parameters,
    path_from,
)
from agent.config.vault import VaultConfig, vault_config
from agent.errors import ConfigError
from agent.jobs.names import SNI

DEFAULT_MAX_JOB_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ProfileConfig:
    """One protocol profile: ``mid.httpclient.protocol.<name>.*``. Paths are absolute."""

    name: str
    path: Path | None = None
    password: str | None = field(default=None, repr=False)
    key_password: str | None = field(default=None, repr=False)  # a JKS/JCEKS key's own password
    key: Path | None = None
    port: int = 443
    type: str | None = None
    alias: str | None = None
    truststore: Path | None = None
    truststore_password: str | None = field(default=None, repr=False)
    sni: SNI = None
    vault_path: str | None = None
    vault_pki: str | None = None
    vault_pki_common_name: str | None = None
    wss_username: str | None = None
    wss_password: str | None = field(default=None, repr=False)
    wss_password_type: str = "text"
    pins: tuple[str, ...] = ()  # sha256:<base64> SPKI pins of the partner's server key
    cyberark_password_id: str | None = None  # the keystore password is this CCP object's Content
    cyberark_keystore_id: str | None = None  # the keystore (base64 Content) comes from CCP
    max_concurrency: int | None = None  # per-target limits for this profile's jobs (None:
    rate: float | None = None  # agent.target.* apply)
    burst: int | None = None
    revocation: str = "off"  # off | soft | hard: is the partner's server certificate revoked?
    crls: tuple[Path, ...] = ()  # CRL files to check it against (read again when changed)

    @property
    def store(self) -> str | None:
        """Where the profile's material is fetched from at run time: ``vault``, ``cyberark``,
        or None (files only, loaded when config.xml is)."""
        if self.vault_path or self.vault_pki:
            return "vault"
        if self.cyberark_password_id or self.cyberark_keystore_id:
            return "cyberark"
        return None


@dataclass(frozen=True)
class ProxyConfig:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AgentConfig:
    name: str = field(default_factory=socket.gethostname)
    url: str = "sqlite:///./agent-queue.db"
    instance_username: str | None = None
    instance_password: str | None = field(default=None, repr=False)
    threads_max: int = 25
    poll_time: float = 5.0
    log_level: str = "info"
    log_format: str = "auto"  # text on a terminal, JSON lines otherwise
    proxy: ProxyConfig | None = None
    sni_enabled: bool = True
    profiles: Mapping[str, ProfileConfig] = field(default_factory=dict)
    vault: VaultConfig = field(default_factory=VaultConfig)
    cyberark: CyberArkConfig = field(default_factory=CyberArkConfig)
    cert_warn_days: int = 30
    resolve: Mapping[str, str] = field(default_factory=dict)
    outbound_allow: tuple[str, ...] = ()
    lease_seconds: float = 60.0
    drain_seconds: float = 30.0
    health_listen: tuple[str, int] | None = None
    max_response_bytes: int = 8 * 1024 * 1024
    max_job_bytes: int = DEFAULT_MAX_JOB_BYTES
    max_idle_connections: int = 1024  # kept-alive connections over all identities
    max_inline_identities: int = 256  # inline records whose contexts are kept (LRU)
    idle_seconds: float = 30.0  # an idle connection closes after this long
    workers: int = 1
    journal_path: str = "agent-journal.db"
    target_max_concurrency: int = 0  # calls in flight per host:port (0: no limit)
    target_rate: float = 0.0  # calls per second per host:port (0: no limit)
    target_burst: int = 0  # the rate's bucket (0: the rate rounded up)
    retry_base: float = 1.0  # a retry waits up to base * 2^(n-1) s (full jitter) ...
    retry_max_delay: float = 60.0  # ... and never more than this
    breaker_failures: int = 5  # calls without an answer in a row that open a breaker (0: off)
    breaker_open_seconds: float = 30.0
    breaker_max_open_seconds: float = 300.0
    base_dir: Path = field(default_factory=Path.cwd)
    config_path: Path | None = None  # the config.xml read (set by secure.load_secure_config)
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_xml(
        cls, text: bytes, *, base_dir: Path | None = None, env: Mapping[str, str] | None = None
    ) -> AgentConfig:
        params = parse_parameters(text)
        return from_parameters(params, base_dir=base_dir or Path.cwd(), env=env or {})

    def profile(self, name: str) -> ProfileConfig | None:
        """The protocol profile called ``name``, matched without regard to case."""
        found = self.profiles.get(name)
        if found is not None:
            return found
        folded = name.casefold()
        return next((p for n, p in self.profiles.items() if n.casefold() == folded), None)

    @property
    def agent_name(self) -> str:
        """The ECC agent name, ``mid.server.<name>``."""
        return f"mid.server.{self.name}"


def from_parameters(
    params: dict[str, Parameter], *, base_dir: Path, env: Mapping[str, str]
) -> AgentConfig:
    params = apply_env(params, env)
    values: dict[str, Any] = {"base_dir": base_dir}
    warnings: list[str] = []
    for name, p in params.items():
        if p.value.startswith("encrypted:"):
            raise ConfigError(
                "is encrypted but no key could decrypt it (is the key file beside config.xml?)",
                parameter=name,
                line=p.line,
            )
        if name in TOP_LEVEL:
            attr, conv = TOP_LEVEL[name]
            values[attr] = convert(p, conv)
        elif not known_parameter(name):
            where = f"line {p.line}" if p.line else f"${ENV_PREFIX}{name}"
            warnings.append(f"unknown parameter {name!r} ({where}) ignored")
    if not values.get("name", "x"):
        raise ConfigError("must not be empty", parameter="name", line=params["name"].line)
    values["proxy"] = _proxy(params)
    values["vault"] = vault_config(params, base_dir)
    values["cyberark"] = cyberark_config(params, base_dir)
    values["profiles"] = _profiles(params, base_dir, values["cyberark"])
    return AgentConfig(**values, warnings=tuple(warnings))


def _proxy(params: dict[str, Parameter]) -> ProxyConfig | None:
    got = {k: convert(params[k], conv) for k, conv in PROXY_KEYS.items() if k in params}
    if not got.get("mid.proxy.use_proxy"):
        return None
    if not got.get("mid.proxy.host"):
        p = params["mid.proxy.use_proxy"]
        raise ConfigError("is true but mid.proxy.host is not set", parameter=p.name, line=p.line)
    return ProxyConfig(
        host=got["mid.proxy.host"],
        port=got.get("mid.proxy.port", 3128),
        username=got.get("mid.proxy.username") or None,
        password=got.get("mid.proxy.password") or None,
    )


def _profiles(
    params: dict[str, Parameter], base: Path, cyberark: CyberArkConfig
) -> dict[str, ProfileConfig]:
    raw: dict[str, dict[str, Any]] = {}
    spelled: dict[str, tuple[str, Parameter]] = {}  # casefolded name → first spelling seen
    for name, p in params.items():
        m = PROFILE_RE.match(name)
        if not m:
            continue
        profile, key = m.group(1), PROFILE_KEYS[m.group(2)]
        _check_spelling(spelled, profile, p)
        value = convert(p, PROFILE_CONVERTERS.get(key, as_text))
        if key in ("path", "key", "truststore") and value:
            value = convert(p, lambda v: path_from(base, v))
        if key == "crls":
            value = tuple(path_from(base, v) for v in value)
        if key == "type" and value:
            value = value.lower()
            if value not in KEYSTORE_TYPES:
                raise ConfigError(
                    f"must be one of jks, jceks, pkcs12, pem, der; got {p.value!r}",
                    parameter=name,
                    line=p.line,
                )
        raw.setdefault(profile, {})[key] = value if value != "" else None
    out = {}
    for profile, vals in raw.items():
        cfg = ProfileConfig(name=profile, **vals)
        _check_profile(cfg, params)
        check_cyberark_profile(cfg, cyberark, params)
        out[profile] = cfg
    return out


def _check_spelling(spelled: dict[str, tuple[str, Parameter]], profile: str, p: Parameter) -> None:
    """Profile names are matched without regard to case: two spellings are two profiles no
    job could tell apart."""
    first, first_param = spelled.setdefault(profile.casefold(), (profile, p))
    if first != profile:
        raise ConfigError(
            f"profiles {first!r} ({first_param.name}) and {profile!r} ({p.name}) differ only "
            "in case; profile names are matched without regard to case: spell them the same",
            parameter=p.name,
            line=p.line,
        )


def _check_profile(cfg: ProfileConfig, params: dict[str, Parameter]) -> None:
    prefix = f"{PROFILE_PREFIX}{cfg.name}."
    sources = [
        key
        for key, attr in (
            ("path", "path"),
            ("vault_path", "vault_path"),
            ("vault_pki", "vault_pki"),
            ("cyberark.keystore_id", "cyberark_keystore_id"),
        )
        if getattr(cfg, attr)
    ]
    if len(sources) > 1:
        p = params.get(prefix + sources[1])
        raise ConfigError(
            f"profile {cfg.name!r} names more than one keystore source ({', '.join(sources)})",
            parameter=prefix + sources[1],
            line=p.line if p else None,
        )
    if cfg.vault_pki and not cfg.vault_pki_common_name:
        raise ConfigError(
            f"profile {cfg.name!r}: vault_pki needs {prefix}vault_pki.common_name",
            parameter=prefix + "vault_pki",
        )


def check_cyberark_profile(
    cfg: ProfileConfig, cyberark: CyberArkConfig, params: dict[str, Parameter]
) -> None:
    """A profile naming CCP objects needs CCP configured, and no vault beside it."""
    prefix = f"{PROFILE_PREFIX}{cfg.name}."
    used = [
        key
        for key, value in (
            ("cyberark.password_id", cfg.cyberark_password_id),
            ("cyberark.keystore_id", cfg.cyberark_keystore_id),
        )
        if value
    ]
    if not used:
        return
    p = params[prefix + used[0]]
    if cfg.vault_path or cfg.vault_pki:
        raise ConfigError(
            f"profile {cfg.name!r} takes its material from the vault; {prefix}{used[0]} "
            "cannot be used with it",
            parameter=p.name,
            line=p.line,
        )
    if not cyberark.use:
        raise ConfigError(
            "names a CyberArk object, but ext.cred.use_cyberark is not true",
            parameter=p.name,
            line=p.line,
        )
    if not cyberark.endpoint:
        raise ConfigError(
            "names a CyberArk object, but ext.cred.ccp_endpoint is not set",
            parameter=p.name,
            line=p.line,
        )


def load_config(path: Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read config.xml from ``path``; a missing file gives the embedded defaults."""
    env = os.environ if env is None else env
    path = path.resolve()
    text = read_config(path)
    if text is None:
        return from_parameters({}, base_dir=path.parent, env=env)
    try:
        return AgentConfig.from_xml(text, base_dir=path.parent, env=env)
    except ConfigError as exc:
        raise exc.located(path) from None


def read_config(path: Path) -> bytes | None:
    """config.xml's bytes; None when there is no such file (the embedded defaults apply)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
