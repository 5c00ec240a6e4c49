"""``agent enqueue`` as a user types it: a bad job exits 2 with one line naming every bad field,
checked against the config.xml it was given; nothing is queued."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import agent_cmd, run_agent
from tests.support.configs import write_config

pytestmark = pytest.mark.timeout(120)

P = "mid.httpclient.protocol"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        {
            "url": f"sqlite:///{tmp_path / 'queue.db'}",
            f"{P}.p.path": "p.p12",
            f"{P}.PartnerB.path": "b.p12",
        },
    )


def job(**fields: Any) -> dict[str, Any]:
    return {"topic": "RESTProbe", "endpoint": "https://api.example/x", **fields}


def refused(config: Path, text: str) -> str:
    """Enqueue ``text`` from standard input; it must exit 2 with one line, which is returned."""
    ran = run_agent("-c", str(config), "enqueue", "-", input=text)
    assert ran.returncode == 2, (ran.stdout, ran.stderr)
    assert ran.stdout == ""
    [line] = ran.stderr.splitlines()
    assert line.startswith("agent: invalid job: ") and "Traceback" not in line
    return line


def test_a_bad_job_names_every_bad_field_and_suggests_the_misspelt_one(config: Path) -> None:
    text = json.dumps(
        {"topic": "RESTProbe", "endpont": "https://a.example/", "timeout": "soon", "method": "G T"}
    )
    line = refused(config, text)
    assert "job field 'endpont': is not a job field; did you mean 'endpoint'?" in line
    assert "job field 'endpoint': is required" in line
    assert "job field 'timeout': must be a number" in line
    assert "job field 'method': 'G T' is not an HTTP method" in line


def test_missing_and_null_fields_are_required_not_none(config: Path) -> None:
    line = refused(config, json.dumps({"topic": None, "endpoint": None}))
    assert "job field 'topic': is required" in line and "job field 'endpoint': is required" in line
    assert "None" not in line


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        ("Content-Length", "'Content-Length' frames the request"),
        ("proxy-connection", "'proxy-connection' frames the request"),
        ("HOST", "'HOST' cannot be set: the agent sends the endpoint's host (to reach that name"),
    ],
)
def test_framing_headers_are_refused_naming_headers(config: Path, header: str, needle: str) -> None:
    line = refused(config, json.dumps(job(headers={header: "1"})))
    assert "job field 'headers'" in line and needle in line
    if header == "HOST":
        assert "agent.resolve" in line and "sni" in line


def test_header_values_with_control_characters_are_refused(config: Path) -> None:
    line = refused(config, json.dumps(job(headers={"X-A": "1\u0000", "X-B": "a\tb"})))
    assert "job field 'headers.X-A': contains a line break or another control character" in line
    assert "X-B" not in line  # a tab is fine


@pytest.mark.parametrize(
    ("sni", "needle"),
    [
        ("off", "'off' is ambiguous: write true or false"),
        ("no", "'no' is ambiguous: write true or false"),
        ("maybe?", "'maybe?' is not a host name"),
        ("10.0.0.1", "is an IP address, which SNI cannot carry"),
    ],
)
def test_sni_takes_true_false_or_a_host_name(config: Path, sni: str, needle: str) -> None:
    line = refused(config, json.dumps(job(sni=sni)))
    assert "job field 'sni'" in line and needle in line


def test_inline_profile_sni_follows_the_same_rule(config: Path) -> None:
    inline = {"keystore": {"data_base64": "AAAA"}, "sni": "yes"}
    line = refused(config, json.dumps(job(inline_profile=inline)))
    assert "job field 'inline_profile.sni': 'yes' is ambiguous: write true or false" in line


def test_a_profile_sni_in_config_xml_follows_the_same_rule(tmp_path: Path) -> None:
    config = write_config(tmp_path, {f"{P}.p.sni": "off", f"{P}.p.path": "p.p12"})
    ran = run_agent("-c", str(config), "enqueue", "-", input=json.dumps(job()))
    assert ran.returncode == 2
    assert f"parameter {P}.p.sni" in ran.stderr and "write true or false" in ran.stderr


@pytest.mark.parametrize("host", ["2130706433", "0177.0.0.1", "127.1", "0x7f000001", "127.0.0.01"])
def test_non_canonical_ipv4_hosts_are_invalid_endpoints(config: Path, host: str) -> None:
    line = refused(config, json.dumps(job(endpoint=f"https://{host}:8443/x")))
    assert f"job field 'endpoint': host {host!r} is not a canonical IPv4 address" in line
    assert "127.0.0.1" in line


def test_a_scheme_that_is_no_profile_is_named(config: Path) -> None:
    line = refused(config, json.dumps(job(endpoint="gopher://x/", protocol_profile="p")))
    assert (
        "job field 'endpoint': scheme 'gopher' is neither https nor a protocol profile"
        " (config.xml defines: PartnerB, p)" in line
    )
    assert "unknown protocol profile 'p'" not in line


def test_an_unknown_protocol_profile_is_refused_listing_the_defined_ones(config: Path) -> None:
    line = refused(config, json.dumps(job(protocol_profile="partner")))
    assert (
        "job field 'protocol_profile': unknown protocol profile 'partner'"
        " (config.xml defines: PartnerB, p)" in line
    )


def test_profile_names_match_without_regard_to_case(config: Path) -> None:
    jobs = [
        job(id="scheme", endpoint="PartnerB://host/x"),
        job(id="lower", endpoint="partnerb://host/x"),
        job(id="named", protocol_profile="partnerb"),
    ]
    ran = run_agent("-c", str(config), "enqueue", "-", input=json.dumps(jobs))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["scheme", "lower", "named"]


NESTED = {
    "unclosed": "[" * 200_000,
    "arrays": "[" * 200_000 + "]" * 200_000,
    "objects": '{"a":' * 200_000 + "1" + "}" * 200_000,
}


@pytest.mark.parametrize("shape", NESTED)
def test_deeply_nested_input_is_refused_in_one_line(config: Path, shape: str) -> None:
    line = refused(config, NESTED[shape])
    assert "is nested deeper than 64 levels" in line


def test_malformed_json_is_refused_in_one_line(config: Path) -> None:
    line = refused(config, '{"topic": "RESTProbe", "endpoint": ')
    assert "job field '(input)': not JSON (line 1, column" in line


def run_with_env(config: Path, text: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MID_CONFIG_")}
    return subprocess.run(
        agent_cmd("-c", str(config), "enqueue", "-"),
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        env=base | env,
    )


def test_a_job_over_max_job_bytes_is_refused_naming_its_largest_field(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"url": f"sqlite:///{tmp_path / 'q.db'}", "agent.max_job_bytes": "4096"}
    )
    line = refused(config, json.dumps(job(body="x" * 5000, headers={"X-A": "y" * 100})))
    assert "job field 'body': is 5002 bytes" in line
    assert "over agent.max_job_bytes (4096 bytes)" in line
    # the body is stored as base64: a body under the limit as text can still be too big
    line = refused(config, json.dumps(job(body="x" * 3500)))
    assert "job field 'body'" in line and "over agent.max_job_bytes (4096 bytes)" in line
    keystore = {"data_base64": base64.b64encode(b"k" * 4000).decode()}
    line = refused(config, json.dumps(job(inline_profile={"keystore": keystore})))
    assert "job field 'inline_profile.keystore.data_base64'" in line


def test_max_job_bytes_can_be_set_from_the_environment(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"url": f"sqlite:///{tmp_path / 'q.db'}"})
    text = json.dumps(job(body="x" * 5000))
    ran = run_with_env(config, text, **{"MID_CONFIG_agent.max_job_bytes": "4096"})
    assert ran.returncode == 2 and "over agent.max_job_bytes (4096 bytes)" in ran.stderr
    ran = run_with_env(config, text)
    assert ran.returncode == 0, ran.stderr


def test_an_input_over_four_jobs_worth_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, {"url": f"sqlite:///{tmp_path / 'q.db'}", "agent.max_job_bytes": "4096"}
    )
    line = refused(config, "{" + "x" * 20_000)  # not JSON: parsing would say so
    assert "job field '(input)': is over 16384 bytes (4 x agent.max_job_bytes): split it" in line


def test_nothing_is_queued_when_one_job_of_several_is_bad(config: Path) -> None:
    lines = "\n".join(json.dumps(j) for j in [job(id="a"), job(id="b", sni="on")])
    line = refused(config, lines)
    assert "job field 'sni' of line 2: 'on' is ambiguous" in line
    ran = run_agent("-c", str(config), "result", "a")
    assert ran.returncode == 4
