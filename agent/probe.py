"""One-off TLS handshakes to look at a server's certificate (sni-check, error messages)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509

from .keystores.chains import days_phrase
from .tls import certificate_names, is_ip_literal

HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Handshake:
    sni: str | None
    cert: x509.Certificate | None
    error: str | None
    version: str | None = None

    def describe(self) -> list[str]:
        label = f"with SNI {self.sni!r}" if self.sni else "without SNI"
        if self.cert is None:
            return [f"{label}: handshake failed: {self.error}"]
        c = self.cert
        days = days_phrase(c.not_valid_after_utc, dt.datetime.now(dt.UTC))
        return [
            f"{label}: {self.version}, server certificate:",
            f"  subject:   {c.subject.rfc4514_string()}",
            f"  names:     {', '.join(certificate_names(c)) or '(no subjectAltName)'}",
            f"  issuer:    {c.issuer.rfc4514_string()}",
            f"  not after: {c.not_valid_after_utc:%Y-%m-%d} ({days})",
        ]


async def address_of(host: str, port: int, resolve: dict[str, str]) -> str:
    if host.lower() in resolve:
        return resolve[host.lower()]
    if is_ip_literal(host):
        return host.strip("[]")
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return str(infos[0][4][0])


async def handshake(addr: str, port: int, sni: str | None, ctx: ssl.SSLContext) -> Handshake:
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            _, writer = await asyncio.open_connection(
                addr, port, ssl=ctx, server_hostname=sni or ""
            )
    except ssl.SSLError as exc:
        return Handshake(sni, None, exc.reason or str(exc))
    except (OSError, TimeoutError) as exc:
        return Handshake(sni, None, f"{exc.__class__.__name__}: {exc}")
    obj = writer.get_extra_info("ssl_object")
    der = obj.getpeercert(binary_form=True) if obj else None
    version = obj.version() if obj else None
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return Handshake(sni, x509.load_der_x509_certificate(der) if der else None, None, version)


async def peer_names(
    host: str, port: int, sni: str | None, resolve: Mapping[str, str]
) -> str | None:
    """The names on the certificate a server shows (no client certificate presented)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        addr = await address_of(host, port, dict(resolve))
    except OSError:
        return None
    seen = await handshake(addr, port, sni, ctx)
    return ", ".join(certificate_names(seen.cert)) if seen.cert else None
