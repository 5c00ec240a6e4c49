"""``agent jobs``: the queue's jobs without SQL, on the embedded queue and on PostgreSQL, after a
real daemon ran them against the mTLS server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.commands.demo.demoserver import DemoServer
from tests.support.cli import arun_agent
from tests.support.configs import profile_config
from tests.support.health import free_port
from tests.support.jobs import job_fields
from tests.support.pg import database_url, fresh_database
from tests.support.pki import PKI


async def ran_three(config: Path, port: int) -> None:
    jobs = [
        job_fields("ok-1", port),
        job_fields("refused", free_port(), max_attempts=2),  # nothing listens there
        job_fields("ok-2", port, profile="two"),
    ]
    lines = "\n".join(json.dumps(j) for j in jobs)
    assert (await arun_agent("-c", str(config), "enqueue", "-", input=lines)).returncode == 0
    ran = await arun_agent("-c", str(config), "run", "--burst")
    assert ran.returncode == 0, ran.stderr[-2000:]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_agent_jobs_lists_states_attempts_and_the_last_error(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer, backend: str
) -> None:
    async with fresh_database() as db:
        extra = {"url": database_url(db)} if backend == "postgresql" else {}
        config = profile_config(tmp_path, pki, mtls_server.port, **extra)
        await ran_three(config, mtls_server.port)
        listed = await arun_agent("-c", str(config), "jobs", "--json")
        assert listed.returncode == 0, listed
        rows = json.loads(listed.stdout)
        assert [r["id"] for r in rows] == ["ok-2", "refused", "ok-1"]  # newest first
        by_id = {r["id"]: r for r in rows}
        assert by_id["ok-1"]["state"] == "processed" and by_id["ok-1"]["error"] is None
        dead = by_id["refused"]
        assert (dead["state"], dead["error"]["kind"]) == ("error", "connect")
        assert "cannot connect to alpha.test" in dead["error"]["message"]
        assert dead["updated"] and dead["due"] is None
        errors = await arun_agent("-c", str(config), "jobs", "--state", "error")
        assert errors.returncode == 0
        assert "refused" in errors.stdout and "connect: cannot connect" in errors.stdout
        assert "ok-1" not in errors.stdout
        newest = await arun_agent("-c", str(config), "jobs", "--limit", "1", "--json")
        assert [r["id"] for r in json.loads(newest.stdout)] == ["ok-2"]


async def test_agent_jobs_refuses_a_bad_limit_and_state(tmp_path: Path, pki: PKI) -> None:
    config = profile_config(tmp_path, pki, 443)
    bad = await arun_agent("-c", str(config), "jobs", "--limit", "0")
    assert bad.returncode == 2 and "--limit" in bad.stderr
    wrong = await arun_agent("-c", str(config), "jobs", "--state", "lost")
    assert wrong.returncode == 2 and "--state" in wrong.stderr
    empty = await arun_agent("-c", str(config), "jobs")
    assert (empty.returncode, empty.stdout) == (0, "no jobs\n")
