"""What ``agent enqueue`` checks beyond the job model: the input's size and shape, each job's
size against ``agent.max_job_bytes``, and its profile names against config.xml.

Pure logic, like ``jobs``: the command line reads the bytes and passes the limits in.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import orjson

from agent.errors import JobError
from agent.jobs.jsonguard import MAX_DEPTH, nested_deeper
from agent.jobs.model import Job
from agent.jobs.names import show

INPUT_JOBS_FACTOR = 4  # an input may hold this many jobs' worth of bytes (agent.max_job_bytes)
BOM = b"\xef\xbb\xbf"


def input_limit(max_job_bytes: int) -> int:
    """The most bytes ``agent enqueue`` reads; more is refused before any parsing."""
    return INPUT_JOBS_FACTOR * max_job_bytes


def json_items(data: bytes) -> tuple[list[Any], str]:
    """The jobs in one JSON value, a JSON array, or JSON lines, and how to name one of them
    (``job #{}`` or ``line {}``). Malformed or too deeply nested input raises ``JobError``."""
    text = data.removeprefix(BOM).strip()
    if not text:
        raise JobError("(input)", "no job given")
    try:
        value = _loads(text)
    except orjson.JSONDecodeError as exc:
        if b"\n" not in text:
            raise _not_json(exc) from None
        return [_line(line, exc) for line in text.splitlines() if line.strip()], "line {}"
    if value == []:
        raise JobError("(input)", "no job given (an empty array)")
    return (value if isinstance(value, list) else [value]), "job #{}"


def _line(line: bytes, first: orjson.JSONDecodeError) -> Any:
    try:
        return _loads(line)
    except orjson.JSONDecodeError:
        raise _not_json(first) from None


def _loads(text: bytes) -> Any:
    if nested_deeper(text, MAX_DEPTH):
        raise _too_deep()
    try:
        return orjson.loads(text)
    except RecursionError:  # bounded above; kept so no parser's limit can end in a traceback
        raise _too_deep() from None


def _too_deep() -> JobError:
    return JobError("(input)", f"is nested deeper than {MAX_DEPTH} levels: not a job")


def _not_json(exc: orjson.JSONDecodeError) -> JobError:
    return JobError("(input)", f"not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})")


def check_size(raw: Any, job: Job, limit: int) -> None:
    """Refuse a job whose stored form is over ``agent.max_job_bytes``, naming its largest field."""
    size = len(orjson.dumps(job.to_dict()))
    if size <= limit:
        return
    field, field_size = max(_leaf_sizes(raw, ""), key=lambda pair: pair[1], default=("(job)", 0))
    raise JobError(
        field,
        f"is {field_size} bytes, which makes the job {size} bytes as stored, over"
        f" agent.max_job_bytes ({limit} bytes): send less, or raise the limit",
    )


def _leaf_sizes(value: Any, prefix: str) -> Iterable[tuple[str, int]]:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            yield from _leaf_sizes(child, f"{prefix}.{key}" if prefix else str(key))
    elif prefix:
        yield prefix, len(orjson.dumps(value))


def check_profiles(job: Job, defined: Iterable[str]) -> None:
    """Refuse a job naming a protocol profile config.xml lacks (names match without regard to
    case), in its ``protocol_profile`` or as its endpoint's scheme."""
    names = {name.lower(): name for name in defined}
    known = ", ".join(sorted(names.values())) or "none"
    scheme = urlsplit(job.endpoint).scheme.lower()
    problems = []
    if scheme != "https" and scheme not in names:
        problems.append(
            (
                "endpoint",
                f"scheme {show(scheme)} is neither https nor a protocol profile"
                f" (config.xml defines: {known})",
            )
        )
    wanted = job.protocol_profile
    if wanted is not None and wanted.lower() not in names:
        problems.append(
            (
                "protocol_profile",
                f"unknown protocol profile {show(wanted)} (config.xml defines: {known})",
            )
        )
    elif wanted is not None and scheme in names and wanted.lower() != scheme:
        problems.append(
            (
                "protocol_profile",
                f"{show(wanted)} differs from the endpoint's scheme {show(scheme)}:"
                " name one profile (write https:// to use protocol_profile)",
            )
        )
    if problems:
        raise JobError.of(problems)
