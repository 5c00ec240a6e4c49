"""The agent end to end through its command line: enqueue, run, result, call; signals; crashes."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from agent.commands.demo.demoserver import DemoServer
from tests.support.cli import agent_cmd, arun_agent, log_line, start_daemon
from tests.support.configs import profile_config, write_config
from tests.support.jobs import job_fields
from tests.support.pki import P12_PASSWORD, PKI

pytestmark = pytest.mark.timeout(90)


async def states(config: Path, ids: list[str]) -> dict[str, str]:
    out = {}
    for job_id in ids:
        ran = await arun_agent("-c", str(config), "result", job_id)
        out[job_id] = json.loads(ran.stdout)["state"]
    return out


async def test_enqueue_run_result(tmp_path: Path, pki: PKI, mtls_server: DemoServer) -> None:
    config = profile_config(tmp_path, pki, mtls_server.port)
    job_file = tmp_path / "job.json"
    job_file.write_text(
        json.dumps(job_fields("order-1", mtls_server.port, method="POST", body="hi"))
    )
    ran = await arun_agent("-c", str(config), "enqueue", str(job_file))
    assert ran.returncode == 0 and ran.stdout.split() == ["order-1"]
    daemon = await start_daemon(config)
    try:
        ran = await arun_agent("-c", str(config), "result", "order-1", "--wait", "30")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 30) == 0
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert (result["state"], result["status"], result["error"]) == ("processed", 200, None)
    assert daemon.stderr is not None
    logged = [json.loads(line) for line in (await daemon.stderr.read()).decode().splitlines()]
    [done] = [entry for entry in logged if entry.get("job_id") == "order-1"]
    assert (done["profile"], done["host"], done["outcome"], done["status"]) == (
        "partner",
        "alpha.test",
        "processed",
        200,
    )
    assert done["duration_ms"] > 0 and P12_PASSWORD not in json.dumps(logged)
    seen = json.loads(result["body"])
    assert seen["sni"] == "alpha.test" and seen["client"].startswith("CN=client-one,")
    assert seen["body"] == "hi"
    assert seen["headers"]["Idempotency-Key"] == "order-1"
    assert result["tls"]["sni"] == "alpha.test" and result["tls"]["version"].startswith("TLSv1")
    assert "CN=client-one" in result["tls"]["client_certificate"]
    assert "CN=alpha.test" in result["tls"]["server_certificate"]
    # the password given in clear text was encrypted in place on start
    assert "p12-Secret-Pass" not in config.read_text()


async def test_call_runs_one_job_without_the_queue(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    config = profile_config(tmp_path, pki, mtls_server.port)
    ran = await arun_agent(
        "-c", str(config), "call", "-", input=json.dumps(job_fields("c1", mtls_server.port))
    )
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["status"] == 200 and json.loads(result["body"])["sni"] == "alpha.test"
    assert not (tmp_path / "queue.db").exists()
    bad = job_fields("c2", mtls_server.port, sni=False)
    ran = await arun_agent("-c", str(config), "call", "-", input=json.dumps(bad))
    assert ran.returncode == 1
    assert json.loads(ran.stdout)["error"]["kind"] == "sni_required"


async def test_sigterm_lets_in_flight_jobs_finish(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    config = profile_config(tmp_path, pki, mtls_server.port, **{"threads.max": "3"})
    ids = [f"slow-{i}" for i in range(3)]
    jobs = [job_fields(i, mtls_server.port, "/slow?seconds=2") for i in ids]
    await arun_agent("-c", str(config), "enqueue", "-", input=json.dumps(jobs))
    daemon = await start_daemon(config)
    await asyncio.wait_for(mtls_server.started.wait(), 30)
    daemon.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(daemon.wait(), 30) == 0
    assert set((await states(config, ids)).values()) == {"processed"}


async def test_second_signal_returns_unfinished_jobs(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    config = profile_config(tmp_path, pki, mtls_server.port, **{"threads.max": "2"})
    ids = ["long-1", "long-2"]
    jobs = [job_fields(i, mtls_server.port, "/slow?seconds=60") for i in ids]
    await arun_agent("-c", str(config), "enqueue", "-", input=json.dumps(jobs))
    daemon = await start_daemon(config)
    await asyncio.wait_for(mtls_server.started.wait(), 30)
    daemon.send_signal(signal.SIGTERM)
    # Signals of one kind sent back to back may merge into one delivery: send the second only
    # once the daemon has acted on the first.
    await asyncio.wait_for(log_line(daemon, "draining"), 30)
    daemon.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(daemon.wait(), 30) == 0
    assert await states(config, ids) == {"long-1": "ready", "long-2": "ready"}


async def test_sigkill_loses_no_job(tmp_path: Path, pki: PKI, mtls_server: DemoServer) -> None:
    config = profile_config(
        tmp_path, pki, mtls_server.port, **{"threads.max": "2", "agent.lease.seconds": "2"}
    )
    ids = [f"k-{i}" for i in range(5)]
    jobs = [job_fields(i, mtls_server.port, "/slow?seconds=1") for i in ids]
    await arun_agent("-c", str(config), "enqueue", "-", input=json.dumps(jobs))
    daemon = await start_daemon(config)
    await asyncio.wait_for(mtls_server.started.wait(), 30)
    daemon.kill()
    await daemon.wait()
    assert "processing" in (await states(config, ids)).values()
    daemon = await start_daemon(config)  # the restarted agent picks up the lapsed leases
    try:
        for job_id in ids:
            ran = await arun_agent("-c", str(config), "result", job_id, "--wait", "30")
            assert ran.returncode == 0 and json.loads(ran.stdout)["state"] == "processed"
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 30) == 0
    assert all(mtls_server.seen[i] >= 1 for i in ids)


async def test_invalid_job_names_the_field_and_enqueues_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"url": f"sqlite:///{tmp_path / 'q.db'}"})
    good = {"id": "fine", "topic": "RESTProbe", "endpoint": "https://a.example/"}
    bad = {"id": "broken", "topic": "RESTProbe", "endpoint": "https://a.example/", "timeout": "x"}
    ran = await arun_agent("-c", str(config), "enqueue", "-", input=json.dumps([good, bad]))
    assert ran.returncode == 2
    assert "'timeout'" in ran.stderr and "job #2" in ran.stderr and "Traceback" not in ran.stderr
    ran = await arun_agent("-c", str(config), "result", "fine")
    assert ran.returncode == 4
    soap = {"id": "soap", "topic": "SOAPProbe", "endpoint": "https://a.example/", "body": "x <y"}
    ran = await arun_agent("-c", str(config), "enqueue", "-", input=json.dumps([good, soap]))
    assert ran.returncode == 2
    assert "'body' of job #2" in ran.stderr and "well-formed" in ran.stderr
    ran = await arun_agent("-c", str(config), "result", "fine")
    assert ran.returncode == 4


@pytest.mark.parametrize(
    "command", [["run"], ["enqueue", "-"], ["result", "x"], ["call", "-"], ["validate"]]
)
async def test_unusable_config_exits_2_with_the_line(tmp_path: Path, command: list[str]) -> None:
    config = tmp_path / "config.xml"
    config.write_text(
        '<parameters>\n  <parameter name="threads.max" value="lots"/>\n</parameters>\n'
    )
    ran = await arun_agent("-c", str(config), *command, input="{}")
    assert ran.returncode == 2
    assert ran.stderr.count("\n") == 1 and "threads.max" in ran.stderr and "line 2" in ran.stderr
    assert "Traceback" not in ran.stderr


async def test_result_exit_codes(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"url": f"sqlite:///{tmp_path / 'q.db'}"})
    await arun_agent(
        "-c",
        str(config),
        "enqueue",
        "-",
        input=json.dumps({"id": "waiting", "topic": "RESTProbe", "endpoint": "https://a.example/"}),
    )
    pending = await arun_agent("-c", str(config), "result", "waiting")
    unknown = await arun_agent("-c", str(config), "result", "nope")
    assert (pending.returncode, json.loads(pending.stdout)["state"]) == (3, "ready")
    assert unknown.returncode == 4


async def test_worker_processes_share_the_queue(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    config = profile_config(
        tmp_path, pki, mtls_server.port, **{"agent.workers": "2", "threads.max": "2"}
    )
    ids = [f"w-{i}" for i in range(12)]
    jobs = [job_fields(i, mtls_server.port, "/slow?seconds=0.5") for i in ids]
    await arun_agent("-c", str(config), "enqueue", "-", input=json.dumps(jobs))
    ran = await arun_agent("-c", str(config), "run", "--burst")
    assert ran.returncode == 0, ran.stderr
    assert "supervising 2 worker processes" in ran.stderr
    stopped = [line for line in ran.stderr.splitlines() if "agent stopped" in line]
    processed = [int(line.split("agent stopped: ")[1].split()[0]) for line in stopped]
    assert len(processed) == 2 and sum(processed) == 12 and min(processed) > 0, processed
    assert set((await states(config, ids)).values()) == {"processed"}
    assert set(mtls_server.seen) == set(ids)


async def test_an_enqueue_from_another_process_wakes_an_idle_daemon(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    """The embedded queue notices another process's commit: no waiting for mid.poll.time."""
    config = profile_config(tmp_path, pki, mtls_server.port, **{"mid.poll.time": "60"})
    daemon = await start_daemon(config)
    try:
        await asyncio.wait_for(log_line(daemon, "started"), 30)
        for job_id in ("wake-1", "wake-2"):
            ran = await arun_agent(
                "-c",
                str(config),
                "enqueue",
                "-",
                input=json.dumps(job_fields(job_id, mtls_server.port)),
            )
            assert ran.returncode == 0, ran.stderr
            # far below the 60 s poll interval: only the wake-up can bring each job in
            ran = await arun_agent("-c", str(config), "result", job_id, "--wait", "20")
            assert ran.returncode == 0, ran.stdout + ran.stderr
            assert json.loads(ran.stdout)["state"] == "processed"
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 30) == 0


