"""The ECC queue's record formats: an output record's payload as a Job (JSON, or the MID's
``<parameters>`` XML), a Result as an input record's ``<results>`` payload, and back."""

from __future__ import annotations

import dataclasses
import json
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from agent.config.config import DEFAULT_MAX_JOB_BYTES
from agent.errors import JobError
from agent.http.xmlsafe import XMLRejected, parse_xml
from agent.jobs.jsonguard import MAX_DEPTH, nested_deeper
from agent.jobs.model import Job
from agent.jobs.results import Result

FIELD_ALIASES = {
    "rest_endpoint": "endpoint",
    "http_method": "method",
    "content": "body",
}
INT_FIELDS = ("timeout", "max_attempts")


def job_from_record(record: dict[str, Any], max_job_bytes: int = DEFAULT_MAX_JOB_BYTES) -> Job:
    """The Job an output record describes; JobError names what is wrong. A payload over
    ``max_job_bytes``, or nested deeper than a job can be, is refused without being parsed."""
    payload = (record.get("payload") or "").strip()
    if len(payload) > max_job_bytes:
        raise JobError(
            "payload", f"is {len(payload)} characters, over agent.max_job_bytes ({max_job_bytes})"
        )
    raw: dict[str, Any]
    if payload.startswith("{"):
        if nested_deeper(payload, MAX_DEPTH):
            raise JobError("payload", f"is nested deeper than {MAX_DEPTH} levels: not a job")
        try:
            raw = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise JobError("payload", f"is not valid JSON: {exc}") from None
    else:
        raw = _xml_parameters(payload)
    raw["id"] = record.get("agent_correlator") or record["sys_id"]
    raw["topic"] = record.get("topic")
    return Job.from_dict(raw)


def _xml_parameters(payload: str) -> dict[str, Any]:
    try:
        root = parse_xml(payload.encode())
    except XMLRejected as exc:
        raise JobError("payload", f"is not usable XML: {exc}") from None
    raw: dict[str, Any] = {}
    for elem in root.iter("parameter"):
        name = FIELD_ALIASES.get(elem.get("name") or "", elem.get("name") or "")
        value = elem.get("value") if elem.get("value") is not None else (elem.text or "")
        raw[name] = value
    if isinstance(raw.get("headers"), str) and raw["headers"]:
        try:
            raw["headers"] = json.loads(raw["headers"])
        except ValueError:
            raise JobError("headers", "must be a JSON object in the payload") from None
    for name in INT_FIELDS:
        if isinstance(raw.get(name), str) and raw[name]:
            try:
                raw[name] = float(raw[name]) if name == "timeout" else int(raw[name])
            except ValueError:
                raise JobError(name, f"must be a number, got {raw[name]!r}") from None
    return {k: v for k, v in raw.items() if v not in ("", None)}


def result_payload(result: Result) -> str:
    """The ``<results>`` payload of the input record answering a job."""
    body = result.body if result.body is not None else (result.body_base64 or "")
    parts = [
        f"<output>{escape(body)}</output>",
        f"<http_status_code>{'' if result.status is None else result.status}</http_status_code>",
        f"<headers>{escape(json.dumps(result.headers))}</headers>",
        f"<elapsed_ms>{result.elapsed_ms}</elapsed_ms>",
        f"<attempts>{result.attempts}</attempts>",
    ]
    if result.body_base64 is not None:
        parts.append("<output_encoding>base64</output_encoding>")
    if result.error is not None:
        parts.append(
            f"<error kind={quoteattr(result.error.kind)}>{escape(result.error.message)}</error>"
        )
    if result.soap_fault is not None:
        f = result.soap_fault
        parts.append(
            f"<soap_fault><code>{escape(f.code)}</code><message>{escape(f.message)}</message>"
            f"<detail>{escape(f.detail or '')}</detail></soap_fault>"
        )
    parts.append(f"<tls>{escape(json.dumps(dataclasses.asdict(result.tls)))}</tls>")
    parts.append(f"<agent_result>{escape(json.dumps(result.to_dict()))}</agent_result>")
    return f"<results><result>{''.join(parts)}</result></results>"


def result_of(record: dict[str, Any] | None, job_id: str) -> Result | None:
    if record is None:
        return None
    try:
        root = parse_xml((record.get("payload") or "").encode())
    except XMLRejected:
        return None
    elem = root.find(".//agent_result")
    if elem is None or not elem.text:
        return None
    result = Result.from_dict(json.loads(elem.text))
    return result if result.id == job_id else None


def looks_like_sys_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)
