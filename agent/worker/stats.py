"""What the worker counts, and the structured fields of a job's log line."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agent.jobs.model import Job
from agent.jobs.results import Result


@dataclass
class Stats:
    claimed: int = 0
    processed: int = 0
    errors: int = 0
    fenced: int = 0
    released: int = 0
    retried: int = 0  # results that sent their job back to the queue for a later attempt
    journaled: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


@functools.lru_cache(maxsize=4096)  # jobs repeat endpoints
def _scheme_and_host(endpoint: str) -> tuple[str, str | None]:
    parts = urlsplit(endpoint)
    return parts.scheme.lower(), parts.hostname


def log_fields(job: Job, result: Result) -> dict[str, object]:
    """Structured fields for the job's log line (JSON logs carry them as keys)."""
    scheme, host = _scheme_and_host(job.endpoint)
    return {
        "job_id": job.id,
        "profile": job.protocol_profile or (scheme if scheme != "https" else None),
        "host": host,
        "outcome": result.error.kind if result.error else result.state,
        "status": result.status,
        "duration_ms": result.elapsed_ms,
    }
