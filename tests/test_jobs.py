"""The job model: validation names the offending field; results round-trip."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from agent.errors import JobError
from agent.jobs import Job, Result, TLSInfo

BASE: dict[str, Any] = {"topic": "RESTProbe", "endpoint": "https://api.example/x"}


def test_minimal_job_gets_defaults_and_an_id() -> None:
    job = Job.from_dict(BASE)
    assert job.id and job.method == "GET" and job.timeout == 60 and job.max_attempts == 1
    assert job.soap_version == "1.1" and job.sni is None


def test_full_job_round_trips() -> None:
    raw = {
        **BASE,
        "id": "j-1",
        "method": "post",
        "headers": {"X-A": "1"},
        "body_base64": base64.b64encode(b"\x00\xff").decode(),
        "protocol_profile": "partner",
        "sni": "Other.Example",
        "timeout": 5,
        "max_attempts": 3,
    }
    job = Job.from_dict(raw)
    assert job.method == "POST" and job.body == b"\x00\xff" and job.sni == "other.example"
    assert Job.from_dict(job.to_dict()) == job


def test_inline_profile_is_parsed_and_round_trips() -> None:
    raw = {
        **BASE,
        "inline_profile": {
            "keystore": {"type": "pkcs12", "data_base64": "AAEC", "password": "pw", "alias": "a"},
            "truststore_pem": "-----BEGIN CERTIFICATE-----",
            "sni": False,
        },
    }
    job = Job.from_dict(raw)
    assert job.inline_profile is not None and job.inline_profile.keystore_data == b"\x00\x01\x02"
    assert "pw" not in repr(job.inline_profile)
    assert Job.from_dict(job.to_dict()) == job


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"topic": "FTPProbe"}, "topic"),
        ({"endpoint": None}, "endpoint"),
        ({"endpoint": "http://plain.example/"}, "endpoint"),
        ({"endpoint": "https://host:99999/"}, "endpoint"),
        ({"method": "BREW"}, "method"),
        ({"headers": {"X": ["a"]}}, "headers.X"),
        ({"headers": {"X": "a\r\nInjected: 1"}}, "headers.X"),
        ({"body": "a", "body_base64": "YQ=="}, "body"),
        ({"body_base64": "!!"}, "body_base64"),
        ({"soap_version": "2.0"}, "soap_version"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"sni": "a b"}, "sni"),
        ({"sni": 3}, "sni"),
        ({"inline_profile": {"keystore": {}}}, "inline_profile.keystore.data_base64"),
        (
            {"protocol_profile": "p", "inline_profile": {"keystore": {"data_base64": "AA=="}}},
            "inline_profile",
        ),
        ({"colour": "red"}, "colour"),
        ({"id": ""}, "id"),
    ],
)
def test_invalid_jobs_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(JobError) as info:
        Job.from_dict({**BASE, **change})
    assert info.value.field == field
    assert repr(field) in str(info.value)


def test_result_round_trips_through_dict() -> None:
    result = Result(id="a", state="processed", status=200, body="ok", tls=TLSInfo(sni="x"))
    assert Result.from_dict(result.to_dict()) == result
    failed = Result.failed("b", "timeout", "no answer")
    assert Result.from_dict(failed.to_dict()) == failed
    assert failed.to_dict()["error"] == {"kind": "timeout", "message": "no answer"}


def test_result_to_dict_carries_every_field() -> None:
    """to_dict is written out by hand for speed: it must still carry every field there is."""
    from dataclasses import asdict

    from agent.jobs import ErrorInfo, SoapFault, TLSInfo

    result = Result(
        id="r",
        state="processed",
        status=500,
        headers={"A": "b"},
        body="x",
        body_base64="eA==",
        elapsed_ms=1.5,
        attempts=2,
        error=ErrorInfo("timeout", "slow"),
        soap_fault=SoapFault("c", "m", "d"),
        tls=TLSInfo("s", "TLSv1.3", "cipher", "CN=c", "CN=s"),
    )
    assert result.to_dict() == asdict(result)
    assert Result.from_dict(result.to_dict()) == result
    assert "body_base64" not in Result(id="r", state="processed").to_dict()
