"""What ``/status``, ``/status.json`` and ``agent status`` show: one summary of the running agent.

``StatusBoard`` is fed by the daemon (each finished job, each certificate report) and asked for a
``snapshot``: the agent (name, version, uptime, workers, threads), the queue (jobs by state, the
oldest waiting job's age), throughput and error ratio over the last five minutes, the last errors
by kind with the message the result carries (which says what to change), every profile's client
certificate and where its material comes from, and the readiness reasons. The verdict is
``healthy`` or ``degraded`` (not ready, or a client certificate within the warning days).

Nothing secret is in it: results' error messages never hold secrets (the agent writes them), and
of a profile only its name, source and public certificate fields are shown.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from agent.config.config import AgentConfig, ProfileConfig
from agent.credentials.inspect import ProfileReport
from agent.jobs.results import Result
from agent.queues.base import QueueSummary

WINDOW_SECONDS = 300  # jobs/s and error ratio over the last five minutes
BUCKET_SECONDS = 10
LAST_ERRORS = 20  # the most recent errors listed
MESSAGE_CHARS = 400  # an error message is cut to this on the page


def agent_version() -> str:
    try:
        return metadata.version("mtls-forwarding-agent")
    except metadata.PackageNotFoundError:
        return "unknown"


class Throughput:
    """Jobs and errors finished over the last ``window`` seconds, counted in 10-second buckets."""

    def __init__(
        self, window: int = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self.clock = clock
        self.started = clock()
        self._buckets: deque[list[int]] = deque()  # [bucket number, jobs, errors]

    def add(self, error: bool) -> None:
        number = int(self.clock() // BUCKET_SECONDS)
        if not self._buckets or self._buckets[-1][0] != number:
            self._buckets.append([number, 0, 0])
            self._trim(number)
        self._buckets[-1][1] += 1
        self._buckets[-1][2] += int(error)

    def _trim(self, now_bucket: int) -> None:
        oldest = now_bucket - self.window // BUCKET_SECONDS
        while self._buckets and self._buckets[0][0] <= oldest:
            self._buckets.popleft()

    def summary(self) -> dict[str, Any]:
        now = self.clock()
        self._trim(int(now // BUCKET_SECONDS))
        jobs = sum(b[1] for b in self._buckets)
        errors = sum(b[2] for b in self._buckets)
        span = max(min(float(self.window), now - self.started), 1.0)
        return {
            "window_seconds": self.window,
            "jobs": jobs,
            "errors": errors,
            "jobs_per_second": round(jobs / span, 3),
            "error_ratio": round(errors / jobs, 4) if jobs else 0.0,
        }


@dataclass(frozen=True, slots=True)
class ErrorSeen:
    at: dt.datetime
    kind: str
    job_id: str
    topic: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {
            "at": self.at.isoformat(timespec="seconds"),
            "kind": self.kind,
            "job_id": self.job_id,
            "topic": self.topic,
            "message": self.message,
        }


class RecentErrors:
    """The last errors, and per kind how many since start and the latest of them."""

    def __init__(self, keep: int = LAST_ERRORS) -> None:
        self.last: deque[ErrorSeen] = deque(maxlen=keep)
        self.by_kind: dict[str, tuple[int, ErrorSeen]] = {}  # kinds are ErrorKind: bounded

    def add(self, topic: str, result: Result) -> None:
        if result.error is None:
            return
        message = result.error.message
        if len(message) > MESSAGE_CHARS:
            message = message[: MESSAGE_CHARS - 1] + "…"
        seen = ErrorSeen(
            dt.datetime.now(dt.UTC), result.error.kind, result.id[:200], topic, message
        )
        self.last.append(seen)
        count = self.by_kind.get(seen.kind, (0, seen))[0]
        self.by_kind[seen.kind] = (count + 1, seen)

    def summary(self) -> dict[str, Any]:
        kinds = sorted(self.by_kind.items(), key=lambda item: -item[1][0])
        return {
            "by_kind": [
                {"kind": kind, "count": count, "last": seen.to_dict()}
                for kind, (count, seen) in kinds
            ],
            "last": [seen.to_dict() for seen in reversed(self.last)],
        }


def status_of_queue(summary: QueueSummary | None) -> dict[str, Any]:
    if summary is None:
        return {"available": False, "reason": "this queue backend does not report its jobs"}
    return {
        "available": True,
        "by_state": summary.by_state,
        "oldest_waiting_seconds": summary.oldest_waiting_seconds,
    }


def profile_source(profile: ProfileConfig) -> str:
    if profile.vault_pki:
        return "vault pki"
    if profile.vault_path:
        return "vault kv"
    if profile.store == "cyberark":
        return "cyberark"
    if profile.path is not None:
        return "file"
    return "none"


def certificate_entry(
    profile: ProfileConfig, report: ProfileReport | None, warn_days: int, now: dt.datetime
) -> dict[str, Any]:
    """A profile's line: its source and its client certificate's public fields."""
    entry: dict[str, Any] = {"name": profile.name, "source": profile_source(profile)}
    if report is None:
        return entry | {"checked": False, "level": "unknown"}
    days = None
    if report.not_after is not None:
        days = round((report.not_after - now).total_seconds() / 86400, 1)
    level = "ok"
    if report.problems or (days is not None and days <= 0):
        level = "bad"
    elif days is not None and days <= warn_days:
        level = "warn"
    return entry | {
        "checked": True,
        "loaded": report.loaded,
        "subject": report.subject,
        "issuer": report.issuer,
        "not_after": report.not_after.isoformat(timespec="seconds") if report.not_after else None,
        "days_left": days,
        "level": level,
        "problems": list(report.problems),
        "warnings": list(report.warnings),
    }


class StatusBoard:
    """The daemon's running summary: fed per job and per certificate report."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.started_at = dt.datetime.now(dt.UTC)
        self.throughput = Throughput(clock=clock)
        self.errors = RecentErrors()
        self.reports: dict[str, ProfileReport] = {}

    def job_done(self, topic: str, result: Result) -> None:
        self.throughput.add(result.error is not None)
        self.errors.add(topic, result)

    def report(self, report: ProfileReport) -> None:
        self.reports[report.name] = report

    def keep_profiles(self, names: set[str]) -> None:
        for name in set(self.reports) - names:
            del self.reports[name]

    def snapshot(
        self,
        config: AgentConfig,
        *,
        queue: dict[str, Any],
        reasons: list[str],
        running: int,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        profiles = [
            certificate_entry(p, self.reports.get(name), config.cert_warn_days, now)
            for name, p in sorted(config.profiles.items())
        ]
        expiring = [p["name"] for p in profiles if p["level"] in ("warn", "bad")]
        problems = list(reasons) + [
            f"profile {p['name']}: the client certificate expires in {p['days_left']} day(s)"
            for p in profiles
            if p["level"] == "warn"
        ]
        return {
            "state": "degraded" if reasons or expiring else "healthy",
            "problems": problems,
            "agent": {
                "name": config.agent_name,
                "version": agent_version(),
                "started_at": self.started_at.isoformat(timespec="seconds"),
                "uptime_seconds": round((now - self.started_at).total_seconds()),
                "workers": config.workers,
                "threads": config.threads_max,
                "running": running,
            },
            "queue": queue,
            "throughput": self.throughput.summary(),
            "errors": self.errors.summary(),
            "profiles": profiles,
            "cert_warn_days": config.cert_warn_days,
            "generated_at": now.isoformat(timespec="seconds"),
        } | (extra or {})
