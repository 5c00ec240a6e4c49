"""The operator's view: ``/status`` in a real browser, ``/status.json``, ``agent status``, and the
metrics the alert rules read, from a daemon running real profiles against a real mTLS server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import html

from agent.commands.demo.demoserver import DemoServer
from agent.jobs.results import ErrorInfo, Result
from agent.queues.sqlite import SqliteQueue
from agent.service import metrics as metrics_module
from agent.service.status import MESSAGE_CHARS, RecentErrors, Throughput
from tests.support.cli import arun_agent, log_line, start_daemon
from tests.support.configs import P, profile_config
from tests.support.health import free_port, get, samples, wait_ready
from tests.support.jobs import job_fields, make_job
from tests.support.pki import P12_PASSWORD, PKI

SCREENSHOT_COPY = "AGENT_STATUS_SCREENSHOT"  # also save the page's screenshot there (for docs)


@dataclass
class Running:
    config: Path
    base: str
    proc: asyncio.subprocess.Process
    soon_key: bytes


def status_config(tmp_path: Path, pki: PKI, port: int, **extra: str) -> tuple[Path, bytes]:
    """Profiles ``partner`` and ``two`` (a year left) and ``soon`` (10 days, under the 30)."""
    soon = pki.ca.issue("soon-client", client=True, days=10)
    soon.write_pem(tmp_path, "soon")
    ca = pki.write_ca(tmp_path)
    params = {
        f"{P}.soon.path": "soon.crt",
        f"{P}.soon.key": "soon.key",
        f"{P}.soon.truststore": str(ca),
        **extra,
    }
    return profile_config(tmp_path, pki, port, **params), soon.key_pem()


@pytest.fixture
async def running(tmp_path: Path, pki: PKI, mtls_server: DemoServer) -> AsyncIterator[Running]:
    port = free_port()
    config, soon_key = status_config(
        tmp_path, pki, mtls_server.port, **{"agent.health.listen": f"127.0.0.1:{port}"}
    )
    proc = await start_daemon(config)
    try:
        await log_line(proc, "health and metrics on")
        await wait_ready(f"http://127.0.0.1:{port}", proc)
        jobs = [
            job_fields("ok-1", mtls_server.port),
            job_fields("ok-2", mtls_server.port, profile="two"),
            job_fields("refused-1", free_port()),  # nothing listens there
        ]
        lines = "\n".join(json.dumps(j) for j in jobs)
        assert (await arun_agent("-c", str(config), "enqueue", "-", input=lines)).returncode == 0
        for job in jobs:
            ran = await arun_agent("-c", str(config), "result", job["id"], "--wait", "30")
            assert ran.returncode == 0, ran
        yield Running(config, f"http://127.0.0.1:{port}", proc, soon_key)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


def no_secret_in(text: str, running: Running) -> None:
    assert P12_PASSWORD not in text
    assert "PRIVATE KEY" not in text
    assert running.soon_key.decode() not in text


async def test_status_json_summarises_the_agent_queue_errors_and_profiles(
    running: Running,
) -> None:
    code, text = await get(f"{running.base}/status.json")
    assert code == 200
    status = json.loads(text)
    assert status["state"] == "degraded"
    assert any("profile soon" in p and "expires in" in p for p in status["problems"])
    agent = status["agent"]
    assert agent["name"] == "mid.server.test-agent" and agent["version"] != "unknown"
    assert (agent["workers"], agent["uptime_seconds"] >= 0) == (1, True)
    assert status["queue"]["by_state"] == {"ready": 0, "processing": 0, "processed": 2, "error": 1}
    assert status["queue"]["oldest_waiting_seconds"] is None
    assert (status["throughput"]["jobs"], status["throughput"]["errors"]) == (3, 1)
    [kind] = status["errors"]["by_kind"]
    assert (kind["kind"], kind["count"], kind["last"]["job_id"]) == ("connect", 1, "refused-1")
    assert "cannot connect to alpha.test" in kind["last"]["message"]
    profiles = {p["name"]: p for p in status["profiles"]}
    assert set(profiles) == {"partner", "two", "soon"}
    assert profiles["partner"]["level"] == "ok" and profiles["partner"]["source"] == "file"
    assert "client-one" in profiles["partner"]["subject"]
    assert profiles["partner"]["issuer"] == "CN=Test Root CA,O=Agent Test PKI"
    assert 363 < profiles["partner"]["days_left"] <= 365
    assert profiles["soon"]["level"] == "warn" and 9 < profiles["soon"]["days_left"] <= 10
    no_secret_in(text, running)


async def test_the_metrics_behind_the_alert_rules_move(running: Running) -> None:
    got = samples((await get(f"{running.base}/metrics"))[1])
    assert got[("agent_queue_jobs", (("state", "processed"),))] == 2
    assert got[("agent_queue_jobs", (("state", "error"),))] == 1
    assert got[("agent_queue_oldest_job_age_seconds", ())] == 0
    assert got[("agent_queue_reachable", ())] == 1
    assert got[("agent_client_certificate_warn_days", ())] == 30
    assert got[("agent_lease_losses_total", ())] == 0
    assert 9 < got[("agent_client_certificate_days_left", (("profile", "soon"),))] <= 10
    [(name, labels)] = [k for k in got if k[0] == "agent_build_info"]
    assert dict(labels)["version"] != "unknown" and got[(name, labels)] == 1


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    browser = shutil.which("chromium")
    assert browser, "chromium is missing: scripts/test installs Debian's chromium"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90)


async def test_the_status_page_renders_in_a_real_browser(running: Running, tmp_path: Path) -> None:
    url = f"{running.base}/status"
    ran = await asyncio.to_thread(chromium, "--dump-dom", url)
    assert ran.returncode == 0, ran.stderr[-2000:]
    dom = html.fromstring(ran.stdout)
    assert dom.get_element_by_id("state").text_content().strip() == "degraded"
    assert dom.xpath("//meta[@http-equiv='refresh']/@content") == ["10"]
    assert dom.xpath("//meta[@name='viewport']"), "not made for a phone's width"
    assert not dom.xpath("//script"), "the page needs no script"
    rows = {
        row.xpath("td[1]")[0].text_content(): (row.get("class"), row.xpath("td[6]")[0].text)
        for row in dom.xpath("//table[contains(@class,'profiles')]//tr[td]")
    }
    assert set(rows) == {"partner", "two", "soon"}
    assert rows["soon"][0] == "warn" and rows["partner"][0] == "ok"
    assert 9 < float(rows["soon"][1]) <= 10
    text = dom.text_content()
    assert "connect" in text and "refused-1" in text  # the last error, with its job
    no_secret_in(ran.stdout, running)
    shot = tmp_path / "status.png"
    ran = await asyncio.to_thread(
        chromium, f"--screenshot={shot}", "--window-size=430,1400", "--hide-scrollbars", url
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if os.environ.get(SCREENSHOT_COPY):
        shutil.copyfile(shot, os.environ[SCREENSHOT_COPY])


async def test_agent_status_reads_the_daemon_then_reports_it_unreachable(
    running: Running,
) -> None:
    ran = await arun_agent("-c", str(running.config), "status")
    assert ran.returncode == 1, ran  # degraded: profile soon is inside the warning days
    assert "DEGRADED" in ran.stdout and "profile soon" in ran.stdout
    assert "processed 2" in ran.stdout and "errors connect: 1" in ran.stdout
    assert "partner" in ran.stdout and "client-one" in ran.stdout
    as_json = await arun_agent("-c", str(running.config), "status", "--json")
    assert json.loads(as_json.stdout)["state"] == "degraded"
    no_secret_in(ran.stdout + as_json.stdout, running)
    running.proc.terminate()
    assert await running.proc.wait() == 0
    gone = await arun_agent("-c", str(running.config), "status")
    assert gone.returncode == 2, gone
    assert "unreachable" in gone.stderr and "agent.health.listen" in gone.stderr


async def test_agent_status_without_a_listener_reads_the_queue_and_config(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    config = profile_config(tmp_path, pki, mtls_server.port)
    jobs = "\n".join(json.dumps(job_fields(f"w-{i}", mtls_server.port)) for i in range(2))
    assert (await arun_agent("-c", str(config), "enqueue", "-", input=jobs)).returncode == 0
    ran = await arun_agent("-c", str(config), "status", "--json")
    assert ran.returncode == 0, ran  # both certificates have a year left
    status = json.loads(ran.stdout)
    assert status["state"] == "healthy" and "queue and config.xml" in status["source"]
    assert status["queue"]["by_state"]["ready"] == 2
    assert status["queue"]["oldest_waiting_seconds"] >= 0
    assert {p["name"]: p["level"] for p in status["profiles"]} == {"partner": "ok", "two": "ok"}
    soon_config, _ = status_config(tmp_path, pki, mtls_server.port)
    degraded = await arun_agent("-c", str(soon_config), "status")
    assert degraded.returncode == 1 and "profile soon" in degraded.stdout


async def test_agent_status_when_the_queue_does_not_answer(tmp_path: Path, pki: PKI) -> None:
    url = f"postgresql://agent@127.0.0.1:{free_port()}/none"
    config = profile_config(tmp_path, pki, 443, url=url)
    ran = await arun_agent("-c", str(config), "status")
    assert ran.returncode == 2, ran
    assert "unreachable: the queue" in ran.stderr


async def test_queue_summary_counts_states_and_ages_the_oldest_waiting(tmp_path: Path) -> None:
    queue = SqliteQueue(tmp_path / "q.db")
    await queue.open()
    try:
        empty = await queue.summary()
        assert empty is not None and empty.oldest_waiting_seconds is None
        assert set(empty.by_state.values()) == {0}
        await queue.enqueue([make_job("a"), make_job("b")])
        summary = await queue.summary()
        assert summary is not None and summary.by_state["ready"] == 2
        assert summary.oldest_waiting_seconds is not None and summary.oldest_waiting_seconds >= 0
        assert await queue.depth() == 2
    finally:
        await queue.close()


def test_throughput_counts_only_the_window() -> None:
    now = [1000.0]
    rate = Throughput(window=60, clock=lambda: now[0])
    for _ in range(30):
        rate.add(error=False)
    rate.add(error=True)
    now[0] += 30
    first = rate.summary()
    assert (first["jobs"], first["errors"], first["error_ratio"]) == (31, 1, round(1 / 31, 4))
    assert first["jobs_per_second"] == round(31 / 30, 3)
    now[0] += 60  # the first minute's jobs leave the window
    assert rate.summary()["jobs"] == 0


def test_recent_errors_are_bounded_in_number_and_length() -> None:
    errors = RecentErrors(keep=5)
    for i in range(12):
        message = "x" * (MESSAGE_CHARS * 3) if i == 11 else f"failure {i}"
        errors.add("RESTProbe", Result.failed(f"job-{i}", "timeout", message))
    summary = errors.summary()
    assert len(summary["last"]) == 5 and summary["last"][0]["job_id"] == "job-11"
    assert len(summary["last"][0]["message"]) == MESSAGE_CHARS
    assert summary["by_kind"] == [
        {"kind": "timeout", "count": 12, "last": summary["last"][0]},
    ]
    assert Result.failed("x", "timeout", "m").error == ErrorInfo("timeout", "m")


def test_certificate_days_are_worked_out_at_each_scrape(monkeypatch: pytest.MonkeyPatch) -> None:
    """The expiry gauge counts from the scrape, not from the last certificate check, and a
    forgotten profile (removed by a reload) leaves the exposition."""
    m = metrics_module.Metrics()
    clock = 1_000_000.0
    monkeypatch.setattr(metrics_module.time, "time", lambda: clock)
    m.certificate("partner", dt.datetime.fromtimestamp(clock + 10 * 86400, dt.UTC))
    m.certificate("no-cert", None)
    key = ("agent_client_certificate_days_left", (("profile", "partner"),))
    assert samples(m.render().decode())[key] == 10.0
    clock += 2.5 * 86400
    got = samples(m.render().decode())
    assert got[key] == 7.5 and m.cert_days_profiles() == ["partner"]
    m.forget_profile("partner")
    assert key not in samples(m.render().decode())
