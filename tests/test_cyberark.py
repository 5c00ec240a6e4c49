"""CyberArk CCP as a credential source: a profile's keystore password, or the keystore itself,
from a CCP object, fetched over mutual TLS with the agent's own certificate and AppID.

The CCP is ``tests/support/ccp.py`` (written from CCP's documented behaviour) on 127.0.0.1 under
the name ``ccp.test``, which only ``agent.resolve`` knows; the partner is the mTLS demo server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commands.demo.demoserver import DemoServer
from agent.config.config import AgentConfig, load_config
from agent.errors import ConfigError
from tests.support.ccp import CCPServer
from tests.support.cli import arun_agent, log_line, start_daemon
from tests.support.configs import P, write_config
from tests.support.engines import running_engine
from tests.support.health import free_port, get, samples
from tests.support.jobs import job_fields, make_job
from tests.support.pki import P12_PASSWORD, PKI

AGENT_P12_PASSWORD = "ccp-Agent-Pass-9"
SAFE = "MTLS"


@pytest.fixture
def ccp(pki: PKI, tmp_path: Path) -> Iterator[CCPServer]:
    issued = pki.ca.issue("ccp.test", names=("ccp.test",))
    cert, key = issued.write_pem(tmp_path, "ccp-server")
    server = CCPServer(pki.ca, cert, key, apps={"ServiceNow_MID_Server": {"client-two"}})
    server.add(SAFE, "partner-p12-password", P12_PASSWORD)
    server.add(
        SAFE, "partner-keystore", base64.b64encode(pki.client_one.pkcs12(P12_PASSWORD)).decode()
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def ccp_config(directory: Path, pki: PKI, ccp: CCPServer, partner_port: int, **extra: str) -> Path:
    """Profile ``ark``: keystore file, password from CCP; ``vaulted``: keystore and password
    both from CCP (in safe ``MTLS``); the agent reaches CCP with client-two's certificate."""
    (directory / "one.p12").write_bytes(pki.client_one.pkcs12(P12_PASSWORD))
    (directory / "agent-ccp.p12").write_bytes(pki.client_two.pkcs12(AGENT_P12_PASSWORD))
    ca = pki.write_ca(directory)
    params = {
        "name": "ark-agent",
        "url": f"sqlite:///{directory / 'queue.db'}",
        "agent.resolve": "alpha.test:127.0.0.1,ccp.test:127.0.0.1",
        "ext.cred.use_cyberark": "true",
        "ext.cred.ccp_endpoint": ccp.endpoint,
        "ext.cred.cyberark.cert_path": "agent-ccp.p12",
        "ext.cred.cyberark.truststore": str(ca),
        "ext.cred.safe_name": SAFE,
        f"{P}.ark.path": "one.p12",
        f"{P}.ark.cyberark.password_id": "partner-p12-password",
        f"{P}.ark.truststore": str(ca),
        f"{P}.ark.port": str(partner_port),
        f"{P}.vaulted.cyberark.keystore_id": f"{SAFE}:partner-keystore",
        f"{P}.vaulted.cyberark.password_id": "partner-p12-password",
        f"{P}.vaulted.truststore": str(ca),
        **extra,
    }
    secure = {"ext.cred.cyberark.cert_password": AGENT_P12_PASSWORD}
    return write_config(directory, params, secure)


def loaded(directory: Path, pki: PKI, ccp: CCPServer, port: int, **extra: str) -> AgentConfig:
    return load_config(ccp_config(directory, pki, ccp, port, **extra), env={})


def secret_free(text: str, pki: PKI) -> None:
    assert P12_PASSWORD not in text and AGENT_P12_PASSWORD not in text
    assert base64.b64encode(pki.client_one.pkcs12(P12_PASSWORD)).decode()[:40] not in text


