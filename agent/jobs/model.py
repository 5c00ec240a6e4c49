"""Jobs: the contract's JSON as frozen dataclasses (``Job``, ``InlineProfile``).

Pure logic: no I/O. ``Job.from_dict`` validates (``agent.jobs.parse``) and raises ``JobError``
naming every offending field. It runs at enqueue and again when a job is claimed (a row may come
from another program), so the same rules hold whichever way a job reached the queue.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from agent.jobs.parse import SNI, Topic, parse_job


@dataclass(frozen=True)
class InlineProfile:
    """Key material carried by the job itself (an inline record)."""

    keystore_data: bytes
    keystore_type: str | None = None
    password: str | None = field(default=None, repr=False)
    alias: str | None = None
    truststore_pem: bytes | None = None
    sni: SNI = None
    wss_username: str | None = None
    wss_password: str | None = field(default=None, repr=False)
    wss_password_type: str = "text"

    def to_dict(self) -> dict[str, Any]:
        keystore: dict[str, Any] = {"data_base64": base64.b64encode(self.keystore_data).decode()}
        for key, value in (
            ("type", self.keystore_type),
            ("password", self.password),
            ("alias", self.alias),
        ):
            if value is not None:
                keystore[key] = value
        out: dict[str, Any] = {"keystore": keystore}
        if self.truststore_pem is not None:
            out["truststore_pem"] = self.truststore_pem.decode()
        if self.sni is not None:
            out["sni"] = self.sni
        if self.wss_username is not None:
            out["wss"] = {
                "username": self.wss_username,
                "password": self.wss_password,
                "password_type": self.wss_password_type,
            }
        return out


@dataclass(frozen=True)
class Job:
    id: str
    topic: Topic
    endpoint: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    soap_action: str | None = None
    soap_version: str = "1.1"
    protocol_profile: str | None = None
    inline_profile: InlineProfile | None = None
    sni: SNI = None
    timeout: float = 60.0
    max_attempts: int = 1
    not_before: str | None = None  # RFC 3339, UTC: not run before then
    priority: int = 0  # higher first

    @property
    def due(self) -> float | None:
        """``not_before`` in seconds since the epoch (None: due at once)."""
        if self.not_before is None:
            return None
        return dt.datetime.fromisoformat(self.not_before).timestamp()

    @classmethod
    def from_dict(cls, raw: object) -> Job:
        fields = parse_job(raw)
        inline = fields["inline_profile"]
        if inline is not None:
            fields["inline_profile"] = InlineProfile(**inline)
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """The contract JSON form (bodies as ``body_base64``, so any bytes survive)."""
        out: dict[str, Any] = {
            "id": self.id,
            "topic": self.topic,
            "endpoint": self.endpoint,
            "method": self.method,
            "headers": dict(self.headers),
            "soap_version": self.soap_version,
            "timeout": self.timeout,
            "max_attempts": self.max_attempts,
        }
        if self.body is not None:
            out["body_base64"] = base64.b64encode(self.body).decode()
        for key, value in (
            ("soap_action", self.soap_action),
            ("protocol_profile", self.protocol_profile),
            ("sni", self.sni),
            ("not_before", self.not_before),
        ):
            if value is not None:
                out[key] = value
        if self.priority:
            out["priority"] = self.priority
        if self.inline_profile is not None:
            out["inline_profile"] = self.inline_profile.to_dict()
        return out
