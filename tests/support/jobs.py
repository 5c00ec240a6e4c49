"""Job builders: the fields of a REST job as the queue carries them, and the parsed Job.

Every test job goes to a name the test resolves to 127.0.0.1 (``alpha.test`` unless told).
"""

from __future__ import annotations

from typing import Any

from agent.jobs.model import Job


def job_fields(
    job_id: str,
    port: int | None = None,
    path: str = "/echo",
    *,
    endpoint: str | None = None,
    host: str = "alpha.test",
    profile: str | None = "partner",
    topic: str = "RESTProbe",
    **extra: Any,
) -> dict[str, Any]:
    """A job's JSON fields: ``https://host:port/path`` (or ``endpoint``) through ``profile``
    (None leaves the profile out), plus any other field given."""
    if endpoint is None:
        endpoint = f"https://{host}{'' if port is None else f':{port}'}{path}"
    fields: dict[str, Any] = {"id": job_id, "topic": topic, "endpoint": endpoint}
    if profile is not None:
        fields["protocol_profile"] = profile
    return fields | extra


def make_job(job_id: str, port: int | None = None, path: str = "/echo", **kw: Any) -> Job:
    """``job_fields`` parsed as the worker parses a claimed job."""
    return Job.from_dict(job_fields(job_id, port, path, **kw))