async def test_jobs_use_the_password_and_the_keystore_ccp_holds(
    tmp_path: Path, pki: PKI, ccp: CCPServer, mtls_server: DemoServer
) -> None:
    config = loaded(tmp_path, pki, ccp, mtls_server.port)
    async with running_engine(config) as engine:
        for profile in ("ark", "vaulted", "ark"):
            result = await engine.run(make_job(f"j-{profile}", mtls_server.port, profile=profile))
            assert result.status == 200, result
            assert "client-one" in (result.tls.client_certificate or "")
    asked = {(r["AppID"], r["Safe"], r["Object"], r["client"]) for r in ccp.requests}
    assert asked == {
        ("ServiceNow_MID_Server", SAFE, "partner-p12-password", "client-two"),
        ("ServiceNow_MID_Server", SAFE, "partner-keystore", "client-two"),
    }
    assert len(ccp.requests) == 2  # each object once, the second job of ark asked nothing


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({f"{P}.ark.cyberark.password_id": "no-such-object"}, "APPAP004E"),
        ({"ext.cred.app_id": "Someone_Else"}, "APPAP282E"),
    ],
)
async def test_a_refusal_ends_the_job_with_kind_cyberark_naming_object_and_code(
    tmp_path: Path,
    pki: PKI,
    ccp: CCPServer,
    mtls_server: DemoServer,
    extra: dict[str, str],
    expected: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = loaded(tmp_path, pki, ccp, mtls_server.port, **extra)
    async with running_engine(config) as engine:
        result = await engine.run(make_job("refused", mtls_server.port, profile="ark"))
    assert result.error is not None and result.error.kind == "cyberark", result
    assert expected in result.error.message
    assert f"object {SAFE}:" in result.error.message
    secret_free(json.dumps(result.to_dict()) + caplog.text, pki)


async def test_a_client_certificate_ccp_does_not_trust_is_refused_in_the_handshake(
    tmp_path: Path, pki: PKI, ccp: CCPServer, mtls_server: DemoServer
) -> None:
    (tmp_path / "stranger.p12").write_bytes(pki.stranger.pkcs12(AGENT_P12_PASSWORD))
    extra = {"ext.cred.cyberark.cert_path": "stranger.p12"}
    config = loaded(tmp_path, pki, ccp, mtls_server.port, **extra)
    async with running_engine(config) as engine:
        result = await engine.run(make_job("stranger", mtls_server.port, profile="ark"))
    assert result.error is not None and result.error.kind == "cyberark", result
    assert "cannot reach" in result.error.message and ccp.requests == []


async def test_while_ccp_is_down_the_last_good_value_is_served_and_said_so(
    tmp_path: Path,
    pki: PKI,
    ccp: CCPServer,
    mtls_server: DemoServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = loaded(tmp_path, pki, ccp, mtls_server.port)
    async with running_engine(config) as engine:
        first = await engine.run(make_job("before", mtls_server.port, profile="vaulted"))
        assert first.status == 200
        ccp.down = True
        client = engine.cyberark
        assert client is not None
        with caplog.at_level(logging.WARNING):
            await client.refresh()
        problems = client.problems()  # the keystore and its password
        assert [p.split(":", 2)[1] for p in problems] == [
            "partner-keystore",
            "partner-p12-password",
        ]
        assert all("APPAP009E" in p and "serving the value fetched" in p for p in problems)
        during = await engine.run(make_job("during", mtls_server.port, profile="vaulted"))
        assert during.status == 200, during
        ccp.down = False
        await client.refresh()
        assert client.problems() == []
    secret_free(caplog.text, pki)


async def test_a_changed_keystore_in_ccp_reaches_new_connections(
    tmp_path: Path, pki: PKI, ccp: CCPServer, mtls_server: DemoServer
) -> None:
    config = loaded(tmp_path, pki, ccp, mtls_server.port)
    async with running_engine(config) as engine:
        before = await engine.run(make_job("old", mtls_server.port, profile="vaulted"))
        assert "client-one" in (before.tls.client_certificate or "")
        rotated = base64.b64encode(pki.client_two.pkcs12(P12_PASSWORD)).decode()
        ccp.add(SAFE, "partner-keystore", rotated)
        assert engine.cyberark is not None
        await engine.cyberark.refresh()
        after = await engine.run(make_job("new", mtls_server.port, profile="vaulted"))
        assert after.status == 200, after
        assert "client-two" in (after.tls.client_certificate or "")


async def test_agent_validate_reaches_ccp_and_reports_the_profiles(
    tmp_path: Path, pki: PKI, ccp: CCPServer, mtls_server: DemoServer
) -> None:
    config = ccp_config(tmp_path, pki, ccp, mtls_server.port)
    ran = await arun_agent("-c", str(config), "validate", "--json")
    assert ran.returncode == 0, ran
    report = {p["name"]: p for p in json.loads(ran.stdout)["profiles"]}
    assert set(report) == {"ark", "vaulted"}
    assert all("client-one" in (p["subject"] or "") for p in report.values())
    at = f"material from CyberArk CCP at {ccp.endpoint}"
    assert (
        f"{at} (password object partner-p12-password, keystore file " in report["ark"]["notes"][0]
    )
    assert report["vaulted"]["notes"][0] == (
        f"{at} (keystore object {SAFE}:partner-keystore, password object partner-p12-password)"
    )
    secret_free(ran.stdout + ran.stderr, pki)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({f"{P}.x.cyberark.password_id": "o"}, "ext.cred.use_cyberark"),
        ({f"{P}.x.cyberark.keystore_id": "s:o", "ext.cred.use_cyberark": "true"}, "ccp_endpoint"),
        (
            {
                f"{P}.x.cyberark.keystore_id": "s:o",
                f"{P}.x.path": "a.p12",
                "ext.cred.use_cyberark": "true",
                "ext.cred.ccp_endpoint": "https://ccp.test/AIMWebService/api/Accounts",
            },
            "more than one keystore source",
        ),
        ({"ext.cred.timeout": "soon"}, "ext.cred.timeout"),
    ],
)
def test_config_errors_name_the_parameter(
    tmp_path: Path, params: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, params), env={})
    assert named in str(caught.value)


