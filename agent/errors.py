"""The agent's errors, one tree. Those that end a job carry its result's ``error.kind`` (an
``ErrorKind``, which also says whether a failed attempt is retried); the others have none.

::

    AgentError (never raised itself)
    ├── ConfigError            config.xml cannot be used          (commands exit 2)
    ├── QueueError             the job queue is unreachable
    ├── ServiceError           the daemon cannot run as asked now (exit 1)
    ├── JobError               a job is malformed                 kind: invalid_job
    │   └── UnknownProfileError  names a profile config.xml lacks   kind: unknown_profile
    ├── KeystoreError          keystore/truststore unusable       kind: keystore
    ├── VaultError             the vault refused or is down       kind: vault
    ├── CyberArkError          CyberArk CCP refused or is down    kind: cyberark
    └── CallError              no answer came from the endpoint   kind: one of CALL_KINDS
        ├── DestinationDenied                                     kind: destination_denied
        ├── TLSError           handshake failed                   kind: tls_handshake, sni_required,
        │                                                               certificate_verify,
        │                                                               hostname_mismatch,
        │                                                               client_certificate_rejected,
        │                                                               certificate_pin
        └── (plain CallError)                               kind: dns, connect, timeout,
                                                              response_too_large, bad_response,
                                                              cancelled

``response_too_large``: the answer's body or head (status line, headers) is over a bound.
``bad_response``: the answer started but is not valid HTTP, or the connection ended or failed
in the middle of it. Neither is retried, nor is any failure once a byte of the answer arrived
(the request reached the server and may have had effects).

Messages say what to do and never carry a password, token or key bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import ClassVar


class ErrorKind(enum.StrEnum):
    """A result's ``error.kind``: why no complete, valid answer came. A StrEnum: the JSON and
    every comparison with the contract's strings see the plain value."""

    INVALID_JOB = "invalid_job"
    UNKNOWN_PROFILE = "unknown_profile"
    KEYSTORE = "keystore"
    VAULT = "vault"
    CYBERARK = "cyberark"
    DESTINATION_DENIED = "destination_denied"
    DNS = "dns"
    CONNECT = "connect"
    TLS_HANDSHAKE = "tls_handshake"
    SNI_REQUIRED = "sni_required"
    CERTIFICATE_VERIFY = "certificate_verify"
    HOSTNAME_MISMATCH = "hostname_mismatch"
    CLIENT_CERTIFICATE_REJECTED = "client_certificate_rejected"
    CERTIFICATE_PIN = "certificate_pin"
    CERTIFICATE_REVOKED = "certificate_revoked"
    REVOCATION_UNKNOWN = "revocation_unknown"
    TIMEOUT = "timeout"
    RESPONSE_TOO_LARGE = "response_too_large"
    BAD_RESPONSE = "bad_response"
    CANCELLED = "cancelled"

    @property
    def retryable(self) -> bool:
        """Whether a failed attempt of this kind may be tried again: only when the failure came
        before the request could have reached the partner (and, the caller checks, before any
        byte of an answer arrived)."""
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {ErrorKind.DNS, ErrorKind.CONNECT, ErrorKind.TLS_HANDSHAKE, ErrorKind.TIMEOUT}
)
# The kinds a call to a partner can end with (``CallError``).
CALL_KINDS = frozenset(
    {
        ErrorKind.DESTINATION_DENIED,
        ErrorKind.DNS,
        ErrorKind.CONNECT,
        ErrorKind.TLS_HANDSHAKE,
        ErrorKind.SNI_REQUIRED,
        ErrorKind.CERTIFICATE_VERIFY,
        ErrorKind.HOSTNAME_MISMATCH,
        ErrorKind.CLIENT_CERTIFICATE_REJECTED,
        ErrorKind.CERTIFICATE_PIN,
        ErrorKind.CERTIFICATE_REVOKED,
        ErrorKind.REVOCATION_UNKNOWN,
        ErrorKind.TIMEOUT,
        ErrorKind.RESPONSE_TOO_LARGE,
        ErrorKind.BAD_RESPONSE,
        ErrorKind.CANCELLED,
    }
)
TLS_KINDS = frozenset(
    {
        ErrorKind.TLS_HANDSHAKE,
        ErrorKind.SNI_REQUIRED,
        ErrorKind.CERTIFICATE_VERIFY,
        ErrorKind.HOSTNAME_MISMATCH,
        ErrorKind.CLIENT_CERTIFICATE_REJECTED,
        ErrorKind.CERTIFICATE_PIN,
    }
)


