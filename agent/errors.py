"""The agent's errors, one tree, each mapping to one result ``error.kind``.

::

    AgentError
    ├── ConfigError            config.xml cannot be used          (commands exit 2)
    ├── JobError               a job is malformed                 kind: invalid_job
    │   └── UnknownProfileError  names a profile config.xml lacks   kind: unknown_profile
    ├── KeystoreError          keystore/truststore unusable       kind: keystore
    ├── VaultError             the vault refused or is down       kind: vault
    ├── QueueError             the job queue is unreachable
    └── CallError              no answer came from the endpoint   kind: one of the call kinds
        ├── DestinationDenied                                     kind: destination_denied
        ├── TLSError           handshake failed                   kind: tls_handshake, sni_required,
        │                                                               certificate_verify,
        │                                                               hostname_mismatch,
        │                                                               client_certificate_rejected
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

from collections.abc import Sequence

ERROR_KINDS = frozenset(
    {
        "invalid_job",
        "unknown_profile",
        "keystore",
        "vault",
        "destination_denied",
        "dns",
        "connect",
        "tls_handshake",
        "sni_required",
        "certificate_verify",
        "hostname_mismatch",
        "client_certificate_rejected",
        "timeout",
        "response_too_large",
        "bad_response",
        "cancelled",
    }
)


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""

    kind = "invalid_job"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


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

    kind = "invalid_job"

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
    kind = "unknown_profile"

    def __init__(self, profile: str, known: list[str], *, field: str = "protocol_profile") -> None:
        names = ", ".join(sorted(known)) or "none"
        super().__init__(
            field, f"unknown protocol profile {profile!r} (config.xml defines: {names})"
        )
        self.profile = profile


class KeystoreError(AgentError):
    """Key material cannot be loaded or is broken; ``origin`` says whose it is."""

    kind = "keystore"

    def __init__(self, origin: str, message: str) -> None:
        super().__init__(f"{origin}: {message}")
        self.origin = origin


class VaultError(AgentError):
    kind = "vault"


class QueueError(AgentError):
    """The queue backend cannot be reached or refused an operation."""


class CallError(AgentError):
    """No complete, valid answer came from the endpoint; ``kind`` is one of the call kinds."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        super().__init__(message)
        self.kind = kind


class DestinationDenied(CallError):
    def __init__(self, message: str) -> None:
        super().__init__("destination_denied", message)


class TLSError(CallError):
    """A TLS handshake failed; the kind tells why and the message what to change."""
