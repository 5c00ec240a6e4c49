"""One-off TLS handshakes to look at a server's certificate (sni-check, error messages)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, replace

from cryptography import x509

from agent.credentials.chains import days_phrase, public_der
from agent.tls.context import certificate_names, is_ip_literal

HANDSHAKE_TIMEOUT = 10.0
ANSWER_BYTES = 4096  # enough for a status line, headers and a short error page
# The TCP connection was made and then dropped: a handshake happened, the server refused it.
_DROPPED = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


@dataclass(frozen=True)
class Handshake:
    sni: str | None
    cert: x509.Certificate | None
    error: str | None
    version: str | None = None
    reached: bool = True  # False: no TCP connection (refused, unroutable, timed out)
    ssl_error: ssl.SSLError | None = None  # what a failed handshake raised, for classifying
    answer: bytes | None = None  # the start of the answer to ``GET /`` (``request_host``)

    @property
    def status_line(self) -> str | None:
        if not self.answer:
            return None
        return self.answer.split(b"\r\n", 1)[0].decode("latin-1")

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
            *([f"  then:      {self.error}"] if self.error else []),
        ]


def pin_of(cert: x509.Certificate) -> str:
    """``sha256:<base64 of SHA-256 of the DER SubjectPublicKeyInfo>`` (ghostunnel's form)."""
    digest = hashlib.sha256(public_der(cert.public_key())).digest()
    return "sha256:" + base64.b64encode(digest).decode()


async def address_of(host: str, port: int, resolve: dict[str, str]) -> str:
    if host.lower() in resolve:
        return resolve[host.lower()]
    if is_ip_literal(host):
        return host.strip("[]")
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return str(infos[0][4][0])


async def handshake(
    addr: str, port: int, sni: str | None, ctx: ssl.SSLContext, *, request_host: str | None = None
) -> Handshake:
    """One handshake; ``sni`` None sends none. With ``request_host``, a ``GET /`` follows and
    the start of the answer is read: under TLS 1.3 a server refuses the client
    certificate only after the client's side of the handshake is done (nginx answers 400)."""
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                addr, port, ssl=ctx, server_hostname=sni or ""
            )
    except ssl.SSLError as exc:
        return Handshake(sni, None, exc.reason or str(exc), ssl_error=exc)
    except _DROPPED as exc:
        return Handshake(sni, None, f"the server dropped the connection ({exc.__class__.__name__})")
    except (OSError, TimeoutError) as exc:
        what = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
        return Handshake(sni, None, what, reached=False)
    obj = writer.get_extra_info("ssl_object")
    der = obj.getpeercert(binary_form=True) if obj else None
    seen = Handshake(sni, x509.load_der_x509_certificate(der) if der else None, None,
                     obj.version() if obj else None)  # fmt: skip
    try:
        if request_host is not None:
            seen = await _first_answer(seen, reader, writer, request_host)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    return seen


async def _first_answer(
    seen: Handshake, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str
) -> Handshake:
    """``seen`` with the error that came instead of an answer, if one came."""
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            await writer.drain()
            answer = await reader.read(ANSWER_BYTES)
            while answer and len(answer) < ANSWER_BYTES and b"\r\n\r\n" not in answer:
                more = await reader.read(ANSWER_BYTES - len(answer))
                if not more:
                    break
                answer += more
    except ssl.SSLError as exc:
        return replace(seen, error=exc.reason or str(exc), ssl_error=exc)
    except _DROPPED as exc:
        return replace(seen, error=f"the server dropped the connection ({exc.__class__.__name__})")
    except TimeoutError:
        return seen  # no alert and no answer: the handshake stands
    return replace(seen, answer=answer)


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


def verified_chain(obj: ssl.SSLObject) -> list[x509.Certificate]:
    """The chain OpenSSL verified for the peer, leaf first (its issuer next), read through the
    ``_ssl`` object's ``get_verified_chain`` (public only from Python 3.13); just the leaf where
    that is missing."""
    inner = getattr(obj, "_sslobj", None)
    get = getattr(inner, "get_verified_chain", None)
    if get is not None:
        try:
            return [x509.load_der_x509_certificate(c.public_bytes(_DER)) for c in get()]
        except (ValueError, TypeError, ssl.SSLError):
            pass
    der = obj.getpeercert(binary_form=True)
    return [x509.load_der_x509_certificate(der)] if der else []


_DER = 2  # _ssl.ENCODING_DER
