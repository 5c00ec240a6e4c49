"""SOAPProbe against a hostile server: XXE, external DTDs, billion laughs, an endless answer, HTML.

The hostile server (tests/support/soapserver.py) speaks mutual TLS like a real partner and
answers with documents meant to make an XML client read local files, fetch URLs, expand entities
until memory runs out, or read forever. The agent runs as ``agent call`` (so a crash shows as a
traceback and an exit code, and its peak memory is its own) and as a daemon next to ordinary
REST jobs."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import arun_agent, start_daemon
from tests.support.servers import NginxPorts, ServerPKI
from tests.support.soapserver import HTML_502, STREAM_BYTES, TNS, HostileServer, soap_config

pytestmark = pytest.mark.timeout(90)

MAX_PEAK_KIB = 200 * 1024  # an agent expanding billion laughs would need gigabytes
VERSIONS = ("1.1", "1.2")
ECHO = f'<t:echo xmlns:t="{TNS}"><t:text>hi</t:text></t:echo>'

# Runs the agent's CLI and reports the process's peak resident set size on the way out.
MEASURED = """\
import runpy, sys
try:
    runpy.run_module("agent", run_name="__main__", alter_sys=True)
finally:
    with open("/proc/self/status") as status:
        peak = [line for line in status if line.startswith("VmHWM:")]
    sys.stderr.write("\\nPEAK " + peak[0].split(":", 1)[1].strip() + "\\n")
"""


@dataclass(frozen=True)
class Called:
    returncode: int
    result: dict[str, Any]
    stderr: str
    peak_kib: int


@pytest.fixture
def marker(tmp_path: Path) -> str:
    return f"XXE-SECRET-{secrets.token_hex(8)}"


@pytest.fixture
async def hostile(
    tmp_path: Path, server_pki: ServerPKI, marker: str
) -> AsyncIterator[HostileServer]:
    secret = tmp_path / "secret.txt"
    secret.write_text(marker + "\n")
    async with HostileServer(server_pki, secret) as server:
        yield server


@pytest.fixture
def config(tmp_path: Path, server_pki: ServerPKI) -> Path:
    return soap_config(tmp_path, server_pki)


def soap_job(job_id: str, url: str, version: str, body: str = ECHO) -> dict[str, Any]:
    return {
        "id": job_id,
        "topic": "SOAPProbe",
        "endpoint": url,
        "protocol_profile": "p",
        "soap_version": version,
        "soap_action": f"{TNS}/echo",
        "body": body,
        "timeout": 30,
    }


async def call(config: Path, job: dict[str, Any]) -> Called:
    """``agent call`` on one job, with the process's peak RSS (VmHWM) in KiB."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MID_CONFIG_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MEASURED, "-c", str(config), "call", "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(job).encode()), 60)
    stderr = err.decode()
    assert "Traceback" not in stderr, stderr
    peak = stderr.rsplit("PEAK ", 1)[1].split()
    assert peak[1] == "kB", stderr
    assert proc.returncode is not None
    return Called(proc.returncode, json.loads(out), stderr, int(peak[0]))


def processed(called: Called, status: int) -> dict[str, Any]:
    result = called.result
    assert called.returncode == 0, (result, called.stderr)
    assert (result["state"], result["status"], result["error"]) == ("processed", status, None)
    return result


async def test_xxe_and_external_dtds_leak_nothing(
    config: Path, hostile: HostileServer, marker: str
) -> None:
    """A file:// entity in the answer (in the result element, in a fault) and a DTD fetched over
    HTTP: the secret file's content appears nowhere, no DTD is fetched, the body is the raw text."""
    cases = [
        (route, version, status)
        for route, status in (("/xxe", 200), ("/xxe-fault", 500), ("/xxe-dtd", 200))
        for version in VERSIONS
    ]
    calls = await asyncio.gather(
        *(
            call(config, soap_job(f"x{n}", hostile.url(route, version), version))
            for n, (route, version, _) in enumerate(cases)
        )
    )
    for (route, version, status), called in zip(cases, calls, strict=True):
        result = processed(called, status)
        assert marker not in json.dumps(result) and marker not in called.stderr, result
        assert result["body"] == hostile.bodies[f"{route}?v={version}"]
    assert hostile.dtd_hits == 0
    assert hostile.client_subjects == ["client-one"] * len(cases)  # all over mutual TLS


