"""config.xml writers: raw parameters, the two-profile set against one server, the TLS matrix."""

from __future__ import annotations

from pathlib import Path

from agent.config.config import AgentConfig, load_config
from tests.support.pki import P12_PASSWORD, PKI
from tests.support.servers import ServerPKI

P = "mid.httpclient.protocol"
RESOLVE = "alpha.test:127.0.0.1,beta.test:127.0.0.1,other.test:127.0.0.1"


def write_config(
    directory: Path, params: dict[str, str], secure: dict[str, str] | None = None
) -> Path:
    lines = [f'  <parameter name="{k}" value="{v}"/>' for k, v in params.items()]
    lines += [
        f'  <parameter name="{k}" value="{v}" secure="true"/>' for k, v in (secure or {}).items()
    ]
    path = directory / "config.xml"
    path.write_text("<parameters>\n" + "\n".join(lines) + "\n</parameters>\n")
    return path


def profile_config(directory: Path, pki: PKI, port: int, **extra: str) -> Path:
    """A config.xml with profile ``partner`` (PKCS#12, client-one) and ``two`` (PEM, client-two)."""
    (directory / "one.p12").write_bytes(pki.client_one.pkcs12(P12_PASSWORD))
    pki.client_two.write_pem(directory, "two")
    ca = pki.write_ca(directory)
    params = {
        "name": "test-agent",
        "url": f"sqlite:///{directory / 'queue.db'}",
        "mid.poll.time": "0.2",
        "agent.resolve": "alpha.test:127.0.0.1,beta.test:127.0.0.1",
        f"{P}.partner.path": "one.p12",
        f"{P}.partner.port": str(port),
        f"{P}.partner.truststore": str(ca),
        f"{P}.two.path": "two.crt",
        f"{P}.two.key": "two.key",
        f"{P}.two.truststore": str(ca),
        **extra,
    }
    return write_config(directory, params, {f"{P}.partner.password": P12_PASSWORD})


def loaded_profile_config(directory: Path, pki: PKI, port: int, **extra: str) -> AgentConfig:
    """``profile_config`` read back as the daemon would (no environment overrides)."""
    return load_config(profile_config(directory, pki, port, **extra), env={})


def tls_params(pki: ServerPKI) -> dict[str, str]:
    """Profiles ``one`` and ``two`` (trusted clients), ``stranger`` (an untrusted client) and
    ``foreign`` (client-one, but trusting only a CA that did not issue the servers)."""
    params = {"agent.resolve": RESOLVE}
    for name, files, trust in (
        ("one", pki.client_one, pki.ca_pem),
        ("two", pki.client_two, pki.ca_pem),
        ("stranger", pki.stranger, pki.ca_pem),
        ("foreign", pki.client_one, pki.stranger_ca_pem),
    ):
        params |= {
            f"{P}.{name}.path": str(files.crt),
            f"{P}.{name}.key": str(files.key),
            f"{P}.{name}.truststore": str(trust),
        }
    return params


def tls_config(directory: Path, pki: ServerPKI, **extra: str) -> AgentConfig:
    return load_config(write_config(directory, tls_params(pki) | extra), env={})
