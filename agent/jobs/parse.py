"""Validation of a job's JSON into the fields of a ``Job``: every problem, each naming its field.

Pure logic, below the model: ``Job.from_dict`` (``agent.jobs.model``) builds the Job from what
``parse_job`` returns, so this module needs nothing from the model."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import difflib
import functools
import uuid
from collections.abc import Callable
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from agent.errors import JobError
from agent.jobs.names import (
    has_control,
    header_name_problem,
    header_value_problem,
    is_token,
    numeric_host_problem,
    show,
    sni_value,
)

T = TypeVar("T")
Topic = Literal["RESTProbe", "SOAPProbe"]
SNI = bool | str | None

TOPICS = ("RESTProbe", "SOAPProbe")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
JOB_FIELDS = frozenset(
    {
        "id",
        "topic",
        "endpoint",
        "method",
        "headers",
        "body",
        "body_base64",
        "soap_action",
        "soap_version",
        "protocol_profile",
        "inline_profile",
        "sni",
        "timeout",
        "max_attempts",
        "not_before",
        "priority",
    }
)
MAX_PRIORITY = 1_000_000
MAX_ID_LENGTH = 200


def _want(raw: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = raw.get(name)
    if value is None:
        return None
    exact = type(value)  # the common case, checked first: this runs ten times per claimed job
    if exact is kind or (type(kind) is tuple and exact in kind):
        return value
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise JobError(name, f"must be {what}, got {value!r}")
    if not isinstance(value, kind):
        raise JobError(name, f"must be {what}, got {type(value).__name__}")
    return value


def _parse_sni(value: object, where: str) -> SNI:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise JobError(where, f"{value!r} is not a setting: write true or false (or a host name)")
    try:
        return sni_value(value)
    except ValueError as exc:
        raise JobError(where, str(exc)) from None


def _b64(value: str, where: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise JobError(where, f"is not valid base64 ({exc})") from None


def _parse_endpoint(value: object) -> str:
    if value is None or value == "":
        raise JobError("endpoint", "is required: an https:// or <profile>:// URL")
    if not isinstance(value, str):
        raise JobError("endpoint", f"must be a URL string, got {type(value).__name__}")
    return _checked_endpoint(value)


@functools.lru_cache(maxsize=4096)  # jobs repeat endpoints; a refused one is checked each time
def _checked_endpoint(value: str) -> str:
    if has_control(value):
        raise JobError("endpoint", "contains a control character (percent-encode it)")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise JobError("endpoint", f"is not a valid URL: {exc}") from None
    if not parts.scheme or not parts.hostname:
        raise JobError(
            "endpoint", f"must be https://host/... or <profile>://host/..., got {show(value)}"
        )
    if parts.scheme == "http":
        raise JobError("endpoint", "plain http is not allowed: the agent only calls over TLS")
    numeric = numeric_host_problem(parts.hostname)
    if numeric:
        raise JobError("endpoint", numeric)
    return value


def _parse_headers(raw: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    headers = _want(raw, "headers", dict, "an object of header names to strings") or {}
    out, problems = [], []
    for name, value in headers.items():
        problem = _header_problem(name, value)
        if problem is None:
            out.append((name, value if type(value) is str else str(value)))
        else:
            problems.append(problem)
    if problems:
        raise JobError.of(problems)
    return tuple(out)


def _header_problem(name: str, value: object) -> tuple[str, str] | None:
    problem = header_name_problem(name)
    if problem:
        return "headers", problem
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        return f"headers.{name}", "must be a string"
    problem = header_value_problem(value) if type(value) is str else None
    return (f"headers.{name}", problem) if problem else None


def _parse_body(raw: dict[str, Any]) -> bytes | None:
    if raw.get("body") is not None and raw.get("body_base64") is not None:
        raise JobError("body", "give either body or body_base64, not both")
    text = _want(raw, "body", str, "a string")
    if text is not None:
        return str(text).encode()
    encoded = _want(raw, "body_base64", str, "a base64 string")
    return _b64(encoded, "body_base64") if encoded is not None else None


def _parse_inline(raw: object) -> dict[str, Any] | None:
    """The fields of an ``InlineProfile`` (``agent.jobs.model`` builds it)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise JobError("inline_profile", "must be an object with a keystore")
    keystore = raw.get("keystore")
    if not isinstance(keystore, dict):
        raise JobError(
            "inline_profile.keystore", "is required: {type, data_base64, password, alias}"
        )
    data = keystore.get("data_base64")
    if not isinstance(data, str) or not data:
        raise JobError(
            "inline_profile.keystore.data_base64", "is required (base64 of the keystore)"
        )
    trust = raw.get("truststore_pem")
    if trust is not None and not isinstance(trust, str):
        raise JobError("inline_profile.truststore_pem", "must be a PEM string")
    for key in ("type", "password", "alias"):
        if keystore.get(key) is not None and not isinstance(keystore[key], str):
            raise JobError(f"inline_profile.keystore.{key}", "must be a string")
    return {
        "keystore_data": _b64(data, "inline_profile.keystore.data_base64"),
        "keystore_type": keystore.get("type"),
        "password": keystore.get("password"),
        "alias": keystore.get("alias"),
        "truststore_pem": trust.encode() if trust else None,
        "sni": _parse_sni(raw.get("sni"), "inline_profile.sni"),
        **_parse_wss(raw.get("wss")),
    }


