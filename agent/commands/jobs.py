"""``agent jobs [--state S] [--limit N] [--json]``: the queue's jobs without SQL, newest first,
with their state, attempts, lease expiry and last error; ``--state error`` is the dead-letter set.
"""

from __future__ import annotations

import json
import sys

from agent.config.config import AgentConfig
from agent.queues import open_queue
from agent.queues.rows import JobRow

MAX_LIMIT = 10_000


async def run_jobs(config: AgentConfig, *, state: str | None, limit: int, as_json: bool) -> int:
    queue = open_queue(config)
    await queue.open()
    try:
        rows = await queue.list_jobs(state, limit)
    finally:
        await queue.close()
    if as_json:
        sys.stdout.write(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
    else:
        sys.stdout.write(format_rows(rows))
    return 0


def format_rows(rows: list[JobRow]) -> str:
    if not rows:
        return "no jobs\n"
    lines = [f"{'id':<28} {'state':<11} {'tries':>5}  {'updated':<20} {'lease until':<20} error"]
    for row in rows:
        d = row.to_dict()
        error = "" if row.error_kind is None else f"{row.error_kind}: {row.error_message or ''}"
        if len(error) > 120:
            error = error[:119] + "…"
        lines.append(
            f"{row.id[:28]:<28} {row.state:<11} {row.attempts:>5}  {d['updated'] or '-':<20} "
            f"{d['due'] or '-':<20} {error}"
        )
    return "\n".join(lines) + "\n"
