"""The fuzz targets' contracts, as plain functions of the input bytes.

Each ``check_*`` feeds one input to a parser and fails (raises anything but the parser's own
error) when the contract breaks: the parser returns a value or raises its documented error,
never another exception, and what it returns keeps the invariants below. The atheris runner
(``tests/fuzz/run.py``) calls these under coverage guidance; the regression tests call them on
the exact inputs that once crashed.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from agent.commands.cli import parse_jobs
from agent.config.config import AgentConfig, from_parameters
from agent.config.parameters import Parameter, is_secret, parse_parameters
from agent.errors import ConfigError, JobError
from agent.http.soap import MAX_DETAIL, parse_response
from agent.jobs.model import Job
from agent.queues.base import dumps

MAX_INPUT = 64 * 1024  # bounds every input, so that no run can take long on size alone
ENV_MARK = b"\n--env--\n"  # config inputs: config.xml, then NAME=VALUE lines for MID_CONFIG_NAME
BASE_DIR = Path("/nonexistent/agent-fuzz")
MIN_SECRET = 6  # shorter passwords may well appear in a message by coincidence


class ContractBroken(AssertionError):
    """An invariant failed for this input."""


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ContractBroken(what)


def _hidden(secrets: list[str], text: str, whole: bytes, where: str, baseline: str = "") -> None:
    """No secret that the input holds once (only as a secret) shows in ``text`` more often than
    in ``baseline``, the same text made without the secrets."""
    for secret in secrets:
        if len(secret) >= MIN_SECRET and whole.count(secret.encode("utf-8", "replace")) == 1:
            shown = text.count(secret) > baseline.count(secret)
            _require(not shown, f"a secret of the input shows in {where}: {text!r}")


# ------------------------------------------------------------------------------------- jobs


def _job_secrets(raw: object) -> list[str]:
    if not isinstance(raw, dict):
        return []
    inline = raw.get("inline_profile")
    inline = inline if isinstance(inline, dict) else {}
    found = [
        (inline.get("keystore") or {}).get("password")
        if isinstance(inline.get("keystore"), dict)
        else None,
        (inline.get("wss") or {}).get("password") if isinstance(inline.get("wss"), dict) else None,
    ]
    headers = raw.get("headers")
    if isinstance(headers, dict):
        found += [v for k, v in headers.items() if k.lower() in ("authorization", "cookie")]
    return [s for s in found if isinstance(s, str)]


def _check_job_invariants(job: Job) -> None:
    _require(Job.from_dict(job.to_dict()) == job, "to_dict/from_dict does not round-trip")
    stored = orjson.loads(dumps(job.to_dict()))  # as a queue stores and claims it
    _require(Job.from_dict(stored) == job, "the stored form does not round-trip")
    if job.inline_profile is not None:
        secret = job.inline_profile.password or job.inline_profile.wss_password
        if secret and len(secret) >= MIN_SECRET and secret not in job.endpoint + job.id:
            # the secret may be a piece of the repr's own words ("ystore" in "keystore"):
            # what counts is whether showing the job shows more of it than with it taken out
            hidden = replace(job.inline_profile, password=None, wss_password=None)
            shown = repr(job).count(secret) - repr(replace(job, inline_profile=hidden)).count(
                secret
            )
            _require(shown <= 0, "repr(job) shows an inline password")


def check_job(data: bytes) -> None:
    """bytes → JSON → ``Job.from_dict``: a Job that round-trips, or JobError."""
    if len(data) > MAX_INPUT:
        return
    try:
        raw: Any = json.loads(data)
    except (ValueError, RecursionError):
        return  # not JSON: the JSON layer's business, not the job parser's
    try:
        job = Job.from_dict(raw)
    except JobError as exc:
        _hidden(_job_secrets(raw), str(exc), data, "the JobError")
        return
    _check_job_invariants(job)


def check_enqueue(data: bytes) -> None:
    """bytes → text → ``parse_jobs`` (what ``agent enqueue`` reads): jobs, or JobError."""
    if len(data) > MAX_INPUT:
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # the file reader's business
    try:
        jobs = parse_jobs(text)
    except JobError:
        return
    _require(bool(jobs), "parse_jobs returned no job and no error")
    for job in jobs:
        _check_job_invariants(job)


# ------------------------------------------------------------------------------------ config


def split_config_input(data: bytes) -> tuple[bytes, dict[str, str]]:
    """config.xml bytes and the ``MID_CONFIG_*`` environment that the input carries."""
    xml, _, tail = data.partition(ENV_MARK)
    env = {}
    for line in tail.decode("utf-8", "replace").splitlines():
        name, sep, value = line.partition("=")
        if sep and "\x00" not in name + value:
            env["MID_CONFIG_" + name] = value
    return xml, env


def check_config(data: bytes) -> None:
    """bytes → ``parse_parameters`` → ``from_parameters`` (with env overrides): config or
    ConfigError; no secret in the error or the repr; every profile named for its key."""
    if len(data) > MAX_INPUT:
        return
    xml, env = split_config_input(data)
    try:
        params = parse_parameters(xml)
    except ConfigError:
        return
    secrets = [p.value for p in params.values() if is_secret(p.name)]
    secrets += [v.strip() for k, v in env.items() if is_secret(k)]
    try:
        cfg = from_parameters(params, base_dir=BASE_DIR, env=env)
    except ConfigError as exc:
        _hidden(secrets, str(exc), data, "the ConfigError")
        return
    _require(isinstance(cfg, AgentConfig), "from_parameters returned no AgentConfig")
    for key, profile in cfg.profiles.items():
        _require(bool(profile.name) and profile.name == key, f"profile {key!r} is misnamed")
    _hidden(secrets, repr(cfg), data, "repr(config)", _without_secrets(params, env))


def _without_secrets(params: dict[str, Parameter], env: dict[str, str]) -> str:
    """repr of the config built with every secret blanked: what it shows by itself. A secret
    may equal a default ("8388608" is max_response_bytes) or a piece of the repr's words."""
    blank = {k: replace(p, value="") if is_secret(p.name) else p for k, p in params.items()}
    quiet = {k: "" if is_secret(k) else v for k, v in env.items()}
    try:
        return repr(from_parameters(blank, base_dir=BASE_DIR, env=quiet))
    except ConfigError:
        return ""


# -------------------------------------------------------------------------------------- SOAP


def check_soap(data: bytes) -> None:
    """bytes → ``parse_response`` for 1.1 and 1.2: never raises; the envelope, not the call's
    version, decides the fault; the detail stays bounded."""
    if len(data) > MAX_INPUT:
        return
    answers = [parse_response(data, version=v) for v in ("1.1", "1.2")]
    _require(answers[0].fault == answers[1].fault, "the fault depends on the call's version")
    for answer in answers:
        _require(answer.problem is None or isinstance(answer.problem, str), "problem not text")
        fault = answer.fault
        if fault is not None:
            _require(isinstance(fault.code, str) and isinstance(fault.message, str), "fault")
            _require(fault.detail is None or len(fault.detail) <= MAX_DETAIL + 1, "detail size")


TARGETS = {
    "job": check_job,
    "enqueue": check_enqueue,
    "config": check_config,
    "soap": check_soap,
}
