"""Job queues, chosen by the ``url`` parameter: ``sqlite://``, ``postgresql://``, ``https://``."""

from __future__ import annotations

from agent.config.config import AgentConfig
from agent.config.secure import JobKey, job_key_path
from agent.errors import QueueError
from agent.queues.base import Claim, JobStatus, Queue

__all__ = ["Claim", "JobStatus", "Queue", "open_queue"]


def open_queue(config: AgentConfig) -> Queue:
    """The queue backend for ``config.url`` (not yet connected: call ``open()``).

    The SQLite and PostgreSQL queues seal jobs' secrets with the key file beside config.xml
    (``secure.job_key_path``); the ECC queue keeps jobs on the instance, which holds them.
    """
    queue = _backend(config)
    queue.max_job_bytes = config.max_job_bytes
    return queue


def _backend(config: AgentConfig) -> Queue:
    url = config.url
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        from agent.queues.sqlite import SqliteQueue, sqlite_path

        path = sqlite_path(url, config.base_dir)
        return SqliteQueue(path, JobKey(job_key_path(config, path)))
    if scheme in ("postgres", "postgresql"):
        from agent.queues.postgres import PostgresQueue

        queue: Queue = PostgresQueue(url, key=JobKey(job_key_path(config)))
        return queue
    if scheme == "https":
        from agent.queues.ecc import EccQueue

        return EccQueue(
            url,
            agent=config.agent_name,
            username=config.instance_username,
            password=config.instance_password,
        )
    raise QueueError(f"url {url!r}: unsupported queue; use sqlite://, postgresql:// or https://")
