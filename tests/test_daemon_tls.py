"""TLS through the whole agent: the daemon alternating client certificates, key rotation on
SIGHUP, and calls through a real forward proxy (tinyproxy) on loopback."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
from pathlib import Path

from agent.commands.demo.demoserver import DemoServer
from agent.engine.engine import Engine
from agent.jobs.model import Job
from agent.queues.sqlite import SqliteQueue
from tests.support.cli import arun_agent, log_line, start_daemon
from tests.support.configs import P, profile_config, tls_config, tls_params, write_config
from tests.support.jobs import job_fields
from tests.support.pki import PKI
from tests.support.results import echo
from tests.support.servers import NginxPorts, ServerPKI, Tinyproxy


def queue_params(directory: Path) -> dict[str, str]:
    return {"url": f"sqlite:///{directory / 'queue.db'}", "mid.poll.time": "0.2"}


async def result_of(config: Path, job_id: str) -> dict[str, object]:
    ran = await arun_agent("-c", str(config), "result", job_id, "--wait", "30")
    assert ran.returncode == 0, ran.stderr
    result: dict[str, object] = json.loads(ran.stdout)
    return result


async def test_daemon_alternating_certificates_to_one_host(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    config = write_config(tmp_path, tls_params(server_pki) | queue_params(tmp_path))
    url = f"https://alpha.test:{nginx_ports.sni}/echo"
    jobs = [job_fields(f"alt-{i}", endpoint=url, profile=("one", "two")[i % 2]) for i in range(40)]
    await arun_agent("-c", str(config), "enqueue", "-", input=json.dumps(jobs))
    ran = await arun_agent("-c", str(config), "run", "--burst")
    assert ran.returncode == 0, ran.stderr
    queue = SqliteQueue(tmp_path / "queue.db")
    await queue.open()
    try:
        for i, job in enumerate(jobs):
            status = await queue.status(job["id"])
            assert status is not None and status.result is not None, job["id"]
            seen = json.loads(str(status.result.body))
            assert seen["client_dn"].startswith(f"CN=client-{job['protocol_profile']}"), (i, seen)
    finally:
        await queue.close()


async def test_sighup_puts_a_changed_keystore_in_force_for_the_next_job(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(server_pki.client_one.crt, keys / "client.crt")
    shutil.copy(server_pki.client_one.key, keys / "client.key")
    params = tls_params(server_pki) | queue_params(tmp_path)
    params |= {f"{P}.rot.path": "keys/client.crt", f"{P}.rot.key": "keys/client.key"}
    params |= {f"{P}.rot.truststore": str(server_pki.ca_pem)}
    config = write_config(tmp_path, params)
    url = f"https://alpha.test:{nginx_ports.sni}/echo"
    daemon = await start_daemon(config)
    try:
        await asyncio.wait_for(log_line(daemon, "started"), 30)  # signal handlers installed
        first = json.dumps(job_fields("before", endpoint=url, profile="rot"))
        await arun_agent("-c", str(config), "enqueue", "-", input=first)
        seen = json.loads(str((await result_of(config, "before"))["body"]))
        assert seen["client_dn"].startswith("CN=client-one")
        shutil.copy(server_pki.client_two.crt, keys / "client.crt")
        shutil.copy(server_pki.client_two.key, keys / "client.key")
        daemon.send_signal(signal.SIGHUP)
        await asyncio.wait_for(log_line(daemon, "configuration reloaded"), 30)
        second = json.dumps(job_fields("after", endpoint=url, profile="rot"))
        await arun_agent("-c", str(config), "enqueue", "-", input=second)
        seen = json.loads(str((await result_of(config, "after"))["body"]))
        assert seen["client_dn"].startswith("CN=client-two")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 30) == 0


async def test_sighup_with_a_broken_config_keeps_the_old_one(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    config = write_config(tmp_path, tls_params(server_pki) | queue_params(tmp_path))
    url = f"https://alpha.test:{nginx_ports.sni}/echo"
    daemon = await start_daemon(config)
    try:
        await asyncio.wait_for(log_line(daemon, "started"), 30)  # signal handlers installed
        config.write_text('<parameters><parameter name="threads.max" value="lots"/>')
        daemon.send_signal(signal.SIGHUP)
        line = await asyncio.wait_for(log_line(daemon, "reload refused"), 30)
        assert "line" in line or "threads.max" in line
        await arun_agent("-c", str(config), "enqueue", "-", input="[]")  # exits 2: config broken
        job = json.dumps(job_fields("still", endpoint=url, profile="one"))
        write_config(tmp_path, tls_params(server_pki) | queue_params(tmp_path))  # for the CLI
        await arun_agent("-c", str(config), "enqueue", "-", input=job)
        seen = json.loads(str((await result_of(config, "still"))["body"]))
        assert seen["client_dn"].startswith("CN=client-one")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 30) == 0


async def test_call_through_a_forward_proxy_keeps_mtls_and_sni(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    """CONNECT through tinyproxy (with basic auth): SNI and the client certificate go through
    the tunnel to nginx. The proxy resolves names itself, so the URL carries the address and
    the job names the server (SNI and verification use that name)."""
    with Tinyproxy(tmp_path, auth=("agent", "proxy-pass")) as proxy:
        config = tls_config(
            tmp_path,
            server_pki,
            **{
                "mid.proxy.use_proxy": "true",
                "mid.proxy.host": "127.0.0.1",
                "mid.proxy.port": str(proxy.port),
                "mid.proxy.username": "agent",
                "mid.proxy.password": "proxy-pass",
            },
        )
        engine = Engine(config)
        try:
            url = f"https://127.0.0.1:{nginx_ports.plain}/echo"
            job = job_fields("via-proxy", endpoint=url, profile="one") | {"sni": "alpha.test"}
            result = await engine.run(Job.from_dict(job))
            seen = echo(result)
            assert seen["sni"] == "alpha.test" and seen["client_dn"].startswith("CN=client-one")
            assert proxy.connects() == [f"127.0.0.1:{nginx_ports.plain}"]
        finally:
            await engine.close()


async def test_proxy_refusing_the_credentials_is_reported(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    with Tinyproxy(tmp_path, auth=("agent", "proxy-pass")) as proxy:
        config = tls_config(
            tmp_path,
            server_pki,
            **{
                "mid.proxy.use_proxy": "true",
                "mid.proxy.host": "127.0.0.1",
                "mid.proxy.port": str(proxy.port),
                "mid.proxy.username": "agent",
                "mid.proxy.password": "wrong-pass",
            },
        )
        engine = Engine(config)
        try:
            url = f"https://127.0.0.1:{nginx_ports.plain}/echo"
            job = job_fields("bad-proxy", endpoint=url, profile="one") | {"sni": "alpha.test"}
            result = await engine.run(Job.from_dict(job))
            assert result.error is not None and result.error.kind == "connect"
            assert "proxy refused the tunnel" in result.error.message
            assert "mid.proxy.password" in result.error.message
            assert "wrong-pass" not in json.dumps(result.to_dict())
        finally:
            await engine.close()


async def test_sighup_keeps_secure_passwords_working(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    """A reload reads config.xml as the start did: encrypted values are decrypted in memory."""
    config = profile_config(tmp_path, pki, mtls_server.port)  # partner's password: secure="true"
    daemon = await start_daemon(config)
    try:
        await asyncio.wait_for(log_line(daemon, "started"), 30)
        assert "encrypted:" in config.read_text()
        daemon.send_signal(signal.SIGHUP)
        await asyncio.wait_for(log_line(daemon, "configuration reloaded"), 30)
        job = job_fields(
            "after-reload",
            endpoint=f"https://alpha.test:{mtls_server.port}/echo",
            profile="partner",
        )
        await arun_agent("-c", str(config), "enqueue", "-", input=json.dumps(job))
        result = await result_of(config, "after-reload")
        assert result["state"] == "processed" and result["status"] == 200, result["error"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 30) == 0
