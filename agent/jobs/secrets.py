"""The job fields that are secrets, and how a stored job is split from and joined with them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agent.jobs.model import Job

# -- secrets at rest ---------------------------------------------------------------------------
# The job fields that are secrets: the queues store them sealed (encrypted with the agent's key)
# and erase them once the job has its result; the journal never stores them. Paths into
# ``Job.to_dict()``. Add a field here and every store treats it so.
SECRET_FIELDS: tuple[tuple[str, ...], ...] = (
    ("inline_profile", "keystore", "data_base64"),
    ("inline_profile", "keystore", "password"),
    ("inline_profile", "wss", "password"),
)


def split_secrets(data: dict[str, Any]) -> dict[str, Any]:
    """Take the SECRET_FIELDS out of ``data`` (a job's ``to_dict()``, changed in place).

    Returns them keyed by dotted path; ``{}`` (at the cost of one look-up) for the usual job
    that has none.
    """
    if data.get("inline_profile") is None:  # every secret field lives under it
        return {}
    taken: dict[str, Any] = {}
    for path in SECRET_FIELDS:
        parent = data
        for key in path[:-1]:
            parent = parent.get(key)  # type: ignore[assignment]
            if not isinstance(parent, dict):
                break
        else:
            if path[-1] in parent:
                taken[".".join(path)] = parent.pop(path[-1])
    return taken


def merge_secrets(data: dict[str, Any], secrets: dict[str, Any]) -> None:
    """Put secrets taken by ``split_secrets`` back into ``data`` (changed in place)."""
    for dotted, value in secrets.items():
        *parents, last = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value


def without_secrets(job: Job) -> Job:
    """A copy of ``job`` with no secret: its inline profile, which holds them all, left out."""
    if job.inline_profile is None:
        return job

    return replace(job, inline_profile=None)


def has_secrets(job: Job) -> bool:
    """Whether ``job`` may carry SECRET_FIELDS (they all live under its inline profile)."""
    return job.inline_profile is not None
