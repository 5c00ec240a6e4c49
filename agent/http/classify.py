"""Translate client-side failures (aiohttp, ssl, OS) into the contract's error kinds.

Pure logic: given the exception, what was attempted (host, SNI sent, profile) and whether the
answer had started, say which ``error.kind`` it is and what the user should do about it.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import aiohttp
from aiohttp.http_exceptions import (
    ContentLengthError,
    HttpProcessingError,
    LineTooLong,
    TransferEncodingError,
)

from agent.errors import CallError, ErrorKind, JobError, TLSError
from agent.http.transport import MAX_FIELD, MAX_HEADERS, MAX_STATUS_LINE
from agent.tls.context import is_ip_literal

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
# X509_V_ERR_HOSTNAME_MISMATCH, _EMAIL_MISMATCH, _IP_ADDRESS_MISMATCH: the certificate is trusted
# but not for what was asked (an address in the URL is checked as an IP address SAN).
NAME_MISMATCHES = {HOSTNAME_MISMATCH, 63, 64}
NOT_RETRIED = "not retried: the request reached the server and may have had effects"


@dataclass(frozen=True, slots=True)
class Attempt:
    """What the failed attempt was: for the message's advice (worked out when a message needs
    it: a route keeps its attempt for as long as its identity is in use)."""

    host: str
    port: int
    sni: str | None
    profile: str | None
    client_subject: str | None
    inline: bool = False  # the identity is a job's inline record
    trusted: bool | None = None  # a trust store was given (None: not known here)

    @property
    def trust(self) -> str:
        """Where the trusted CAs came from, named as the user sets it."""
        if self.trusted is None:
            return "the profile's truststore (mid.httpclient.protocol.<profile>.truststore)"
        return trust_source(self.profile, self.inline, trusted=self.trusted)

    @property
    def cert_hint(self) -> str:
        """What to check when the server's answer is about the client certificate."""
        return client_cert_hint(self.profile, self.inline, self.client_subject)


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
    if getattr(err, "verify_code", None) in NAME_MISMATCHES:
        detail = err.verify_message or str(err)
        if "certificate names" in str(err):  # our own check names them
            detail = str(err.args[1] if len(err.args) > 1 else err)
        return TLSError(
            ErrorKind.HOSTNAME_MISMATCH,
            f"the server's certificate is not valid for {name!r}: {detail}. {_name_advice(a)}",
        )
    return TLSError(
        ErrorKind.CERTIFICATE_VERIFY,
        f"the server's certificate for {name!r} is not trusted: {err.verify_message} "
        f"(the job trusts {a.trust}: add the certificate's issuing CA there)",
    )


def _name_advice(a: Attempt) -> str:
    if a.sni is None and is_ip_literal(a.host):
        return (
            "The endpoint is an address: the certificate must list it as an IP address, or call "
            "the name it is for (agent.resolve can map that name to this address)"
        )
    if a.sni is None:
        return (
            "Check the endpoint host or the SNI name (a server that got no SNI or the wrong "
            f"one may hand out another certificate: {_sni_advice(a)})"
        )
    return "Check the endpoint host or the SNI name sent"


def classify_ssl(err: ssl.SSLError, a: Attempt) -> TLSError:
    if isinstance(err, ssl.SSLCertVerificationError):
        return classify_verify(err, a)
    reason = (getattr(err, "reason", None) or "").upper()
    if reason in SNI_REASONS or (a.sni is None and reason in HANDSHAKE_FAILURE | {""}):
        return TLSError(
            ErrorKind.SNI_REQUIRED,
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
            ErrorKind.CLIENT_CERTIFICATE_REJECTED,
            f"the server did not accept the client certificate {who} ({reason}); check that "
            "the partner trusts its issuer and that the profile presents the right alias",
        )
    return TLSError(
        ErrorKind.TLS_HANDSHAKE, f"TLS handshake with {a.host}:{a.port} failed: {reason or err}"
    )


