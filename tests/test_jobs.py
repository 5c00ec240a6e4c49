"""The job model: validation names the offending field; results round-trip."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from agent.errors import JobError
from agent.jobs.model import Job
from agent.jobs.results import Result, TLSInfo

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

    from agent.jobs.results import ErrorInfo, SoapFault, TLSInfo

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
        history=[{"attempt": 1, "kind": "timeout", "message": "slow", "at": "t", "status": None}],
        retry_at=1.5,
    )
    expected = asdict(result)
    tls = expected["tls"]
    tls["policy"] = {"pins_checked": tls.pop("pins_checked"), "revocation": tls.pop("revocation")}
    assert result.to_dict() == expected
    assert Result.from_dict(result.to_dict()) == result
    plain = Result(id="r", state="processed").to_dict()
    assert "body_base64" not in plain and "history" not in plain and "retry_at" not in plain


# -- framing, names and sizes (the same rules at enqueue and at claim) ------------------------

FRAMING = ["Transfer-Encoding", "content-length", "CONNECTION", "Keep-Alive", "Upgrade", "TE"]
FRAMING += ["Trailer", "Proxy-Authorization", "proxy-anything", "Host"]


@pytest.mark.parametrize("name", FRAMING)
def test_framing_headers_are_refused_naming_headers(name: str) -> None:
    with pytest.raises(JobError) as info:
        Job.from_dict({**BASE, "headers": {name: "x"}})
    assert info.value.field == "headers" and repr(name) in info.value.detail


@pytest.mark.parametrize("name", ["X A", "X:A", "", "X\r\nA", "Ä"])
def test_header_names_must_be_tokens(name: str) -> None:
    with pytest.raises(JobError) as info:
        Job.from_dict({**BASE, "headers": {name: "x"}})
    assert info.value.field == "headers" and "is not a header name" in info.value.detail


@pytest.mark.parametrize("value", ["a\x00", "a\x7f", "a\x85b", "a\rb", "\x1b[0m"])
def test_header_values_must_hold_no_control_character(value: str) -> None:
    with pytest.raises(JobError) as info:
        Job.from_dict({**BASE, "headers": {"X-A": value}})
    assert info.value.field == "headers.X-A"


def test_header_values_may_hold_tabs_and_text() -> None:
    job = Job.from_dict({**BASE, "headers": {"X-A": "a\tb", "X-B": "café", "X-N": 3}})
    assert job.headers == (("X-A", "a\tb"), ("X-B", "café"), ("X-N", "3"))


@pytest.mark.parametrize("method", ["GET\r\n", "GET /x HTTP/1.1", "G(T"])
def test_methods_must_be_tokens(method: str) -> None:
    with pytest.raises(JobError) as info:
        Job.from_dict({**BASE, "method": method})
    assert info.value.field == "method" and "is not an HTTP method" in info.value.detail


def test_every_bad_field_is_reported_the_first_as_field() -> None:
    with pytest.raises(JobError) as info:
        Job.from_dict({**BASE, "timeout": "soon", "method": "BREW", "sni": "off", "colr": 1})
    fields = [f for f, _ in info.value.problems]
    assert fields == ["colr", "method", "sni", "timeout"]
    assert info.value.field == "colr"
    assert str(info.value).count("job field ") == 4


def test_a_misspelt_field_gets_a_suggestion() -> None:
    with pytest.raises(JobError) as info:
        Job.from_dict({"topic": "RESTProbe", "endpoitn": "https://x/"})
    assert "did you mean 'endpoint'?" in str(info.value)


def test_null_fields_never_say_none() -> None:
    raw = {name: None for name in ("id", "topic", "endpoint", "method", "headers", "body")}
    raw |= {"sni": None, "timeout": None, "inline_profile": {"keystore": {"data_base64": None}}}
    with pytest.raises(JobError) as info:
        Job.from_dict(raw)
    assert "None" not in str(info.value)
    assert {f for f, _ in info.value.problems} == {
        "topic",
        "endpoint",
        "inline_profile.keystore.data_base64",
    }
    assert all("is required" in m for _, m in info.value.problems)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        ("FALSE", False),
        (" true ", True),
        ("Alpha.Test", "alpha.test"),
        ("localhost", "localhost"),
        ("a-b.c1.example", "a-b.c1.example"),
        ("x" * 63 + ".example", "x" * 63 + ".example"),
    ],
)
def test_sni_accepts_booleans_and_host_names(value: object, expected: object) -> None:
    from agent.jobs.names import sni_value

    assert sni_value(value) == expected


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("yes", "write true or false"),
        ("0", "write true or false"),
        ("On", "write true or false"),
        ("127.0.0.1", "IP address"),
        ("::1", "IP address"),
        ("a.b.123", "IP address"),
        ("-a.example", "label '-a'"),
        ("a-.example", "label 'a-'"),
        ("a..example", "label ''"),
        ("a_b.example", "label 'a_b'"),
        ("x" * 64 + ".example", "label"),
        (".".join(["abcdefghi"] * 26), "longer than 253"),
        ("bücher.example", "not ASCII"),
        ("", "is empty"),
        (3, "got 3"),
    ],
)
def test_sni_refuses_what_is_no_host_name(value: object, needle: str) -> None:
    from agent.jobs.names import sni_value

    with pytest.raises(ValueError, match=re.escape(needle)):
        sni_value(value)


def test_config_xml_sni_uses_the_same_rule() -> None:
    from agent.config.config import AgentConfig
    from agent.errors import ConfigError

    def sni(value: str) -> object:
        text = f'<parameters><parameter name="mid.httpclient.protocol.p.sni" value="{value}"/>'
        return AgentConfig.from_xml((text + "</parameters>").encode()).profiles["p"].sni

    assert sni("Alpha.Test") == "alpha.test" and sni("false") is False
    for bad in ("off", "1.2.3.4", "a_b"):
        with pytest.raises(ConfigError, match="mid.httpclient.protocol.p.sni"):
            sni(bad)


@pytest.mark.parametrize("host", ["2130706433", "0177.0.0.1", "127.1", "0x7f000001", "127.0.0.01"])
def test_non_canonical_ipv4_endpoints_are_refused(host: str) -> None:
    with pytest.raises(JobError) as info:
        Job.from_dict({**BASE, "endpoint": f"https://{host}/x"})
    assert info.value.field == "endpoint" and "127.0.0.1" in info.value.detail


@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "[::1]", "a1.example", "0x.example"])
def test_canonical_addresses_and_names_are_fine_endpoints(host: str) -> None:
    assert Job.from_dict({**BASE, "endpoint": f"https://{host}/x"}).endpoint


def test_a_claimed_row_over_the_limit_is_refused_by_its_length_unparsed() -> None:
    from agent.queues.base import claim_from, claim_of

    claim = claim_of("big", "{" + "x" * 2000, 1, 1, max_job_bytes=1024)  # not JSON either
    assert claim.problem is not None and "is 2001 bytes, over agent.max_job_bytes" in claim.problem
    claim = claim_of("wide", '"' + "€" * 500 + '"', 1, 1, max_job_bytes=1024)  # 1502 bytes
    assert claim.problem is not None and "is 1502 bytes" in claim.problem
    claim = claim_of("small", "{" + "x" * 100, 1, 1, max_job_bytes=1024)
    assert claim.problem is not None and "not JSON" in claim.problem
    claim = claim_from("sized", None, 1, 1, size=5000, max_job_bytes=1024)
    assert claim.problem is not None and "is 5000 bytes" in claim.problem


def test_a_claimed_row_nested_too_deep_is_refused_unparsed() -> None:
    from agent.queues.base import claim_of

    claim = claim_of("deep", "[" * 300_000 + "]" * 300_000, 1, 1, max_job_bytes=2**20)
    assert claim.problem is not None and "nested deeper than 64 levels" in claim.problem


def test_a_claimed_row_with_framing_headers_is_refused() -> None:
    import json

    from agent.queues.base import claim_of

    row = json.dumps({**BASE, "id": "te", "headers": {"Transfer-Encoding": "chunked"}})
    claim = claim_of("te", row, 1, 1)
    assert claim.problem is not None and "job field 'headers'" in claim.problem


def test_nesting_is_judged_without_parsing() -> None:
    from agent.jobs.jsonguard import nested_deeper

    assert not nested_deeper('{"a": [1, {"b": []}]}')
    assert not nested_deeper("[" * 64 + "]" * 64) and nested_deeper("[" * 65 + "]" * 65)
    assert nested_deeper("[" * 100_000)  # never closed
    assert not nested_deeper('["' + "[" * 1000 + '"]')  # brackets inside a string
    assert not nested_deeper('["\\"' + "{" * 1000 + '"]')  # ... after an escaped quote
    assert nested_deeper("[[]" * 65 + "]" * 65)


def test_the_largest_field_of_a_job_over_the_limit_is_named() -> None:
    from agent.commands.intake import check_size

    raw = {**BASE, "headers": {"X-Big": "y" * 3000}, "body": "x" * 100}
    job = Job.from_dict(raw)
    check_size(raw, job, 4096)
    with pytest.raises(JobError) as info:
        check_size(raw, job, 2048)
    assert info.value.field == "headers.X-Big"
    assert "over agent.max_job_bytes (2048 bytes)" in info.value.detail


def test_a_profile_scheme_and_another_protocol_profile_contradict() -> None:
    from agent.commands.intake import check_profiles

    job = Job.from_dict({**BASE, "endpoint": "a://host/x", "protocol_profile": "B"})
    with pytest.raises(JobError) as info:
        check_profiles(job, ["A", "b"])
    assert info.value.field == "protocol_profile" and "differs from" in info.value.detail
    check_profiles(Job.from_dict({**BASE, "endpoint": "A://host/x"}), ["a"])
