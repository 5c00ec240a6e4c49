"""``ext.cred.*``: CyberArk's Central Credential Provider, with the MID Server's parameter names
(the profiles that use it are checked in ``config.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config.parameters import CYBERARK_KEYS, Parameter, convert, path_from
from agent.errors import ConfigError


@dataclass(frozen=True)
class CyberArkConfig:
    """CyberArk's Central Credential Provider (``ext.cred.*``, the MID Server's names)."""

    use: bool = False
    endpoint: str | None = None  # https://host/AIMWebService/api/Accounts
    cert_path: Path | None = None  # the agent's own client certificate (PKCS#12)
    cert_password: str | None = field(default=None, repr=False)
    truststore: Path | None = None  # the CCP's CA
    app_id: str = "ServiceNow_MID_Server"
    safe: str | None = None
    folder: str | None = None
    timeout: float = 30.0
    verify_ssl: bool = True
    cache_seconds: float = 300.0  # what CCP returned is fetched again after this long


def cyberark_config(params: dict[str, Parameter], base: Path) -> CyberArkConfig:
    got: dict[str, Any] = {}
    for name, (attr, conv) in CYBERARK_KEYS.items():
        p = params.get(name)
        if p is not None and p.value:
            got[attr] = convert(p, conv)
            if attr in ("cert_path", "truststore"):
                got[attr] = convert(p, lambda v: path_from(base, v))
    config = CyberArkConfig(**got)
    endpoint = params.get("ext.cred.ccp_endpoint")
    if config.endpoint is not None and not config.endpoint.startswith("https://"):
        raise ConfigError(
            f"must be https://host/AIMWebService/api/Accounts; got {config.endpoint!r}",
            parameter="ext.cred.ccp_endpoint",
            line=endpoint.line if endpoint else None,
        )
    return config