def classify(exc: BaseException, a: Attempt, answered: bool = False) -> CallError:
    """The contract's error for a call that got no (complete, valid) answer. ``answered``: a
    byte of the answer had arrived before the failure."""
    if isinstance(exc, CallError):
        return exc
    head = _bad_answer(exc, a)
    if head is not None:
        return head
    if answered:
        return _cut_off(exc, a)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, aiohttp.ServerTimeoutError)):
        return CallError(
            ErrorKind.TIMEOUT, f"no answer from {a.host}:{a.port} within the job's timeout"
        )
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return CallError(
            ErrorKind.DNS, f"cannot resolve {a.host!r}: {exc.os_error.strerror or exc}"
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        err = exc.certificate_error
        if isinstance(err, ssl.SSLCertVerificationError):
            return classify_verify(err, a)
        return TLSError(ErrorKind.CERTIFICATE_VERIFY, f"certificate check failed: {err}")
    found = _ssl_error(exc)
    if found is not None:
        return classify_ssl(found, a)
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return CallError(ErrorKind.CONNECT, f"cannot reach the proxy: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorError) and _reset_in_handshake(exc):
        return _reset_during_handshake(a)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return CallError(
            ErrorKind.CONNECT, f"cannot connect to {a.host}:{a.port}: {exc.strerror or exc}"
        )
    if isinstance(exc, (aiohttp.ServerDisconnectedError, ConnectionResetError)):
        return _disconnected(a)
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        hint = (
            " (check mid.proxy.username and mid.proxy.password)" if exc.status in (401, 407) else ""
        )
        return CallError(
            ErrorKind.CONNECT, f"the proxy refused the tunnel: {exc.status} {exc.message}{hint}"
        )
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return CallError(ErrorKind.CONNECT, f"connection to {a.host}:{a.port} failed: {exc}")
    raise exc


def _bad_answer(exc: BaseException, a: Attempt) -> CallError | None:
    """An answer aiohttp's parser refused: a head over the bounds, or not valid HTTP."""
    cur: BaseException | None = exc
    for _ in range(4):  # ClientResponseError / ClientPayloadError <- HttpProcessingError <- ...
        if cur is None:
            return None
        if isinstance(cur, HttpProcessingError) and not isinstance(cur.__cause__, Exception):
            break  # the innermost one says what the parser met
        cur = cur.__cause__
    if not isinstance(cur, HttpProcessingError):
        return None
    where = f"{a.host}:{a.port}"
    if isinstance(cur, (ContentLengthError, TransferEncodingError)):  # the body was cut short
        return _cut_off(cur, a)
    if isinstance(cur, LineTooLong) or "too many headers" in cur.message.lower():
        return CallError(
            ErrorKind.RESPONSE_TOO_LARGE,
            f"{where} answered with a head over the agent's bounds ({_parser_said(cur)}; "
            f"at most a {MAX_STATUS_LINE}-byte status line, {MAX_HEADERS} headers, "
            f"{MAX_FIELD} bytes per header name or value); {NOT_RETRIED}",
        )
    return CallError(
        ErrorKind.BAD_RESPONSE,
        f"{where} sent an answer that is not valid HTTP ({_parser_said(cur)}); " + NOT_RETRIED,
    )


def _parser_said(err: HttpProcessingError) -> str:
    """What aiohttp's parser objected to, without the bytes it quotes (they are the server's,
    and may be a cookie)."""
    if isinstance(err, LineTooLong):
        limit = err.args[1] if len(err.args) > 1 else "?"
        what = "a status line" if limit == MAX_STATUS_LINE else "a header name or value"
        return f"{what} over {limit} bytes"
    lines = err.message.strip().splitlines()
    return lines[0].split(":", 1)[0].strip() if lines else err.__class__.__name__


def _cut_off(exc: BaseException, a: Attempt) -> CallError:
    """A failure after a byte of the answer arrived."""
    where = f"{a.host}:{a.port}"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return CallError(
            ErrorKind.TIMEOUT,
            f"{where} started answering but did not finish within the job's timeout; "
            + NOT_RETRIED,
        )
    return CallError(
        ErrorKind.BAD_RESPONSE,
        f"{where} ended the connection in the middle of its answer ({_cause(exc)}); " + NOT_RETRIED,
    )


def _cause(exc: BaseException) -> str:
    if isinstance(exc, HttpProcessingError):
        return _parser_said(exc).rstrip(".")
    inner = exc.__cause__ if isinstance(exc, aiohttp.ClientPayloadError) else None
    inner = inner or exc
    if isinstance(inner, aiohttp.ServerDisconnectedError):
        return "the server closed it"
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror
    return inner.__class__.__name__


def request_error(exc: BaseException) -> JobError | None:
    """A request aiohttp refused to build from the job (before anything was sent), or None."""
    if isinstance(exc, aiohttp.InvalidURL):
        return JobError("endpoint", f"not a usable URL: {exc}")
    if isinstance(exc, aiohttp.ClientError) or not isinstance(exc, (ValueError, TypeError)):
        return None
    text = str(exc)
    lowered = text.lower()
    fallback = "body" if isinstance(exc, TypeError) else "headers"
    field = next((f for word, f in _REQUEST_FIELDS if word in lowered), fallback)
    return JobError(field, f"the request cannot be sent: {text}")


# Words of aiohttp's, yarl's and ssl's messages → the job field the problem is in.
_REQUEST_FIELDS = (
    ("header", "headers"),
    ("server_hostname", "sni"),
    ("method", "method"),
    ("url", "endpoint"),
    ("host", "endpoint"),
    ("port", "endpoint"),
    ("allowed", "body"),  # "Only io.IOBase, multidict and (name, file) pairs allowed"
)


def _reset_in_handshake(exc: aiohttp.ClientConnectorError) -> bool:
    """The TCP connection was made, then dropped before TLS finished (no alert was read)."""
    dropped = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
    return exc.ssl is not False and isinstance(exc.os_error, dropped)


def _reset_during_handshake(a: Attempt) -> CallError:
    if a.sni is None:
        return TLSError(
            ErrorKind.SNI_REQUIRED,
            f"{a.host}:{a.port} dropped the connection during the TLS handshake without SNI: "
            f"it most likely requires SNI; {_sni_advice(a)}",
        )
    return TLSError(
        ErrorKind.TLS_HANDSHAKE,
        f"{a.host}:{a.port} dropped the connection during the TLS handshake (SNI {a.sni!r}); "
        "the server may not accept the client certificate or the TLS version",
    )


def _disconnected(a: Attempt) -> CallError:
    return CallError(
        ErrorKind.CONNECT,
        f"{a.host}:{a.port} closed the connection without answering"
        + (
            " (servers that require SNI or a client certificate sometimes do this: "
            + _sni_advice(a)
            + ")"
            if a.sni is None
            else ""
        ),
    )


def trust_source(profile: str | None, inline: bool, *, trusted: bool) -> str:
    """Where a job's trusted CAs come from (``trusted``: a trust store was given), named as the
    user sets it, for a certificate_verify message."""
    if profile is not None:
        param = f"mid.httpclient.protocol.{profile}.truststore"
        return param if trusted else f"the system CAs ({param} is not set)"
    if inline:
        if trusted:
            return "the job's inline_profile.truststore_pem"
        return "the system CAs (the job's inline_profile has no truststore_pem)"
    return (
        "the system CAs (the job names no protocol_profile: name one whose "
        "mid.httpclient.protocol.<profile>.truststore holds the CA, or give an inline_profile "
        "with truststore_pem)"
    )


def client_cert_hint(profile: str | None, inline: bool, subject: str | None) -> str:
    """What to check when the server's answer is about the client certificate."""
    if profile is not None:
        keystore = f"mid.httpclient.protocol.{profile}.path"
        if subject is None:
            return f"the agent sent none: profile {profile} has no keystore ({keystore} is not set)"
        return (
            f"it did not accept {subject}; check the profile's keystore ({keystore}) and that "
            "the partner trusts its issuer"
        )
    if inline:
        return (
            f"it did not accept {subject}; check the job's inline_profile.keystore and that the "
            "partner trusts its issuer"
        )
    return (
        "the agent sent none: the job names no protocol_profile; name one with a keystore "
        "(mid.httpclient.protocol.<profile>.path) or give an inline_profile"
    )