async def test_the_daemon_says_in_readyz_and_metrics_that_ccp_is_down_and_keeps_working(
    tmp_path: Path, pki: PKI, ccp: CCPServer, mtls_server: DemoServer
) -> None:
    port = free_port()
    extra = {"agent.health.listen": f"127.0.0.1:{port}", "ext.cred.cyberark.cache_seconds": "1"}
    config = ccp_config(tmp_path, pki, ccp, mtls_server.port, **extra)
    proc = await start_daemon(config)
    base = f"http://127.0.0.1:{port}"
    try:
        await log_line(proc, "health and metrics on")

        async def run(job_id: str) -> dict[str, object]:
            job = json.dumps(job_fields(job_id, mtls_server.port, profile="vaulted"))
            assert (await arun_agent("-c", str(config), "enqueue", "-", input=job)).returncode == 0
            ran = await arun_agent("-c", str(config), "result", job_id, "--wait", "30")
            result: dict[str, object] = json.loads(ran.stdout)
            return result

        assert (await run("up"))["status"] == 200
        ccp.down = True
        deadline = asyncio.get_running_loop().time() + 30
        while True:  # the daemon's refresher runs every second: wait for it to notice
            code, text = await get(f"{base}/readyz")
            reasons = json.loads(text)["reasons"]
            if any(r.startswith("cyberark: object MTLS:") for r in reasons):
                break
            assert asyncio.get_running_loop().time() < deadline, reasons
            await asyncio.sleep(0.2)
        assert code == 503 and any("APPAP009E" in r for r in reasons)
        assert (await run("down"))["status"] == 200  # the last good values still serve
        got = samples((await get(f"{base}/metrics"))[1])
        assert got[("agent_cyberark_errors_total", ())] >= 1
        status = json.loads((await get(f"{base}/status.json"))[1])
        assert {p["name"]: p["source"] for p in status["profiles"]}["vaulted"] == "cyberark"
        secret_free(text + json.dumps(status), pki)
    finally:
        proc.terminate()
        await proc.wait()
