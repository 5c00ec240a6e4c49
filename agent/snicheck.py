"""``agent sni-check URL``: handshake with SNI and without, compare, and say what to set.

This automates the ``openssl s_client -servername`` comparison users used to run by hand. Both
handshakes present the profile's client certificate (servers that require one would otherwise
refuse both) and accept any server certificate, so the certificate each way can be shown; trust
and name checks are then reported separately.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes

from .config import AgentConfig, ProfileConfig
from .credentials import Credentials, Identity
from .errors import JobError, UnknownProfileError
from .keystores.memory import load_client_material
from .probe import Handshake, address_of, handshake
from .tls import is_ip_literal, name_matches


def _inspection_context(identity: Identity) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if identity.material.client is not None:
        load_client_material(ctx, identity.material.client)
    return ctx


def diagnose(host: str, with_sni: Handshake, without: Handshake, profile: str | None) -> list[str]:
    setting = f"mid.httpclient.protocol.{profile}.sni" if profile else "the job's sni field"
    if is_ip_literal(host):
        return ["the URL host is an IP address: no SNI is ever sent to it"]
    if with_sni.cert is None and without.cert is None:
        return ["both handshakes failed: this is not an SNI problem (see the errors above)"]
    if with_sni.cert is None:
        return [
            f"the server refuses SNI {host!r} but accepts no SNI: set {setting}=false, or "
            f"{setting}=<the name it expects>"
        ]
    matches = name_matches(with_sni.cert, host)
    advice = [] if matches else [f"warning: the certificate sent for SNI {host!r} does not name it"]
    if without.cert is None:
        return advice + [
            "SNI is REQUIRED: without it the handshake fails. Keep "
            f"glide.outbound.tls_sni.enabled=true (the default) or set {setting}=true"
        ]
    if without.cert.fingerprint(_sha256()) != with_sni.cert.fingerprint(_sha256()):
        return advice + [
            "SNI is REQUIRED: without it the server hands out a different certificate "
            f"({without.cert.subject.rfc4514_string()}). Keep glide.outbound.tls_sni.enabled=true "
            f"or set {setting}=true"
        ]
    return advice + ["SNI is not needed: the server sends the same certificate either way"]


def _sha256() -> hashes.HashAlgorithm:
    return hashes.SHA256()


async def _identity(config: AgentConfig, profile: str | None, scheme: str) -> Identity:
    name = profile or (scheme if scheme != "https" else None)
    credentials = Credentials(config)
    if name is None:
        return credentials.default_identity()
    cfg: ProfileConfig | None = config.profiles.get(name)
    if cfg is None:
        raise UnknownProfileError(name, list(config.profiles))
    return await credentials.for_profile(cfg)


async def run_sni_check(config: AgentConfig, url: str, *, profile: str | None) -> int:
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if not parts.hostname:
        raise JobError("url", f"cannot find a host in {url!r}")
    identity = await _identity(config, profile, parts.scheme.lower())
    host = parts.hostname
    port = parts.port or (443 if parts.scheme.lower() == "https" else identity.port)
    try:
        addr = await address_of(host, port, dict(config.resolve))
    except OSError as exc:
        print(f"cannot resolve {host}: {exc}")
        return 0
    ctx = _inspection_context(identity)
    with_sni = await handshake(addr, port, host, ctx)
    without = await handshake(addr, port, None, ctx)
    via = f", profile {identity.profile}" if identity.profile else ""
    print(f"sni-check {host}:{port} (address {addr}){via}")
    for hs in (with_sni, without):
        print("\n".join(hs.describe()))
    print("diagnosis:")
    for line in diagnose(host, with_sni, without, identity.profile):
        print(f"  {line}")
    return 0
