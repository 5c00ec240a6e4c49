"""Results: what a job's call produced, as the contract's JSON (``Result.to_dict``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from agent.errors import ErrorKind


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class SoapFault:
    code: str
    message: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class TLSInfo:
    sni: str | None = None
    version: str | None = None
    cipher: str | None = None
    client_certificate: str | None = None
    server_certificate: str | None = None
    # evidence of what was presented to whom: the address connected to, the server key's pin,
    # the client certificate's SHA-256 fingerprint, and the policy applied to the handshake
    address: str | None = None
    server_pin: str | None = None
    client_certificate_sha256: str | None = None
    pins_checked: bool = False
    revocation: str = "off"


@dataclass(slots=True)
class Result:
    id: str
    state: Literal["processed", "error"]
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    body_base64: str | None = None
    elapsed_ms: float = 0.0
    attempts: int = 1
    error: ErrorInfo | None = None
    soap_fault: SoapFault | None = None
    tls: TLSInfo = field(default_factory=TLSInfo)
    hint: str | None = None  # for a processed answer whose status points at the client cert
    # every failed attempt before this one's outcome, oldest first: {attempt, kind, message, at}
    history: list[dict[str, Any]] = field(default_factory=list)
    retry_at: float | None = None  # set: the job goes back to the queue, due then (epoch s)

    @property
    def stored_state(self) -> str:
        """The state the queue keeps: ``ready`` for a retry, else the result's own."""
        return "ready" if self.retry_at is not None else self.state

    @classmethod
    def failed(cls, job_id: str, kind: ErrorKind, message: str, **extra: Any) -> Result:
        return cls(id=job_id, state="error", error=ErrorInfo(kind, message), **extra)

    def to_dict(self) -> dict[str, Any]:
        # Written out rather than dataclasses.asdict: this runs for every job, and asdict's deep
        # copies were a measurable share of the agent's per-job cost.
        out: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "status": self.status,
            "headers": dict(self.headers),
            "body": self.body,
        }
        if self.body_base64 is not None:
            out["body_base64"] = self.body_base64
        error, fault, tls = self.error, self.soap_fault, self.tls
        out |= {
            "elapsed_ms": self.elapsed_ms,
            "attempts": self.attempts,
            "error": {"kind": error.kind, "message": error.message} if error else None,
            "soap_fault": (
                {"code": fault.code, "message": fault.message, "detail": fault.detail}
                if fault
                else None
            ),
            "tls": {
                "sni": tls.sni,
                "version": tls.version,
                "cipher": tls.cipher,
                "client_certificate": tls.client_certificate,
                "server_certificate": tls.server_certificate,
                "address": tls.address,
                "server_pin": tls.server_pin,
                "client_certificate_sha256": tls.client_certificate_sha256,
                "policy": {"pins_checked": tls.pins_checked, "revocation": tls.revocation},
            },
            "hint": self.hint,
        }
        if self.history:
            out["history"] = list(self.history)
        if self.retry_at is not None:
            out["retry_at"] = self.retry_at
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Result:
        raw = dict(raw)
        error = raw.pop("error", None)
        fault = raw.pop("soap_fault", None)
        tls = dict(raw.pop("tls", None) or {})
        tls |= tls.pop("policy", None) or {}
        return cls(
            **raw,
            error=ErrorInfo(**error) if error else None,
            soap_fault=SoapFault(**fault) if fault else None,
            tls=TLSInfo(**tls),
        )
