"""Job queues, chosen by the ``url`` parameter: ``sqlite://``, ``postgresql://``, ``https://``."""

from __future__ import annotations

from ..config import AgentConfig
from ..errors import QueueError
from .base import Claim, JobStatus, Queue

__all__ = ["Claim", "JobStatus", "Queue", "open_queue"]


def open_queue(config: AgentConfig) -> Queue:
    """The queue backend for ``config.url`` (not yet connected: call ``open()``)."""
    queue = _backend(config)
    queue.max_job_bytes = config.max_job_bytes
    return queue


def _backend(config: AgentConfig) -> Queue:
    url = config.url
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        from .sqlite import SqliteQueue, sqlite_path

        return SqliteQueue(sqlite_path(url, config.base_dir))
    if scheme in ("postgres", "postgresql"):
        from .postgres import PostgresQueue

        queue: Queue = PostgresQueue(url)
        return queue
    if scheme == "https":
        from .ecc import EccQueue

        return EccQueue(
            url,
            agent=config.agent_name,
            username=config.instance_username,
            password=config.instance_password,
        )
    raise QueueError(f"url {url!r}: unsupported queue; use sqlite://, postgresql:// or https://")