class AgentError(Exception):
    """Base of every error the agent raises on purpose. Not raised itself: each subclass says
    what went wrong, and those that end a job carry the result's ``kind``. Errors that do not
    end a job (config, queue, service) have no kind."""

    kind: ClassVar[ErrorKind | None] = None

    def __init__(self, message: str) -> None:
        if type(self) is AgentError:
            raise TypeError("raise a subclass of AgentError: it says what went wrong")
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    @property
    def retryable(self) -> bool:
        return self.kind is not None and self.kind.retryable


class ConfigError(AgentError):
    """config.xml (or an override) cannot be used; names the parameter or line."""

    def __init__(self, message: str, *, parameter: str | None = None, line: int | None = None):
        where = []
        if parameter:
            where.append(f"parameter {parameter}")
        if line:
            where.append(f"line {line}")
        prefix = f"config: {', '.join(where)}: " if where else "config: "
        super().__init__(prefix + message)
        self.parameter = parameter
        self.line = line

    def located(self, path: object) -> ConfigError:
        """The same error naming the file it came from; its parameter and line are kept."""
        located = ConfigError(f"{path}: {self.message.removeprefix('config: ')}")
        located.parameter, located.line = self.parameter, self.line
        return located


class JobError(AgentError):
    """A job is malformed. ``problems`` lists every (field, message) found; ``field`` and
    ``detail`` are the first of them."""

    kind = ErrorKind.INVALID_JOB

    def __init__(
        self,
        field: str,
        message: str,
        *,
        where: str | None = None,
        problems: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.problems = tuple(problems) or ((field, message),)
        place = f" of {where}" if where else ""
        super().__init__("; ".join(f"job field {f!r}{place}: {m}" for f, m in self.problems))
        self.field, self.detail = self.problems[0]
        self.where = where

    @classmethod
    def of(cls, problems: Sequence[tuple[str, str]], *, where: str | None = None) -> JobError:
        """One error carrying every problem (there is at least one)."""
        field, message = problems[0]
        return cls(field, message, where=where, problems=problems)

    def at(self, where: str) -> JobError:
        """The same problems, placed (``job #3``, ``line 2``)."""
        return JobError.of(self.problems, where=where)


class UnknownProfileError(JobError):
    kind = ErrorKind.UNKNOWN_PROFILE

    def __init__(self, profile: str, known: list[str], *, field: str = "protocol_profile") -> None:
        names = ", ".join(sorted(known)) or "none"
        super().__init__(
            field, f"unknown protocol profile {profile!r} (config.xml defines: {names})"
        )
        self.profile = profile


class KeystoreError(AgentError):
    """Key material cannot be loaded or is broken; ``origin`` says whose it is."""

    kind = ErrorKind.KEYSTORE

    def __init__(self, origin: str, message: str) -> None:
        super().__init__(f"{origin}: {message}")
        self.origin = origin


class VaultError(AgentError):
    kind = ErrorKind.VAULT


class CyberArkError(AgentError):
    """CyberArk's Central Credential Provider refused, is down, or answered nonsense; the
    message names the object and CCP's ErrorCode, never a value."""

    kind = ErrorKind.CYBERARK


class QueueError(AgentError):
    """The queue backend cannot be reached or refused an operation."""


class ServiceError(AgentError):
    """The daemon cannot do what its configuration asks right now (a port taken): exit 1."""


class CallError(AgentError):
    """No complete, valid answer came from the endpoint; ``kind`` is one of the call kinds."""

    kind: ErrorKind  # type: ignore[misc]  # per instance: one of CALL_KINDS

    def __init__(self, kind: ErrorKind, message: str) -> None:
        if kind not in CALL_KINDS:
            raise ValueError(f"not a call's error kind: {kind!r}")
        super().__init__(message)
        self.kind = ErrorKind(kind)


class DestinationDenied(CallError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.DESTINATION_DENIED, message)


class TLSError(CallError):
    """A TLS handshake failed; the kind tells why and the message what to change."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        if kind not in TLS_KINDS:
            raise ValueError(f"not a handshake's error kind: {kind!r}")
        super().__init__(kind, message)
