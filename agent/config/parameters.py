"""config.xml's parameters: the XML reader, the table of known names with their converters, and
the ``MID_CONFIG_<name>`` environment overrides.

A converter turns one value's text into its typed value or raises ``ValueError`` saying what is
wanted; ``convert`` adds the parameter's name and line (or environment variable) to that.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lxml import etree

from agent.config.networks import network_of
from agent.errors import ConfigError
from agent.jobs.names import SNI, sni_value

log = logging.getLogger("agent.config")

ENV_PREFIX = "MID_CONFIG_"
PROFILE_PREFIX = "mid.httpclient.protocol."
VAULT_PREFIX = "ext.cred.hashicorp.vault."
LOG_LEVELS = ("debug", "info", "warn", "warning", "error")
LOG_FORMATS = ("auto", "text", "json")
PROFILE_KEYS = {
    "path": "path",
    "password": "password",
    "key_password": "key_password",
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
    "pin": "pins",
    "cyberark.password_id": "cyberark_password_id",
    "cyberark.keystore_id": "cyberark_keystore_id",
    "wss.username": "wss_username",
    "wss.password": "wss_password",
    "wss.password_type": "wss_password_type",
    "max_concurrency": "max_concurrency",
    "rate": "rate",
    "burst": "burst",
    "revocation": "revocation",
    "crl": "crls",
}
KEYSTORE_TYPES = ("jks", "jceks", "pkcs12", "p12", "pfx", "pem", "der")
PROFILE_RE = re.compile(
    r"^mid\.httpclient\.protocol\.([A-Za-z0-9_-]+)\.("
    + "|".join(map(re.escape, PROFILE_KEYS))
    + ")$"
)


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


def as_text(v: str) -> str:
    """A value taken as written."""
    return v


def _url(v: str) -> str:
    if not re.match(r"^(sqlite|postgres|postgresql|https)://", v):
        raise ValueError(f"must be sqlite:///path, postgresql://... or https://instance, got {v!r}")
    return v


# name -> (AgentConfig attribute, converter)
TOP_LEVEL: dict[str, tuple[str, Callable[[str], Any]]] = {
    "name": ("name", as_text),
    "url": ("url", _url),
    "mid.instance.username": ("instance_username", as_text),
    "mid.instance.password": ("instance_password", as_text),
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
    "agent.http.max_idle_connections": ("max_idle_connections", _int(0, 1_000_000)),
    "agent.http.idle_seconds": ("idle_seconds", _float(0.1, 86400)),
    "agent.inline.max_identities": ("max_inline_identities", _int(1, 1_000_000)),
    "agent.journal.path": ("journal_path", as_text),
    "agent.target.max_concurrency": ("target_max_concurrency", _int(0, 1_000_000)),
    "agent.target.rate": ("target_rate", _float(0, 1_000_000)),
    "agent.target.burst": ("target_burst", _int(0, 1_000_000)),
    "agent.retry.base": ("retry_base", _float(0.001, 3600)),
    "agent.retry.max_delay": ("retry_max_delay", _float(0.001, 86400)),
    "agent.breaker.failures": ("breaker_failures", _int(0, 1000)),
    "agent.breaker.open_seconds": ("breaker_open_seconds", _float(0.01, 86400)),
    "agent.breaker.max_open_seconds": ("breaker_max_open_seconds", _float(0.01, 86400)),
}
# CyberArk CCP, with the MID Server's names: parameter -> (CyberArkConfig attribute, converter)
CYBERARK_KEYS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "ext.cred.use_cyberark": ("use", _bool),
    "ext.cred.ccp_endpoint": ("endpoint", as_text),
    "ext.cred.cyberark.cert_path": ("cert_path", as_text),
    "ext.cred.cyberark.cert_password": ("cert_password", as_text),
    "ext.cred.cyberark.truststore": ("truststore", as_text),
    "ext.cred.app_id": ("app_id", as_text),
    "ext.cred.safe_name": ("safe", as_text),
    "ext.cred.safe_folder": ("folder", as_text),
    "ext.cred.timeout": ("timeout", _float(0.1, 600)),
    "ext.cred.verify_ssl": ("verify_ssl", _bool),
    "ext.cred.cyberark.cache_seconds": ("cache_seconds", _float(1, 86400)),
}
PROXY_KEYS = {
    "mid.proxy.use_proxy": _bool,
    "mid.proxy.host": as_text,
    "mid.proxy.port": _int(1, 65535),
    "mid.proxy.username": as_text,
    "mid.proxy.password": as_text,
}
VAULT_KEYS = {  # the parameter after ext.cred.hashicorp.vault. → VaultConfig's field
    "address": "address",
    "token": "token",
    "role_id": "role_id",
    "secret_id": "secret_id",
    "kv_mount": "kv_mount",
    "namespace": "namespace",
    "ca": "ca",
    "auth_method": "auth_method",
    "role": "role",
    "auth_mount": "auth_mount",
    "jwt_path": "jwt_path",
    "client_cert": "client_cert",
    "client_key": "client_key",
    "client_cert.password": "client_cert_password",
    "kv_refresh_seconds": "kv_refresh_seconds",
}
VAULT_NUMBERS: dict[str, Callable[[str], Any]] = {"kv_refresh_seconds": _float(0, 86400)}


def _password_type(v: str) -> str:
    """``.wss.password_type``: how a WS-Security password is sent."""
    kind = v.strip().lower() or "text"
    if kind not in ("text", "digest"):
        raise ValueError(f"must be text or digest; got {v!r}")
    return kind


REVOCATION_MODES = ("off", "soft", "hard")  # no check; no answer: go on; no answer: fail


def _revocation(v: str) -> str:
    """``.revocation``: off, soft (no answer: go on) or hard (no answer: fail)."""
    mode = v.strip().lower()
    if mode not in REVOCATION_MODES:
        raise ValueError(f"must be off, soft or hard, got {v!r}")
    return mode


def _pins(v: str) -> tuple[str, ...]:
    """``.pin``: comma-separated ``sha256:<base64>`` of a server's SubjectPublicKeyInfo."""
    out = []
    for item in (part.strip() for part in v.split(",")):
        if not item:
            continue
        algorithm, _, encoded = item.partition(":")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except ValueError:
            raw = b""
        if algorithm.lower() != "sha256" or len(raw) != 32:
            raise ValueError(
                f"must be sha256:<base64 of 32 bytes>, comma-separated; got {item!r} "
                "(agent sni-check prints the server's pin)"
            )
        out.append("sha256:" + base64.b64encode(raw).decode())
    return tuple(out)


