"""Server pins: ``mid.httpclient.protocol.<p>.pin``, ``sha256:<base64>`` of the server leaf's
SubjectPublicKeyInfo (ghostunnel's form), checked after the handshake and before any byte of the
request is sent, on top of normal verification.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.hashes import SHA256

from agent.commands.demo.demoserver import DemoServer
from agent.config.config import load_config
from agent.errors import ConfigError
from agent.jobs.results import Result
from agent.tls.handshake import pin_of
from tests.support.cli import arun_agent
from tests.support.configs import P, profile_config
from tests.support.engines import running_engine
from tests.support.jobs import make_job
from tests.support.pki import PKI

OTHER_PIN = "sha256:" + base64.b64encode(hashlib.sha256(b"another key").digest()).decode()


async def test_a_matching_pin_lets_the_call_through_and_reuses_the_connection(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    pins = f"{OTHER_PIN}, {pin_of(pki.alpha.cert)}"  # during a key rotation: old and new
    config = load_config(
        profile_config(tmp_path, pki, mtls_server.port, **{f"{P}.partner.pin": pins}), env={}
    )
    async with running_engine(config) as engine:
        connections: list[bool] = []
        engine.transport.on_connection.append(connections.append)
        for i in range(2):
            result = await engine.run(make_job(f"pinned-{i}", mtls_server.port))
            assert result.status == 200, result
        assert connections == [True, False]


async def test_no_matching_pin_ends_before_the_request_naming_the_pin_seen(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    config = load_config(
        profile_config(tmp_path, pki, mtls_server.port, **{f"{P}.partner.pin": OTHER_PIN}),
        env={},
    )
    async with running_engine(config) as engine:
        result = await engine.run(make_job("mispinned", mtls_server.port, max_attempts=3))
        unpinned = await engine.run(make_job("two", mtls_server.port, profile="two"))
    assert result.error is not None and result.error.kind == "certificate_pin", result
    message = result.error.message
    assert pin_of(pki.alpha.cert) in message and f"{P}.partner.pin" in message
    assert result.attempts == 1  # not retried: the same key would be presented again
    assert unpinned.status == 200  # another profile is not affected
    assert [r["path"] for r in mtls_server.requests] == ["/echo"]  # only the unpinned job's


async def test_agent_call_reports_the_pin_kind(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    config = profile_config(tmp_path, pki, mtls_server.port, **{f"{P}.partner.pin": OTHER_PIN})
    job = {
        "id": "cli",
        "topic": "RESTProbe",
        "endpoint": f"https://alpha.test:{mtls_server.port}/echo",
        "protocol_profile": "partner",
    }
    ran = await arun_agent("-c", str(config), "call", "-", input=json.dumps(job))
    assert ran.returncode == 1, ran
    assert json.loads(ran.stdout)["error"]["kind"] == "certificate_pin"


@pytest.mark.parametrize(
    "value", ["sha1:AAAA", "sha256:not-base64!", "sha256:" + base64.b64encode(b"short").decode()]
)
def test_a_malformed_pin_is_refused_naming_the_parameter(
    tmp_path: Path, pki: PKI, value: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(profile_config(tmp_path, pki, 443, **{f"{P}.partner.pin": value}), env={})
    assert f"{P}.partner.pin" in str(caught.value) and "sha256:" in str(caught.value)


async def test_validate_lists_the_pins_and_sni_check_prints_the_server_pin(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    pin = pin_of(pki.alpha.cert)
    config = profile_config(tmp_path, pki, mtls_server.port, **{f"{P}.partner.pin": pin})
    ran = await arun_agent("-c", str(config), "validate", "--profile", "partner")
    assert ran.returncode == 0, ran
    assert f"{P}.partner.pin" in ran.stdout and pin in ran.stdout
    url = f"https://alpha.test:{mtls_server.port}/"
    checked = await arun_agent("-c", str(config), "sni-check", url, "--profile", "partner")
    assert f"pin:       {pin}" in checked.stdout, checked


async def test_the_result_carries_the_evidence_of_what_was_presented_to_whom(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    pin = pin_of(pki.alpha.cert)
    config = load_config(
        profile_config(tmp_path, pki, mtls_server.port, **{f"{P}.partner.pin": pin}), env={}
    )
    async with running_engine(config) as engine:
        pinned = await engine.run(make_job("evidence", mtls_server.port))
        plain = await engine.run(make_job("plain", mtls_server.port, profile="two"))
    tls = pinned.to_dict()["tls"]
    assert tls["address"] == f"127.0.0.1:{mtls_server.port}"
    assert tls["server_pin"] == pin
    assert tls["client_certificate_sha256"] == pki.client_one.cert.fingerprint(SHA256()).hex()
    assert tls["policy"] == {"pins_checked": True, "revocation": "off"}
    assert plain.to_dict()["tls"]["policy"] == {"pins_checked": False, "revocation": "off"}
    assert Result.from_dict(json.loads(json.dumps(pinned.to_dict()))) == pinned
