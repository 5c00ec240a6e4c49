"""config.xml: declared parameters, parsed into a frozen ``AgentConfig``.

``AgentConfig.from_xml`` is a pure parse (no files besides none, no network): it checks every
value's type and names the parameter and line of anything wrong. Reading key material, decrypting
``secure="true"`` values and opening the queue happen later, in the layers that need them.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree

from agent.config.networks import network_of
from agent.errors import ConfigError
from agent.jobs.names import sni_value

log = logging.getLogger("agent.config")

SNI = bool | str | None
DEFAULT_MAX_JOB_BYTES = 16 * 1024 * 1024
ENV_PREFIX = "MID_CONFIG_"
PROFILE_PREFIX = "mid.httpclient.protocol."
VAULT_PREFIX = "ext.cred.hashicorp.vault."
LOG_LEVELS = ("debug", "info", "warn", "warning", "error")
LOG_FORMATS = ("auto", "text", "json")
PROFILE_KEYS = {
    "path": "path",
    "password": "password",
    "key": "key",
    "port": "port",
    "type": "type",
    "alias": "alias",
    "truststore": "truststore",
    "truststore.password": "truststore_password",
    "sni": "sni",
    "vault_path": "vault_path",
    "vault_pki": "vault_pki",
    "vault_pki.common_name": "vault_pki_common_name",
    "wss.username": "wss_username",
    "wss.password": "wss_password",
    "wss.password_type": "wss_password_type",
}
KEYSTORE_TYPES = ("jks", "jceks", "pkcs12", "p12", "pfx", "pem", "der")
_PROFILE_RE = re.compile(
    r"^mid\.httpclient\.protocol\.([A-Za-z0-9_-]+)\.("
    + "|".join(map(re.escape, PROFILE_KEYS))
    + ")$"
)


@dataclass(frozen=True)
class ProfileConfig:
    """One protocol profile: ``mid.httpclient.protocol.<name>.*``. Paths are absolute."""

    name: str
    path: Path | None = None
    password: str | None = field(default=None, repr=False)
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


@dataclass(frozen=True)
class VaultConfig:
    address: str | None = None
    token: str | None = field(default=None, repr=False)
    role_id: str | None = None
    secret_id: str | None = field(default=None, repr=False)
    kv_mount: str = "secret"
    namespace: str | None = None
    ca: Path | None = None


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
    cert_warn_days: int = 30
    resolve: Mapping[str, str] = field(default_factory=dict)
    outbound_allow: tuple[str, ...] = ()
    lease_seconds: float = 60.0
    drain_seconds: float = 30.0
    health_listen: tuple[str, int] | None = None
    max_response_bytes: int = 8 * 1024 * 1024
    max_job_bytes: int = DEFAULT_MAX_JOB_BYTES
    workers: int = 1
    journal_path: str = "agent-journal.db"
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


@dataclass(frozen=True)
class Parameter:
    name: str
    value: str
    line: int | None
    secure: bool = False


def parse_parameters(text: bytes) -> dict[str, Parameter]:
    """Read ``<parameters><parameter name= value=/>`` into a dict; XML errors name the line."""
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    try:
        root = etree.fromstring(text, parser)
    except etree.XMLSyntaxError as exc:
        line = exc.lineno if exc.lineno else None
        raise ConfigError(f"malformed XML: {exc.msg}", line=line) from None
    if root.getroottree().docinfo.doctype:
        raise ConfigError("a DOCTYPE is not allowed in config.xml", line=1)
    if root.tag != "parameters":
        raise ConfigError(
            f"root element must be <parameters>, not <{root.tag}>", line=root.sourceline
        )
    out: dict[str, Parameter] = {}
    for elem in root:
        if not isinstance(elem.tag, str):
            continue  # comments and processing instructions
        if elem.tag != "parameter":
            log.warning("config.xml line %s: ignoring element <%s>", elem.sourceline, elem.tag)
            continue
        name, value = elem.get("name"), elem.get("value")
        if not name:
            raise ConfigError("<parameter> without a name attribute", line=elem.sourceline)
        if value is None:
            value = elem.text or ""
        secure = (elem.get("secure") or "").lower() == "true"
        out[name] = Parameter(name, value.strip(), elem.sourceline, secure)
    return out


# ---------------------------------------------------------------------------- value converters


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def conv(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise ValueError(f"must be a whole number, got {v!r}") from None
        if not lo <= n <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {n}")
        return n

    return conv


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def conv(v: str) -> float:
        try:
            n = float(v)
        except ValueError:
            raise ValueError(f"must be a number of seconds, got {v!r}") from None
        if not lo <= n <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}, got {v}")
        return n

    return conv


def _bool(v: str) -> bool:
    low = v.lower()
    if low in ("true", "yes", "1", "on"):
        return True
    if low in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"must be true or false, got {v!r}")


def _sni(v: str) -> SNI:
    return sni_value(v)  # the same rule as a job's ``sni``


def _log_level(v: str) -> str:
    low = v.lower()
    if low not in LOG_LEVELS:
        raise ValueError(f"must be one of debug, info, warn, error; got {v!r}")
    return "warn" if low == "warning" else low


def _log_format(v: str) -> str:
    low = v.strip().lower()
    if low not in LOG_FORMATS:
        raise ValueError(f"must be text or json (or auto: text on a terminal); got {v!r}")
    return low


def _host_port(v: str) -> tuple[str, int]:
    host, sep, port = v.rpartition(":")
    if not sep or not host:
        raise ValueError(f"must be host:port, got {v!r}")
    return host.strip("[]"), _int(0, 65535)(port)


def _resolve(v: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (p.strip() for p in v.split(","))):
        host, sep, addr = item.partition(":")
        if not sep or not host or not addr:
            raise ValueError(f"entries must be host:address, got {item!r}")
        out[host.lower()] = addr.strip("[]")
    return out


def _list(v: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in v.split(",") if p.strip())


def _allow(v: str) -> tuple[str, ...]:
    """``agent.outbound.allow``: host globs and networks; a malformed network is refused here."""
    entries = _list(v)
    for entry in entries:
        network_of(entry.lower())
    return entries


def _text(v: str) -> str:
    return v


def _url(v: str) -> str:
    if not re.match(r"^(sqlite|postgres|postgresql|https)://", v):
        raise ValueError(f"must be sqlite:///path, postgresql://... or https://instance, got {v!r}")
    return v


# name -> (AgentConfig attribute, converter)
TOP_LEVEL: dict[str, tuple[str, Callable[[str], Any]]] = {
    "name": ("name", _text),
    "url": ("url", _url),
    "mid.instance.username": ("instance_username", _text),
    "mid.instance.password": ("instance_password", _text),
    "threads.max": ("threads_max", _int(1, 10000)),
    "mid.poll.time": ("poll_time", _float(0.01, 86400)),
    "mid.log.level": ("log_level", _log_level),
    "agent.log.format": ("log_format", _log_format),
    "glide.outbound.tls_sni.enabled": ("sni_enabled", _bool),
    "mid.cert.expiry.warn_days": ("cert_warn_days", _int(0, 3650)),
    "agent.resolve": ("resolve", _resolve),
    "agent.outbound.allow": ("outbound_allow", _allow),
    "agent.lease.seconds": ("lease_seconds", _float(1, 86400)),
    "agent.drain.seconds": ("drain_seconds", _float(0, 86400)),
    "agent.health.listen": ("health_listen", _host_port),
    "agent.max_response_bytes": ("max_response_bytes", _int(1024, 2**40)),
    "agent.max_job_bytes": ("max_job_bytes", _int(1024, 2**30)),
    "agent.workers": ("workers", _int(1, 64)),
    "agent.journal.path": ("journal_path", _text),
}
PROXY_KEYS = {
    "mid.proxy.use_proxy": _bool,
    "mid.proxy.host": _text,
    "mid.proxy.port": _int(1, 65535),
    "mid.proxy.username": _text,
    "mid.proxy.password": _text,
}
VAULT_KEYS = {
    "address": _text,
    "token": _text,
    "role_id": _text,
    "secret_id": _text,
    "kv_mount": _text,
    "namespace": _text,
    "ca": _text,
}


def _password_type(v: str) -> str:
    """``.wss.password_type``: how a WS-Security password is sent."""
    kind = v.strip().lower() or "text"
    if kind not in ("text", "digest"):
        raise ValueError(f"must be text or digest; got {v!r}")
    return kind


PROFILE_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "port": _int(1, 65535),
    "sni": _sni,
    "wss_password_type": _password_type,
}
SECRET_NAMES = re.compile(r"(password|secret_id|token)$")


def is_secret(name: str) -> bool:
    """Whether a parameter holds a secret (its value is never shown)."""
    return bool(SECRET_NAMES.search(name))


def known_parameter(name: str) -> bool:
    return (
        name in TOP_LEVEL
        or name in PROXY_KEYS
        or (name.startswith(VAULT_PREFIX) and name[len(VAULT_PREFIX) :] in VAULT_KEYS)
        or bool(_PROFILE_RE.match(name))
    )


def apply_env(params: dict[str, Parameter], env: Mapping[str, str]) -> dict[str, Parameter]:
    """``MID_CONFIG_<name>`` overrides parameter ``<name>`` (the name as written).

    Where dots cannot appear in a variable name (systemd's ``Environment=``, some shells), a
    double underscore stands for a dot: ``MID_CONFIG_agent__health__listen``.
    """
    out = dict(params)
    names = [k[len(ENV_PREFIX) :] for k in env if k.startswith(ENV_PREFIX) and k != ENV_PREFIX]
    # the dotted spelling, when both are set, wins: it is applied last
    for name in sorted(names, key=lambda n: "." in n):
        value = env[ENV_PREFIX + name].strip()
        param = name if "." in name else name.replace("__", ".")
        out[param] = Parameter(param, value, None)
    return out


def _convert(p: Parameter, conv: Callable[[str], Any]) -> Any:
    try:
        return conv(p.value)
    except ValueError as exc:
        where = None if p.line is None else p.line
        source = f" (from ${ENV_PREFIX}{p.name})" if p.line is None else ""
        raise ConfigError(f"{exc}{source}", parameter=p.name, line=where) from None


def _path(base: Path, value: str) -> Path:
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~name of no known user, or ~ without a home
        raise ValueError(f"cannot expand ~ in {value!r}: no such user or home directory") from None
    return path if path.is_absolute() else base / path


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
            values[attr] = _convert(p, conv)
        elif not known_parameter(name):
            where = f"line {p.line}" if p.line else f"${ENV_PREFIX}{name}"
            warnings.append(f"unknown parameter {name!r} ({where}) ignored")
    if not values.get("name", "x"):
        raise ConfigError("must not be empty", parameter="name", line=params["name"].line)
    values["proxy"] = _proxy(params)
    values["vault"] = _vault(params, base_dir)
    values["profiles"] = _profiles(params, base_dir)
    return AgentConfig(**values, warnings=tuple(warnings))


def _proxy(params: dict[str, Parameter]) -> ProxyConfig | None:
    got = {k: _convert(params[k], conv) for k, conv in PROXY_KEYS.items() if k in params}
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


def _vault(params: dict[str, Parameter], base: Path) -> VaultConfig:
    got: dict[str, Any] = {}
    for key, conv in VAULT_KEYS.items():
        p = params.get(VAULT_PREFIX + key)
        if p is not None and p.value:
            got[key] = _convert(p, conv)
    if "ca" in got:
        got["ca"] = _convert(params[VAULT_PREFIX + "ca"], lambda v: _path(base, v))
    if got.get("role_id") and not got.get("secret_id"):
        p = params[VAULT_PREFIX + "role_id"]
        raise ConfigError(
            f"AppRole login needs {VAULT_PREFIX}secret_id too", parameter=p.name, line=p.line
        )
    return VaultConfig(**got)


def _profiles(params: dict[str, Parameter], base: Path) -> dict[str, ProfileConfig]:
    raw: dict[str, dict[str, Any]] = {}
    spelled: dict[str, tuple[str, Parameter]] = {}  # casefolded name → first spelling seen
    for name, p in params.items():
        m = _PROFILE_RE.match(name)
        if not m:
            continue
        profile, key = m.group(1), PROFILE_KEYS[m.group(2)]
        _check_spelling(spelled, profile, p)
        value = _convert(p, PROFILE_CONVERTERS.get(key, _text))
        if key in ("path", "key", "truststore") and value:
            value = _convert(p, lambda v: _path(base, v))
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
    sources = [s for s in ("path", "vault_path", "vault_pki") if getattr(cfg, s)]
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