async def test_a_stored_row_that_is_no_job_ends_invalid_and_the_rest_run(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    """Rows written by another program: each bad one ends as invalid_job, none stops the agent."""
    import sqlite3
    import time

    config = profile_config(tmp_path, pki, mtls_server.port)
    good = json.dumps(
        [job_fields("good-1", mtls_server.port), job_fields("good-2", mtls_server.port)]
    )
    assert (await arun_agent("-c", str(config), "enqueue", "-", input=good)).returncode == 0
    with sqlite3.connect(tmp_path / "queue.db") as db:
        now = time.time()
        db.executemany(
            "INSERT INTO jobs (id, job, created, updated) VALUES (?, ?, ?, ?)",
            [
                ("not-json", "{broken", now, now),
                ("no-endpoint", json.dumps({"id": "no-endpoint", "topic": "RESTProbe"}), now, now),
            ],
        )
    ran = await arun_agent("-c", str(config), "run", "--burst")
    assert ran.returncode == 0, ran.stderr
    assert await states(config, ["good-1", "good-2"]) == {
        "good-1": "processed",
        "good-2": "processed",
    }
    for bad, needle in (("not-json", "not JSON"), ("no-endpoint", "endpoint")):
        result = json.loads((await arun_agent("-c", str(config), "result", bad)).stdout)
        assert result["state"] == "error" and result["error"]["kind"] == "invalid_job"
        assert bad in result["error"]["message"] and needle in result["error"]["message"]


async def test_worker_processes_name_themselves_and_say_when_idle(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    """``agent.workers`` = 2 at debug: every line a worker writes carries its index, and an idle
    worker says it polls an empty queue."""
    import os
    import time

    params = {"agent.workers": "2", "mid.log.level": "debug"}
    config = profile_config(tmp_path, pki, mtls_server.port, **params)
    log = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MID_CONFIG_")}
    with log.open("wb") as sink:
        daemon = await asyncio.create_subprocess_exec(
            *agent_cmd("-c", str(config), "run"), stderr=sink, env=env
        )

    def entries() -> list[dict[str, object]]:
        return [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]

    try:
        await arun_agent(
            "-c", str(config), "enqueue", "-", input=json.dumps(job_fields("named", 0))
        )
        deadline = time.monotonic() + 60
        while {e.get("worker") for e in entries() if "queue empty" in str(e["msg"])} != {0, 1}:
            assert daemon.returncode is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 30) == 0
    logged = entries()
    # lines without the field are the supervisor's own (its event loop's included)
    unnamed = {str(e["logger"]) for e in logged if "worker" not in e}
    assert unnamed == {"agent.supervisor", "asyncio"}, unnamed
    workers = [e for e in logged if "worker" in e]
    assert {e["worker"] for e in workers if "started:" in str(e["msg"])} == {0, 1}
    assert {e["worker"] for e in workers if "agent stopped" in str(e["msg"])} == {0, 1}
    [done] = [e for e in workers if e.get("job_id") == "named"]
    idle = [e for e in workers if "queue empty" in str(e["msg"])]
    assert {e["level"] for e in idle} == {"debug"}
    assert "queue empty, next poll in 0.2s" in {str(e["msg"]) for e in idle}
    assert done["worker"] in (0, 1)
