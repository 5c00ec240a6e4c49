"""Reading a job's result: the echo the harness servers send back, the error kind."""

from __future__ import annotations

import json

from agent.jobs.results import Result


def echo(result: Result) -> dict[str, str]:
    assert result.state == "processed" and result.status == 200, result.to_dict()
    seen: dict[str, str] = json.loads(result.body or "")
    return seen


def kind(result: Result) -> str | None:
    return result.error.kind if result.error else None
