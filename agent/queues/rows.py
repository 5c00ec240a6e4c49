"""A job as ``agent jobs`` lists it, from any backend's row."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job as ``agent jobs`` lists it. ``due``: when a claimed job's lease lapses (and it
    may run elsewhere); times are seconds since the epoch."""

    id: str
    state: str
    attempts: int
    created: float
    updated: float
    due: float | None
    agent: str | None
    error_kind: str | None
    error_message: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "attempts": self.attempts,
            "created": _iso(self.created),
            "updated": _iso(self.updated),
            "due": _iso(self.due),
            "agent": self.agent,
            "error": None
            if self.error_kind is None
            else {"kind": self.error_kind, "message": self.error_message},
        }


def job_row(
    job_id: str,
    state: str,
    attempts: int,
    created: Any,
    updated: Any,
    lease_until: Any,
    agent: str | None,
    result: Any,
) -> JobRow:
    """A row of ``SELECT id, state, attempt, created, updated, lease_until, agent, result``
    (times as epoch seconds or datetimes, the result as JSON text or a decoded object)."""
    doc = json.loads(result) if isinstance(result, str | bytes) else result
    error = doc.get("error") if isinstance(doc, dict) else None
    due = _epoch(lease_until) if state == "processing" else None
    return JobRow(
        job_id,
        state,
        int(attempts or 0),
        _epoch(created) or 0.0,
        _epoch(updated) or 0.0,
        due,
        agent,
        error.get("kind") if isinstance(error, dict) else None,
        error.get("message") if isinstance(error, dict) else None,
    )


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return float(value)


def _iso(value: float | None) -> str | None:
    if value is None:
        return None
    return dt.datetime.fromtimestamp(value, dt.UTC).isoformat(timespec="seconds")
