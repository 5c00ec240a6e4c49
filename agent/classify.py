"""Translate client-side failures (aiohttp, ssl, OS) into the contract's error kinds.

Pure logic: given the exception and what was attempted (host, SNI sent, profile), say which
``error.kind`` it is and what the user should do about it.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import aiohttp

from .errors import CallError, TLSError

# OpenSSL reason codes (as in ssl.SSLError.reason) grouped by what they mean for the user.
SNI_REASONS = {"TLSV1_UNRECOGNIZED_NAME", "TLSV1_ALERT_UNRECOGNIZED_NAME"}
CLIENT_CERT_REASONS = {
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "TLSV1_ALERT_ACCESS_DENIED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
}
HANDSHAKE_FAILURE = {"SSLV3_ALERT_HANDSHAKE_FAILURE", "TLSV1_ALERT_INTERNAL_ERROR"}
HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH


@dataclass(frozen=True)
class Attempt:
    """What the failed attempt was: for the message's advice."""

    host: str
    port: int
    sni: str | None
    profile: str | None
    client_subject: str | None


def _sni_advice(a: Attempt) -> str:
    where = f"mid.httpclient.protocol.{a.profile}.sni" if a.profile else "the job's sni field"
    return f"enable glide.outbound.tls_sni.enabled or set {where}"


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        # aiohttp's ClientConnectorSSLError is an SSLError too, but carries the real one inside.
        if isinstance(cur, ssl.SSLError) and not isinstance(cur, aiohttp.ClientError):
            return cur
        inner = getattr(cur, "certificate_error", None) or getattr(cur, "os_error", None)
        cur = inner if isinstance(inner, BaseException) else (cur.__cause__ or cur.__context__)
    return None


def classify_verify(err: ssl.SSLCertVerificationError, a: Attempt) -> TLSError:
    name = a.sni or a.host
    if getattr(err, "verify_code", None) == HOSTNAME_MISMATCH:
        detail = err.verify_message or str(err)
        if "certificate names" in str(err):  # our own check names them
            detail = str(err.args[1] if len(err.args) > 1 else err)
        return TLSError(
            "hostname_mismatch",
            f"the server's certificate is not valid for {name!r}: {detail}. "
            "Check the endpoint host or the SNI name (a server that got no SNI or the wrong "
            f"one may hand out another certificate: {_sni_advice(a)})"
            if a.sni is None
            else f"the server's certificate is not valid for {name!r}: {detail}",
        )
    return TLSError(
        "certificate_verify",
        f"the server's certificate for {name!r} is not trusted: {err.verify_message} "
        "(add its issuing CA to the profile's truststore, "
        "mid.httpclient.protocol.<profile>.truststore)",
    )


def classify_ssl(err: ssl.SSLError, a: Attempt) -> TLSError:
    if isinstance(err, ssl.SSLCertVerificationError):
        return classify_verify(err, a)
    reason = (getattr(err, "reason", None) or "").upper()
    if reason in SNI_REASONS or (a.sni is None and reason in HANDSHAKE_FAILURE | {""}):
        return TLSError(
            "sni_required",
            f"the server at {a.host}:{a.port} refused the handshake "
            f"({reason or err.__class__.__name__})"
            + (
                ": it requires SNI, but none was sent; "
                if a.sni is None
                else f" for SNI {a.sni!r}; "
            )
            + _sni_advice(a),
        )
    if reason in CLIENT_CERT_REASONS:
        who = a.client_subject or "none (no keystore in this profile)"
        return TLSError(
            "client_certificate_rejected",
            f"the server did not accept the client certificate {who} ({reason}); check that "
            "the partner trusts its issuer and that the profile presents the right alias",
        )
    return TLSError(
        "tls_handshake", f"TLS handshake with {a.host}:{a.port} failed: {reason or err}"
    )


def classify(exc: BaseException, a: Attempt) -> CallError:
    """The contract's error for a call that got no answer."""
    if isinstance(exc, CallError):
        return exc
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, aiohttp.ServerTimeoutError)):
        return CallError("timeout", f"no answer from {a.host}:{a.port} within the job's timeout")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return CallError("dns", f"cannot resolve {a.host!r}: {exc.os_error.strerror or exc}")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        err = exc.certificate_error
        if isinstance(err, ssl.SSLCertVerificationError):
            return classify_verify(err, a)
        return TLSError("certificate_verify", f"certificate check failed: {err}")
    found = _ssl_error(exc)
    if found is not None:
        return classify_ssl(found, a)
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return CallError("connect", f"cannot reach the proxy: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorError) and _reset_in_handshake(exc):
        return _reset_during_handshake(a)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return CallError("connect", f"cannot connect to {a.host}:{a.port}: {exc.strerror or exc}")
    if isinstance(exc, (aiohttp.ServerDisconnectedError, ConnectionResetError)):
        return _disconnected(a)
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        hint = (
            " (check mid.proxy.username and mid.proxy.password)" if exc.status in (401, 407) else ""
        )
        return CallError(
            "connect", f"the proxy refused the tunnel: {exc.status} {exc.message}{hint}"
        )
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return CallError("connect", f"connection to {a.host}:{a.port} failed: {exc}")
    raise exc


def _reset_in_handshake(exc: aiohttp.ClientConnectorError) -> bool:
    """The TCP connection was made, then dropped before TLS finished (no alert was read)."""
    dropped = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
    return exc.ssl is not False and isinstance(exc.os_error, dropped)


def _reset_during_handshake(a: Attempt) -> CallError:
    if a.sni is None:
        return TLSError(
            "sni_required",
            f"{a.host}:{a.port} dropped the connection during the TLS handshake without SNI: "
            f"it most likely requires SNI; {_sni_advice(a)}",
        )
    return TLSError(
        "tls_handshake",
        f"{a.host}:{a.port} dropped the connection during the TLS handshake (SNI {a.sni!r}); "
        "the server may not accept the client certificate or the TLS version",
    )


def _disconnected(a: Attempt) -> CallError:
    return CallError(
        "connect",
        f"{a.host}:{a.port} closed the connection without answering"
        + (
            " (servers that require SNI or a client certificate sometimes do this: "
            + _sni_advice(a)
            + ")"
            if a.sni is None
            else ""
        ),
    )
