"""The transport's pool: shared by identities without mixing them, bounded in idle connections,
one session per runtime state's network."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from agent.commands.demo.demoserver import DemoServer
from agent.config.config import AgentConfig, load_config
from agent.engine.engine import Engine
from agent.errors import ConfigError
from agent.http.aiohttp_adapter import WatchedConnector
from agent.http.transport import Network, Transport
from agent.tls.context import ClientContext, ClientSSLObject
from tests.support.configs import profile_config, tls_config
from tests.support.engines import running_engine
from tests.support.jobs import make_job
from tests.support.pki import PKI
from tests.support.results import echo
from tests.support.servers import NginxPorts, ServerPKI


@pytest.fixture
async def ports() -> AsyncIterator[list[int]]:
    """Three plain HTTP servers on 127.0.0.1: three pool keys."""

    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    runners = []
    found = []
    for _ in range(3):
        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        found.append(server.sockets[0].getsockname()[1])
        runners.append(runner)
    yield found
    for runner in runners:
        await runner.cleanup()


async def test_identities_share_the_pool_but_never_a_connection(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    engine = Engine(load_config(profile_config(tmp_path, pki, mtls_server.port), env={}))
    connections: list[bool] = []
    engine.transport.on_connection.append(connections.append)
    try:
        for i in range(3):
            for profile in ("partner", "two"):
                result = await engine.run(
                    make_job(f"{profile}-{i}", mtls_server.port, profile=profile)
                )
                assert result.state == "processed" and result.tls is not None
                expected = "client-one" if profile == "partner" else "client-two"
                assert result.tls.client_certificate is not None
                assert expected in result.tls.client_certificate
        seen = [r["client"] for r in mtls_server.requests]
        assert seen == [s for _ in range(3) for s in (seen[0], seen[1])]
        assert "client-one" in seen[0] and "client-two" in seen[1]
        assert connections == [True, True, False, False, False, False]  # one handshake each
    finally:
        await engine.close()


async def test_a_cookie_one_job_was_given_is_never_sent_with_another(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    """Jobs come from many teams: a partner's Set-Cookie answering one job is not kept for the
    next, whether it uses the same profile (the same connection) or another (another one)."""
    config = tls_config(tmp_path, server_pki)
    base = f"https://alpha.test:{nginx_ports.plain}"
    async with running_engine(config) as engine:
        first = await engine.run(make_job("sets", endpoint=f"{base}/set-cookie", profile="one"))
        assert first.status == 200 and "session=first-job" in first.headers["Set-Cookie"]
        for job_id, profile in (("same-profile", "one"), ("other-profile", "two")):
            seen = echo(
                await engine.run(make_job(job_id, endpoint=f"{base}/echo", profile=profile))
            )
            assert seen["cookie"] == "", (job_id, seen)
        own = make_job("own", endpoint=f"{base}/echo", profile="one", headers={"Cookie": "mine=1"})
        assert echo(await engine.run(own))["cookie"] == "mine=1"  # a job's own header goes


async def test_connections_to_one_server_share_its_decoded_certificate(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    """The event loop keeps ``getpeercert()`` with every connection: connections of two
    identities to one server hold one dict (the agent reads the DER form, unchanged)."""
    config = tls_config(tmp_path, server_pki)
    url = f"https://alpha.test:{nginx_ports.plain}/echo"
    async with running_engine(config) as engine:
        for profile in ("one", "two"):
            assert (
                await engine.run(make_job(profile, endpoint=url, profile=profile))
            ).status == 200
        entry = engine.transport.acquire(engine.state.call.network)
        engine.transport.release(entry)  # only looked at
        connector = entry.session.connector
        assert isinstance(connector, WatchedConnector)
        transports = [p.transport for conns in connector._conns.values() for p, _ in conns]
        assert len(transports) == 2 and all(t is not None for t in transports)
        decoded = [t.get_extra_info("peercert") for t in transports if t is not None]
        assert decoded[0] is decoded[1]
        assert ("commonName", "alpha.test") in [n for rdn in decoded[0]["subject"] for n in rdn]
        objects = [t.get_extra_info("ssl_object") for t in transports if t is not None]
        assert all(isinstance(o, ClientSSLObject) for o in objects)
        assert objects[0].getpeercert(binary_form=True) == objects[1].getpeercert(True)
    unverified = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", nginx_ports.plain, ssl=unverified)
    try:
        assert writer.get_extra_info("peercert") == {}  # not verified: never the shared one
    finally:
        writer.close()
        await writer.wait_closed()


async def test_idle_connections_over_the_bound_close_least_recently_used_first(
    ports: list[int],
) -> None:
    transport = Transport()
    network = Network(max_idle=2)
    transport.use(network)
    try:
        async with transport.session(network) as session:
            for port in ports:  # three keys: the third release is over the bound
                async with session.get(f"http://127.0.0.1:{port}/") as resp:
                    assert await resp.text() == "hello"
            assert transport.idle_connections == 1  # trimmed to half the bound
            connector = session.connector
            assert connector is not None
            kept = [key.port for key in connector._conns]
            assert kept == [ports[-1]]  # the most recently used stays
    finally:
        await transport.close()


async def test_a_session_of_an_earlier_state_closes_after_its_last_request(
    ports: list[int],
) -> None:
    transport = Transport()
    old, new = Network(), Network()
    transport.use(old)
    try:
        async with transport.session(old) as before:
            transport.use(new)  # a reload while a job of the old state runs
            async with before.get(f"http://127.0.0.1:{ports[0]}/") as resp:
                assert resp.status == 200  # still usable by the job that holds it
            assert not before.closed
        async with transport.session(new) as after:
            assert after is not before
        await asyncio.gather(*transport._closing)
        assert before.closed and not after.closed
    finally:
        await transport.close()
    assert after.closed


async def test_rotated_material_closes_its_idle_connections_and_the_next_job_reconnects(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    engine = Engine(load_config(profile_config(tmp_path, pki, mtls_server.port), env={}))
    connections: list[bool] = []
    engine.transport.on_connection.append(connections.append)
    try:
        await engine.run(make_job("first", mtls_server.port, profile="partner"))
        assert engine.transport.idle_connections == 1
        identities = engine.state.identities
        old = await identities.for_profile(identities.profiles["partner"])
        identities.replace_profile("partner", old.material)  # as a renewed certificate does
        assert engine.transport.idle_connections == 0
        await engine.run(make_job("second", mtls_server.port, profile="partner"))
        assert connections == [True, True]
    finally:
        await engine.close()


async def test_config_xml_bounds_the_idle_connections(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    """``agent.http.max_idle_connections=0``: no connection is kept, so every job handshakes."""
    extra = {"agent.http.max_idle_connections": "0", "agent.http.idle_seconds": "5"}
    config = load_config(profile_config(tmp_path, pki, mtls_server.port, **extra), env={})
    async with running_engine(config) as engine:
        network = engine.state.call.network
        assert (network.max_idle, network.idle_seconds) == (0, 5.0)
        connections: list[bool] = []
        engine.transport.on_connection.append(connections.append)
        for i in range(3):
            result = await engine.run(make_job(f"unkept-{i}", mtls_server.port))
            assert result.status == 200, result
        assert connections == [True, True, True]


@pytest.mark.parametrize(
    ("name", "value"),
    [("agent.http.max_idle_connections", "-1"), ("agent.http.idle_seconds", "never")],
)
def test_a_bad_idle_bound_is_refused_naming_the_parameter(
    tmp_path: Path, pki: PKI, name: str, value: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(profile_config(tmp_path, pki, 443, **{name: value}), env={})
    assert name in str(caught.value)


async def test_the_idle_count_follows_connections_in_and_out_of_the_pool(
    ports: list[int],
) -> None:
    """Reusing a connection takes it out of the count: the bound is not recounted (a pass over
    every identity's connections) on each release once as many requests as the bound were made."""
    transport = Transport()
    network = Network(max_idle=4)
    transport.use(network)
    try:
        async with transport.session(network) as session:
            connector = session.connector
            assert isinstance(connector, WatchedConnector)
            for _ in range(10):  # one key, one connection, reused
                async with session.get(f"http://127.0.0.1:{ports[0]}/") as resp:
                    assert await resp.text() == "hello"
            assert connector._idle == connector.idle_count() == 1
    finally:
        await transport.close()


def test_the_pool_defaults_are_the_parameters_defaults() -> None:
    """A network built without config.xml (``Transport.session()``) bounds its pool as the
    documented defaults of agent.http.max_idle_connections and idle_seconds do."""
    defaults = AgentConfig()
    assert (Network().max_idle, Network().idle_seconds) == (
        defaults.max_idle_connections,
        defaults.idle_seconds,
    )
