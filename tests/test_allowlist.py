"""``agent.outbound.allow``: the matcher's rule; denials through the agent that never connect."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.commands.demo.demoserver import DemoServer
from agent.config.config import load_config
from agent.engine.engine import Engine
from agent.errors import ConfigError, DestinationDenied
from agent.http.allowlist import PARAMETER, AllowList
from agent.jobs.model import Job
from tests.support.cli import arun_agent
from tests.support.configs import profile_config
from tests.support.jobs import make_job
from tests.support.pki import PKI

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------------------- the matcher


def test_empty_list_allows_everything() -> None:
    allow = AllowList.parse([])
    allow.check_name("anything.example")
    allow.check_name("192.0.2.1")
    assert allow.check_addresses("anything.example", ["192.0.2.1"]) == ["192.0.2.1"]


def test_host_globs_match_names_case_insensitively() -> None:
    allow = AllowList.parse(["*.partner.example", "API.example.com"])
    allow.check_name("a.partner.example")
    allow.check_name("deep.a.partner.example")
    allow.check_name("api.example.com.")
    allow.check_name("Api.Example.Com")
    for denied in ("partner.example", "evil-partner.example", "api.example.com.evil.test"):
        with pytest.raises(DestinationDenied) as info:
            allow.check_name(denied)
        assert denied in info.value.message and PARAMETER in info.value.message
        assert info.value.kind == "destination_denied"


def test_ip_literals_need_a_network_entry() -> None:
    allow = AllowList.parse(["10.0.0.0/8", "2001:db8::/32", "192.0.2.7", "*.partner.example"])
    allow.check_name("10.1.2.3")
    allow.check_name("2001:db8::5")
    allow.check_name("[2001:db8::5]")
    allow.check_name("192.0.2.7")
    for denied in ("192.0.2.8", "127.0.0.1", "2001:db9::1"):
        with pytest.raises(DestinationDenied, match=PARAMETER):
            allow.check_name(denied)
    with pytest.raises(DestinationDenied):
        AllowList.parse(["*.partner.example"]).check_name("10.1.2.3")


def test_network_only_list_lets_names_through_to_the_address_check_unless_proxied() -> None:
    allow = AllowList.parse(["10.0.0.0/8"])
    allow.check_name("partner.internal")
    with pytest.raises(DestinationDenied, match="proxy"):
        allow.check_name("partner.internal", proxied=True)
    AllowList.parse(["*.internal", "10.0.0.0/8"]).check_name("partner.internal", proxied=True)


def test_address_check_keeps_allowed_addresses_and_denies_when_none_is_left() -> None:
    allow = AllowList.parse(["*.partner.example", "10.0.0.0/8", "fd00::/8"])
    kept = allow.check_addresses("a.partner.example", ["203.0.113.5", "10.9.9.9", "fd00::1"])
    assert kept == ["10.9.9.9", "fd00::1"]
    assert allow.address_allowed("::ffff:10.1.1.1")  # an IPv4-mapped address is the IPv4 one
    with pytest.raises(DestinationDenied) as info:
        allow.check_addresses("a.partner.example", ["127.0.0.1", "::1"])
    message = info.value.message
    assert "a.partner.example" in message and "127.0.0.1" in message and PARAMETER in message
    only_names = AllowList.parse(["*.partner.example"])
    assert only_names.check_addresses("a.partner.example", ["127.0.0.1"]) == ["127.0.0.1"]


def test_malformed_network_names_the_parameter() -> None:
    with pytest.raises(ConfigError, match=PARAMETER):
        AllowList.parse(["10.0.0.0/33"])
    with pytest.raises(ConfigError, match=PARAMETER):
        AllowList.parse(["10.0.0.300/8"])


# ------------------------------------------------------------------------- through the agent


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.accepted = 0
        self.port = 0

    async def _accept(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    counting = Listener()
    server = await asyncio.start_server(counting._accept, "127.0.0.1", 0)
    counting.port = server.sockets[0].getsockname()[1]
    async with server:
        yield counting


async def run_job(config: Path, job: Job) -> dict[str, object]:
    engine = Engine(load_config(config))
    try:
        result = await engine.run(job)
    finally:
        await engine.close()
    return result.to_dict()


async def test_denied_host_ends_without_a_connection(
    tmp_path: Path, pki: PKI, listener: Listener
) -> None:
    config = profile_config(tmp_path, pki, listener.port, **{PARAMETER: "beta.test,127.0.0.0/8"})
    job = {
        "id": "denied-name",
        "topic": "RESTProbe",
        "endpoint": f"https://alpha.test:{listener.port}/echo",
        "protocol_profile": "partner",
    }
    ran = await arun_agent("-c", str(config), "call", "-", input=json.dumps(job))
    assert ran.returncode == 1, ran.stderr
    result = json.loads(ran.stdout)
    assert result["state"] == "error" and result["error"]["kind"] == "destination_denied"
    assert "alpha.test" in result["error"]["message"]
    assert PARAMETER in result["error"]["message"]
    assert listener.accepted == 0


async def test_allowed_name_resolving_outside_the_networks_is_denied(
    tmp_path: Path, pki: PKI, listener: Listener
) -> None:
    """``agent.resolve`` maps the allowed name to 127.0.0.1, outside 10.0.0.0/8: no connection."""
    config = profile_config(tmp_path, pki, listener.port, **{PARAMETER: "alpha.test,10.0.0.0/8"})
    result = await run_job(config, make_job("denied-address", listener.port, host="alpha.test"))
    error = result["error"]
    assert isinstance(error, dict) and error["kind"] == "destination_denied", result
    assert "127.0.0.1" in error["message"] and "alpha.test" in error["message"]
    assert PARAMETER in error["message"]
    assert listener.accepted == 0


async def test_allowed_destination_is_called(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    config = profile_config(
        tmp_path, pki, mtls_server.port, **{PARAMETER: "*.test,127.0.0.0/8,::1/128"}
    )
    result = await run_job(config, make_job("allowed", mtls_server.port, host="alpha.test"))
    assert (result["state"], result["status"], result["error"]) == ("processed", 200, None)


async def test_allowed_by_address_then_denied_after_the_list_changes(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer, listener: Listener
) -> None:
    """One engine, reloaded: the next job runs on the new state's list, not the old one."""
    config = profile_config(tmp_path, pki, mtls_server.port, **{PARAMETER: "127.0.0.0/8"})
    engine = Engine(load_config(config))
    try:
        first = await engine.run(make_job("by-address", mtls_server.port, host="alpha.test"))
        assert first.state == "processed" and first.status == 200
        narrowed = profile_config(tmp_path, pki, listener.port, **{PARAMETER: "10.0.0.0/8"})
        engine.swap(load_config(narrowed))
        second = await engine.run(make_job("narrowed", listener.port, host="alpha.test"))
        assert second.error is not None and second.error.kind == "destination_denied"
        assert listener.accepted == 0
    finally:
        await engine.close()