async def test_billion_laughs_is_not_expanded(config: Path, hostile: HostileServer) -> None:
    calls = await asyncio.gather(
        *(call(config, soap_job(f"l{v}", hostile.url("/laughs", v), v)) for v in VERSIONS)
    )
    for version, called in zip(VERSIONS, calls, strict=True):
        result = processed(called, 500)
        raw = hostile.bodies[f"/laughs?v={version}"]
        assert result["body"] == raw  # the text as it came, references unexpanded
        assert "lollol" not in json.dumps(result), result["soap_fault"]
        assert called.peak_kib < MAX_PEAK_KIB, called.peak_kib


async def test_an_endless_answer_is_cut_at_max_response_bytes(
    config: Path, hostile: HostileServer
) -> None:
    """50 MiB, chunked (no Content-Length to refuse early): the agent stops reading and closes,
    so the server manages to send only the limit plus what socket buffers held."""
    called = await call(config, soap_job("big", hostile.url("/stream"), "1.1"))
    result = called.result
    assert called.returncode == 1 and result["state"] == "error", result
    assert result["error"]["kind"] == "response_too_large", result
    assert "agent.max_response_bytes" in result["error"]["message"]
    await asyncio.wait_for(hostile.stream_done.wait(), 30)
    assert hostile.stream_sent < STREAM_BYTES // 3, hostile.stream_sent
    assert called.peak_kib < MAX_PEAK_KIB, called.peak_kib


async def test_an_html_error_page_is_an_answer_without_a_fault(
    config: Path, hostile: HostileServer
) -> None:
    calls = await asyncio.gather(
        *(call(config, soap_job(f"h{v}", hostile.url("/html", v), v)) for v in VERSIONS)
    )
    for called in calls:
        result = processed(called, 502)
        assert result["soap_fault"] is None and result["body"] == HTML_502, result


async def test_daemon_runs_ordinary_jobs_next_to_hostile_ones(
    config: Path, hostile: HostileServer, nginx_ports: NginxPorts, marker: str
) -> None:
    hostile_jobs = {
        "h-xxe": soap_job("h-xxe", hostile.url("/xxe-fault"), "1.1"),
        "h-laughs": soap_job("h-laughs", hostile.url("/laughs", "1.2"), "1.2"),
        "h-stream": soap_job("h-stream", hostile.url("/stream"), "1.1"),
        "h-html": soap_job("h-html", hostile.url("/html"), "1.1"),
    }
    rest_ids = [f"rest-{n}" for n in range(8)]
    rest_jobs = [
        {
            "id": job_id,
            "topic": "RESTProbe",
            "endpoint": f"https://alpha.test:{nginx_ports.sni}/echo",
            "protocol_profile": "p",
        }
        for job_id in rest_ids
    ]
    jobs = [*hostile_jobs.values(), *rest_jobs]
    jobs = jobs[::2] + jobs[1::2]  # hostile and ordinary jobs interleaved in the queue
    ran = await arun_agent("-c", str(config), "enqueue", "-", input=json.dumps(jobs))
    assert ran.returncode == 0, ran.stderr
    daemon = await start_daemon(config)
    results = {}
    try:
        for job_id in [*rest_ids, *hostile_jobs]:
            got = await arun_agent("-c", str(config), "result", job_id, "--wait", "60")
            assert got.returncode == 0, (job_id, got.stdout, got.stderr)
            results[job_id] = json.loads(got.stdout)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 30) == 0
    for job_id in rest_ids:
        result = results[job_id]
        assert (result["state"], result["status"]) == ("processed", 200), result
        assert json.loads(result["body"])["client_dn"].startswith("CN=client-one")
    assert results["h-stream"]["error"]["kind"] == "response_too_large"
    for job_id in ("h-xxe", "h-laughs", "h-html"):
        assert results[job_id]["state"] == "processed", results[job_id]
    assert marker not in json.dumps(results)
    assert daemon.stderr is not None
    logged = (await daemon.stderr.read()).decode()
    assert "Traceback" not in logged and marker not in logged