PROFILE_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "pins": _pins,
    "port": _int(1, 65535),
    "sni": _sni,
    "wss_password_type": _password_type,
    "max_concurrency": _int(0, 1_000_000),
    "rate": _float(0, 1_000_000),
    "burst": _int(0, 1_000_000),
    "revocation": _revocation,
    "crls": _list,
}
SECRET_NAMES = re.compile(r"(password|secret_id|token)$")


def is_secret(name: str) -> bool:
    """Whether a parameter holds a secret (its value is never shown)."""
    return bool(SECRET_NAMES.search(name))


def known_parameter(name: str) -> bool:
    return (
        name in TOP_LEVEL
        or name in PROXY_KEYS
        or name in CYBERARK_KEYS
        or (name.startswith(VAULT_PREFIX) and name[len(VAULT_PREFIX) :] in VAULT_KEYS)
        or bool(PROFILE_RE.match(name))
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


def convert(p: Parameter, conv: Callable[[str], Any]) -> Any:
    try:
        return conv(p.value)
    except ValueError as exc:
        where = None if p.line is None else p.line
        source = f" (from ${ENV_PREFIX}{p.name})" if p.line is None else ""
        raise ConfigError(f"{exc}{source}", parameter=p.name, line=where) from None


def path_from(base: Path, value: str) -> Path:
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~name of no known user, or ~ without a home
        raise ValueError(f"cannot expand ~ in {value!r}: no such user or home directory") from None
    return path if path.is_absolute() else base / path