def _parse_wss(raw: object) -> dict[str, str]:
    """``inline_profile.wss``: {username, password, password_type} for a WS-Security token."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise JobError(
            "inline_profile.wss", "must be an object: {username, password, password_type}"
        )
    out = {}
    for key in ("username", "password", "password_type"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise JobError(f"inline_profile.wss.{key}", "must be a string")
        if value is not None:
            out[f"wss_{key}"] = value
    if "wss_username" not in out or "wss_password" not in out:
        raise JobError("inline_profile.wss", "needs both username and password")
    kind = out.setdefault("wss_password_type", "text")
    if kind not in ("text", "digest"):
        raise JobError(
            "inline_profile.wss.password_type", f"must be text or digest, got {show(kind)}"
        )
    return out


def _parse_number(raw: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = _want(raw, name, (int, float), "a number")
    if value is None:
        return default
    if not lo <= value <= hi:
        raise JobError(name, f"must be between {lo:g} and {hi:g}, got {value!r}")
    return float(value)


def _check_unicode(raw: dict[str, Any], where: str = "", depth: int = 0) -> None:
    """Every text must be valid Unicode (a JSON ``"\\ud800"`` is not): jobs are stored as UTF-8."""
    for key, value in raw.items():
        if type(value) is dict and depth < 2:  # headers, inline_profile and its parts
            _check_unicode(value, f"{where}{key}.", depth + 1)
        for text in (key, value):
            if type(text) is str and not text.isascii():
                try:
                    text.encode()
                except UnicodeEncodeError:
                    raise JobError(f"{where}{key}", "holds a lone surrogate, not text") from None


def _unknown_fields(raw: dict[str, Any]) -> None:
    problems = []
    for name in sorted(set(raw) - JOB_FIELDS):
        close = difflib.get_close_matches(name, JOB_FIELDS, n=1)
        hint = (
            f"did you mean {close[0]!r}?" if close else f"fields: {', '.join(sorted(JOB_FIELDS))}"
        )
        problems.append((name, f"is not a job field; {hint}"))
    if problems:
        raise JobError.of(problems)


def _parse_id(raw: dict[str, Any]) -> str:
    given = _want(raw, "id", str, "a string")
    job_id = str(uuid.uuid4()) if given is None else given
    if not job_id.strip() or len(job_id) > MAX_ID_LENGTH:
        raise JobError("id", f"must be 1 to {MAX_ID_LENGTH} characters")
    return job_id


def _parse_topic(raw: dict[str, Any]) -> Topic:
    topic = raw.get("topic")
    if topic is None:
        raise JobError("topic", "is required: RESTProbe or SOAPProbe")
    if topic not in TOPICS:
        raise JobError("topic", f"must be RESTProbe or SOAPProbe, got {show(topic)}")
    return topic  # type: ignore[no-any-return]


def _parse_method(raw: dict[str, Any]) -> str:
    method = _want(raw, "method", str, "a string") or (
        "POST" if raw.get("topic") == "SOAPProbe" else "GET"
    )
    if not is_token(method):
        raise JobError("method", f"{show(method)} is not an HTTP method (an RFC 9110 token)")
    if method.upper() not in METHODS:
        raise JobError("method", f"must be one of {', '.join(METHODS)}, got {show(method)}")
    return method.upper()


def _parse_soap_version(raw: dict[str, Any]) -> str:
    soap_version = str(_want(raw, "soap_version", (str, int, float), "1.1 or 1.2") or "1.1")
    if soap_version not in ("1.1", "1.2"):
        raise JobError("soap_version", f"must be 1.1 or 1.2, got {show(soap_version)}")
    return soap_version


def _parse_attempts(raw: dict[str, Any]) -> int:
    attempts = _parse_number(raw, "max_attempts", 1, 1, 20)
    if attempts != int(attempts):
        raise JobError("max_attempts", "must be a whole number")
    return int(attempts)


def _parse_not_before(raw: dict[str, Any]) -> str | None:
    """``not_before``: an RFC 3339 time with its offset; kept normalised (UTC, seconds)."""
    value = _want(raw, "not_before", str, "an RFC 3339 time such as 2026-12-03T10:00:00Z")
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
        if when.tzinfo is None or "T" not in value.upper():
            raise ValueError("no offset")
        utc = when.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise JobError(
            "not_before",
            "must be an RFC 3339 time with an offset, e.g. 2026-12-03T10:00:00Z; "
            f"got {show(value)}",
        ) from None
    return utc.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_priority(raw: dict[str, Any]) -> int:
    value = raw.get("priority")
    if value is None:
        return 0
    if type(value) is not int or not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        raise JobError(
            "priority",
            f"must be a whole number from -{MAX_PRIORITY} to {MAX_PRIORITY} (higher first)",
        )
    return value


def _parse_credentials(raw: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    problems: list[tuple[str, str]] = []
    profile = _collect(problems, _want, raw, "protocol_profile", str, "a profile name")
    inline = _collect(problems, _parse_inline, raw.get("inline_profile"))
    if problems:
        raise JobError.of(problems)
    if profile and inline:
        raise JobError("inline_profile", "give either protocol_profile or inline_profile, not both")
    return profile or None, inline


def _collect(problems: list[tuple[str, str]], parse: Callable[..., T], *args: Any) -> T | None:
    """``parse(*args)``, or None with its problems added to ``problems``."""
    try:
        return parse(*args)
    except JobError as exc:
        problems.extend(exc.problems)
        return None


def parse_job(raw: object) -> dict[str, Any]:
    """The fields of a ``Job`` (``inline_profile`` as the fields of an ``InlineProfile``), or
    ``JobError`` listing every problem found."""
    if not isinstance(raw, dict):
        raise JobError("(job)", f"must be a JSON object, got {type(raw).__name__}")
    bad: list[tuple[str, str]] = []  # every problem, so one round of fixes is enough
    _check_unicode(raw)  # first: the parsers below encode text
    _collect(bad, _unknown_fields, raw)
    job_id = _collect(bad, _parse_id, raw)
    topic = _collect(bad, _parse_topic, raw)
    endpoint = _collect(bad, _parse_endpoint, raw.get("endpoint"))
    method = _collect(bad, _parse_method, raw)
    headers = _collect(bad, _parse_headers, raw)
    body = _collect(bad, _parse_body, raw)
    soap_action = _collect(bad, _want, raw, "soap_action", str, "a string")
    soap_version = _collect(bad, _parse_soap_version, raw)
    sni = _collect(bad, _parse_sni, raw.get("sni"), "sni")
    timeout = _collect(bad, _parse_number, raw, "timeout", 60.0, 0.001, 86400)
    attempts = _collect(bad, _parse_attempts, raw)
    not_before = _collect(bad, _parse_not_before, raw)
    priority = _collect(bad, _parse_priority, raw)
    credentials = _collect(bad, _parse_credentials, raw)
    if bad:
        raise JobError.of(bad)
    assert job_id and topic and endpoint and method and soap_version and timeout and attempts
    assert headers is not None and credentials is not None
    return {
        "id": job_id,
        "topic": topic,
        "endpoint": endpoint,
        "method": method,
        "headers": headers,
        "body": body,
        "soap_action": soap_action,
        "soap_version": soap_version,
        "protocol_profile": credentials[0],
        "inline_profile": credentials[1],
        "sni": sni,
        "timeout": timeout,
        "max_attempts": attempts,
        "not_before": not_before,
        "priority": priority or 0,
    }
