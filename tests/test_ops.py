"""Running as a service: the systemd unit, sd_notify, /healthz /readyz /metrics, the Dockerfile."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from agent.commands.cli import build_parser
from agent.commands.demo.demoserver import DemoServer
from agent.config.config import AgentConfig
from agent.service.notify import Notifier
from tests.support.cli import agent_cmd, arun_agent, log_line
from tests.support.configs import profile_config, write_config
from tests.support.health import free_port, get, samples, wait_ready
from tests.support.pki import PKI

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "agent.service"
DROP_IN = ROOT / "systemd" / "agent.service.d" / "override.conf.example"
DOCKERFILE = ROOT / "Dockerfile"


# ------------------------------------------------------------------------------ systemd unit


def verify(
    directory: Path, unit: str, drop_in: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on a copy whose ExecStart names the installed ``agent``."""
    agent = shutil.which("agent")
    assert agent is not None, "the agent script is not installed (pip install -e .)"
    (directory / "agent.service").write_text(unit.replace("/usr/local/bin/agent", agent))
    if drop_in is not None:
        (directory / "agent.service.d").mkdir()
        text = drop_in.replace("/usr/local/bin/agent", agent)
        (directory / "agent.service.d" / "override.conf").write_text(text)
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{directory}:", SYSTEMD_LOG_LEVEL="notice")
    return subprocess.run(
        ["systemd-analyze", "verify", str(directory / "agent.service")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=directory,
    )


def test_systemd_unit_and_drop_in_verify_cleanly(tmp_path: Path) -> None:
    ran = verify(tmp_path, UNIT.read_text(), DROP_IN.read_text())
    assert ran.returncode == 0 and ran.stderr.strip() == "", ran.stderr


def test_systemd_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("Type=notify", "Type=notifyy")
    ran = verify(tmp_path, broken)
    assert "notifyy" in ran.stderr


def test_systemd_unit_settings() -> None:
    text = UNIT.read_text()
    settings = dict(
        (m.group(1), m.group(2)) for m in re.finditer(r"^(\w+)=(.*)$", text, re.MULTILINE)
    )
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert int(settings["TimeoutStopSec"]) > 30  # agent.drain.seconds' default
    assert settings["WatchdogSec"] == "30"
    assert settings["CapabilityBoundingSet"] == "" and settings["ProtectSystem"] == "strict"
    assert "/etc/agent/config.xml run" in text and settings["StateDirectory"] == "agent"


# ----------------------------------------------------------------------------------- notify


class NotifySocket:
    """The service manager's end: an AF_UNIX datagram socket the test owns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.seen: list[str] = []

    async def expect(self, line: str, timeout: float = 30) -> str:
        """Read datagrams until one carries ``line``; return that datagram."""
        loop = asyncio.get_running_loop()

        async def read() -> str:
            while True:
                message = (await loop.sock_recv(self.sock, 4096)).decode()
                self.seen.append(message)
                if line in message.splitlines():
                    return message

        return await asyncio.wait_for(read(), timeout)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> AsyncIterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock  # type: ignore[misc]
    sock.close()


async def start_agent(
    config: Path, env: dict[str, str] | None = None, *, logs: bool = False
) -> asyncio.subprocess.Process:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MID_CONFIG_", "NOTIFY_"))}
    clean.pop("WATCHDOG_USEC", None)
    clean.pop("AGENT_WORKER_INDEX", None)
    return await asyncio.create_subprocess_exec(
        *agent_cmd("-c", str(config), "run"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE if logs else asyncio.subprocess.DEVNULL,
        env=clean | (env or {}),
    )


async def stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 30)


def queue_config(directory: Path, **extra: str) -> Path:
    return write_config(
        directory,
        {"url": f"sqlite:///{directory / 'queue.db'}", "mid.poll.time": "0.2", **extra},
    )


async def test_daemon_notifies_ready_watchdog_reload_and_stop(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000"}
    proc = await start_agent(queue_config(tmp_path), env)
    try:
        ready = await notify_socket.expect("READY=1")
        assert any(line.startswith("STATUS=polling") for line in ready.splitlines())
        await notify_socket.expect("WATCHDOG=1")
        await notify_socket.expect("WATCHDOG=1")  # pings keep coming from the event loop
        proc.send_signal(signal.SIGHUP)
        reloading = await notify_socket.expect("RELOADING=1")
        assert re.search(r"^MONOTONIC_USEC=\d+$", reloading, re.MULTILINE)
        await notify_socket.expect("READY=1")
        proc.send_signal(signal.SIGTERM)
        await notify_socket.expect("STOPPING=1")
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_supervisor_notifies_and_its_workers_do_not(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    env = {"NOTIFY_SOCKET": str(notify_socket.path)}
    proc = await start_agent(queue_config(tmp_path, **{"agent.workers": "2"}), env, logs=True)
    try:
        ready = await notify_socket.expect("READY=1")
        assert "STATUS=supervising 2 worker processes" in ready.splitlines()
        for _ in range(2):  # both workers installed their signal handlers
            await asyncio.wait_for(log_line(proc, "started: queue"), 30)
    finally:
        proc.send_signal(signal.SIGTERM)  # once: a second one means "abort" to the workers
        await notify_socket.expect("STOPPING=1")
        assert proc.stderr is not None
        logged = (await asyncio.wait_for(proc.stderr.read(), 30)).decode()
        assert await asyncio.wait_for(proc.wait(), 30) == 0, logged
    # The workers are agents too: had they spoken, their "polling" READY=1 would be here.
    assert not [m for m in notify_socket.seen if "STATUS=polling" in m]


async def test_notifier_speaks_to_abstract_sockets_and_respects_watchdog_pid() -> None:
    name = f"agent-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(b"\0" + name.encode())
        server.settimeout(10)
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "4000000"})
        notifier.ready("fine")
        assert server.recv(4096) == b"READY=1\nSTATUS=fine"
        assert notifier.watchdog_interval == 4.0
    other = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"})
    assert other.enabled and other.watchdog_interval is None
    worker = Notifier({"NOTIFY_SOCKET": "@x", "AGENT_WORKER_INDEX": "1"})
    assert not worker.enabled and worker.send("READY=1") is False


# ------------------------------------------------------------------------ health and metrics


def healthcheck_command() -> list[str]:
    match = re.search(r"^HEALTHCHECK .*?CMD (\[.*?\])$", DOCKERFILE.read_text(), re.M | re.S)
    assert match, "no HEALTHCHECK CMD in the Dockerfile"
    command: list[str] = json.loads(match.group(1))
    return command


@pytest.fixture
async def served(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> AsyncIterator[tuple[Path, str, asyncio.subprocess.Process]]:
    port = free_port()
    config = profile_config(
        tmp_path, pki, mtls_server.port, **{"agent.health.listen": f"127.0.0.1:{port}"}
    )
    proc = await start_agent(config)
    try:
        yield config, f"http://127.0.0.1:{port}", proc
    finally:
        assert await stop(proc) == 0


async def test_metrics_move_with_real_jobs(
    served: tuple[Path, str, asyncio.subprocess.Process], mtls_server: DemoServer
) -> None:
    config, base, proc = served
    status, body = await wait_ready(base, proc)
    assert (status, body) == (200, {"ready": True, "reasons": []})
    assert (await get(f"{base}/healthz"))[0] == 200
    for n in range(3):  # one after another: the first opens a connection, the others reuse it
        job = {
            "id": f"m-{n}",
            "topic": "RESTProbe",
            "endpoint": f"https://alpha.test:{mtls_server.port}/echo",
            "protocol_profile": "partner",
        }
        await arun_agent("-c", str(config), "enqueue", "-", input=json.dumps(job))
        ran = await arun_agent("-c", str(config), "result", f"m-{n}", "--wait", "30")
        assert json.loads(ran.stdout)["status"] == 200, ran.stdout
    status, text = await get(f"{base}/metrics")
    assert status == 200
    got = samples(text)
    ok = (("error_kind", ""), ("outcome", "processed"), ("topic", "RESTProbe"))
    assert got[("agent_jobs_total", ok)] == 3
    assert got[("agent_call_duration_seconds_count", (("topic", "RESTProbe"),))] == 3
    assert got[("agent_tls_handshakes_total", ())] >= 1
    assert got[("agent_connections_reused_total", ())] >= 1
    assert got[("agent_queue_claim_seconds_count", ())] >= 3
    assert got[("agent_queue_depth", ())] == 0
    for profile in ("partner", "two"):
        days = got[("agent_client_certificate_days_left", (("profile", profile),))]
        assert 363 < days <= 365
    assert got[("agent_vault_errors_total", ())] == 0
    # The Dockerfile's HEALTHCHECK command, run as is against this agent.
    port = base.rpartition(":")[2]
    env = dict(os.environ, **{"MID_CONFIG_agent.health.listen": f"0.0.0.0:{port}"})
    command = [sys.executable if c == "python" else c for c in healthcheck_command()]
    assert subprocess.run(command, env=env, timeout=30).returncode == 0


async def test_readyz_names_an_expired_client_certificate(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    old = pki.ca.issue("old-client", client=True, days=-1, not_before_days=-30)
    old.write_pem(tmp_path, "old")
    port = free_port()
    p = "mid.httpclient.protocol"
    config = profile_config(
        tmp_path,
        pki,
        mtls_server.port,
        **{
            "agent.health.listen": f"127.0.0.1:{port}",
            f"{p}.old.path": "old.crt",
            f"{p}.old.key": "old.key",
        },
    )
    proc = await start_agent(config)
    try:
        status, body = await wait_ready(f"http://127.0.0.1:{port}", proc)
        reasons = body["reasons"]
        assert status == 503 and body["ready"] is False
        assert isinstance(reasons, list)
        assert [r for r in reasons if r.startswith("profile old: the client certificate expired")]
        assert not [r for r in reasons if "partner" in r or "two" in r or "queue" in r], reasons
        got = samples((await get(f"http://127.0.0.1:{port}/metrics"))[1])
        assert got[("agent_client_certificate_days_left", (("profile", "old"),))] < 0
    finally:
        assert await stop(proc) == 0


async def test_health_port_in_use_is_a_runtime_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = queue_config(tmp_path, **{"agent.health.listen": f"127.0.0.1:{port}"})
        ran = await arun_agent("-c", str(config), "run")
    assert ran.returncode == 1, ran.stderr  # the value is fine; the port is taken right now
    assert (
        f"agent: health server: cannot listen on 127.0.0.1:{port} (agent.health.listen): "
        "address already in use"
    ) in ran.stderr
    assert "config:" not in ran.stderr and "Traceback" not in ran.stderr


# ------------------------------------------------------------------------------ Dockerfile


def test_dockerfile_is_multi_stage_non_root_with_healthcheck_and_volume() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.M)
    assert len(stages) >= 2 and stages[0][1] == "builder"
    assert stages[-1][0] == "python:3.11-slim"
    assert "from=builder" in text  # the runtime takes the builder's wheels, not the sources
    [user] = re.findall(r"^USER (\S+)", text, re.M)
    assert user.split(":")[0] not in ("root", "0")
    assert re.search(r'^VOLUME \[?"?/var/lib/agent', text, re.M)
    assert "/healthz" in " ".join(healthcheck_command())
    entry = json.loads(re.findall(r"^ENTRYPOINT (\[.*\])$", text, re.M)[0])
    cmd = json.loads(re.findall(r"^CMD (\[.*\])$", text, re.M)[0])
    assert entry == ["agent"]
    args = build_parser().parse_args(cmd)
    assert args.command == "run" and args.config == "/etc/agent/config.xml"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"config.xml", "*.key", ".git", "tests"} <= set(ignored)


def test_drop_in_overrides_reach_the_configuration() -> None:
    """The example drop-in's Environment= lines (dots written as __) override config.xml."""
    env: dict[str, str] = {}
    for line in DROP_IN.read_text().splitlines():
        if line.startswith("Environment="):
            name, _, value = line.removeprefix("Environment=").strip('"').partition("=")
            env[name] = value
    assert env and all("." not in name for name in env)
    config = AgentConfig.from_xml(b"<parameters/>", env=env)
    assert (config.threads_max, config.workers) == (50, 2)
    assert config.health_listen == ("127.0.0.1", 9464)
    assert config.outbound_allow == ("*.partner.example", "203.0.113.0/24")


async def test_metrics_add_up_every_worker(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    """agent.workers = 2: worker 0 serves /metrics, and it counts both workers' jobs."""
    port = free_port()
    extra = {"agent.health.listen": f"127.0.0.1:{port}", "agent.workers": "2", "threads.max": "2"}
    config = profile_config(tmp_path, pki, mtls_server.port, **extra)
    jobs = [
        {
            "id": f"w-{n}",
            "topic": "RESTProbe",
            "endpoint": f"https://alpha.test:{mtls_server.port}/slow?seconds=0.2",
            "protocol_profile": "partner",
        }
        for n in range(12)
    ]
    await arun_agent("-c", str(config), "enqueue", "-", input=json.dumps(jobs))
    proc = await start_agent(config)
    try:
        for job in jobs:  # 12 jobs of 0.2 s, 2 at a time per worker: both workers take some
            ran = await arun_agent("-c", str(config), "result", str(job["id"]), "--wait", "60")
            assert json.loads(ran.stdout)["status"] == 200, ran.stdout
        deadline = time.monotonic() + 30
        while True:  # worker 0's health server may still be starting
            try:
                status, text = await get(f"http://127.0.0.1:{port}/metrics")
                break
            except aiohttp.ClientConnectionError:
                assert time.monotonic() < deadline, "worker 0 never served /metrics"
                await asyncio.sleep(0.1)
        assert status == 200
        ok = (("error_kind", ""), ("outcome", "processed"), ("topic", "RESTProbe"))
        assert samples(text)[("agent_jobs_total", ok)] == 12
    finally:
        assert await stop(proc) == 0
