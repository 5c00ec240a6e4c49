"""Framing belongs to the agent: a job cannot smuggle a second request, whichever way it reaches
the queue, and a bad row never costs the next job its answer.

The peer is :class:`tests.support.keepalive_server.KeepAliveServer`: it honours
``Transfer-Encoding`` and keeps connections open, so a job framing its own body would be read as
two requests."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.config.config import load_config
from agent.queues import Claim, open_queue
from agent.queues.sqlite import SqliteQueue
from tests.support.cli import arun_agent
from tests.support.configs import write_config
from tests.support.jobs import job_fields
from tests.support.keepalive_server import KeepAliveServer
from tests.support.pg import database_url, fetch, fresh_database
from tests.support.servers import ServerPKI

pytestmark = pytest.mark.timeout(90)

P = "mid.httpclient.protocol"
SMUGGLED = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: alpha.test\r\n\r\n"


@pytest.fixture
async def server(server_pki: ServerPKI) -> AsyncIterator[KeepAliveServer]:
    async with KeepAliveServer(server_pki) as running:
        yield running


def config_for(directory: Path, pki: ServerPKI, port: int, **extra: str) -> Path:
    return write_config(
        directory,
        {
            "name": "framing",
            "url": f"sqlite:///{directory / 'queue.db'}",
            "threads.max": "1",  # one job at a time: consecutive jobs share the pooled connection
            "agent.resolve": "alpha.test:127.0.0.1",
            f"{P}.partner.path": str(pki.client_one.crt),
            f"{P}.partner.key": str(pki.client_one.key),
            f"{P}.partner.truststore": str(pki.ca_pem),
            f"{P}.partner.port": str(port),
            **extra,
        },
    )


def smuggling_job(port: int) -> dict[str, Any]:
    return job_fields(
        "smuggler",
        port,
        "/first",
        method="POST",
        headers={"Transfer-Encoding": "chunked"},
        body=SMUGGLED,
    )


async def inject(config: Path, rows: list[dict[str, Any]]) -> None:
    """Write job rows straight into the queue file, as another program would (no enqueue)."""
    queue = SqliteQueue(config.parent / "queue.db")
    await queue.open()  # creates the schema
    await queue.close()
    now = time.time()
    with sqlite3.connect(config.parent / "queue.db") as db:
        db.executemany(
            "INSERT INTO jobs (id, job, created, updated) VALUES (?, ?, ?, ?)",
            [(row["id"], row.get("raw") or json.dumps(row), now, now) for row in rows],
        )


async def results(config: Path, ids: list[str]) -> dict[str, dict[str, Any]]:
    queue = SqliteQueue(config.parent / "queue.db")
    await queue.open()
    try:
        out = {}
        for job_id in ids:
            status = await queue.status(job_id)
            assert status is not None and status.result is not None, (job_id, status)
            out[job_id] = status.result.to_dict()
        return out
    finally:
        await queue.close()


async def run_burst(config: Path) -> None:
    ran = await arun_agent("-c", str(config), "run", "--burst")
    assert ran.returncode == 0, ran.stderr


async def test_the_server_reads_a_framed_body_as_a_second_request(
    server: KeepAliveServer, server_pki: ServerPKI
) -> None:
    """The harness is a real target: the bytes such a job would send come out as two requests
    on one connection, so the tests below would see a smuggled request if one got through."""
    ctx = ssl.create_default_context(cafile=str(server_pki.ca_pem))
    ctx.load_cert_chain(server_pki.client_one.crt, server_pki.client_one.key)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, ssl=ctx, server_hostname="alpha.test"
    )
    writer.write(
        b"POST /first HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        + SMUGGLED.encode()
    )
    answers = [await reader.readuntil(b"}") for _ in range(2)]
    writer.close()
    assert [s.path for s in server.seen] == ["/first", "/smuggled"]
    assert {s.connection for s in server.seen} == {1}
    assert b'"path": "/smuggled"' in answers[1]


async def test_enqueue_refuses_a_smuggling_job_naming_headers(
    tmp_path: Path, server: KeepAliveServer, server_pki: ServerPKI
) -> None:
    config = config_for(tmp_path, server_pki, server.port)
    ran = await arun_agent(
        "-c", str(config), "enqueue", "-", input=json.dumps(smuggling_job(server.port))
    )
    assert ran.returncode == 2
    [line] = ran.stderr.splitlines()
    assert "job field 'headers'" in line and "'Transfer-Encoding' frames the request" in line
    ran = await arun_agent("-c", str(config), "result", "smuggler")
    assert ran.returncode == 4  # nothing was queued
    assert server.seen == []


async def test_a_smuggling_row_in_the_queue_ends_invalid_job_and_the_next_job_gets_its_answer(
    tmp_path: Path, server: KeepAliveServer, server_pki: ServerPKI
) -> None:
    config = config_for(tmp_path, server_pki, server.port)
    await inject(config, [smuggling_job(server.port)])
    ran = await arun_agent(
        "-c",
        str(config),
        "enqueue",
        "-",
        input=json.dumps(job_fields("next", server.port, "/next")),
    )
    assert ran.returncode == 0, ran.stderr
    await run_burst(config)
    got = await results(config, ["smuggler", "next"])
    assert got["smuggler"]["state"] == "error"
    assert got["smuggler"]["error"]["kind"] == "invalid_job"
    assert "job field 'headers'" in got["smuggler"]["error"]["message"]
    assert "Transfer-Encoding" in got["smuggler"]["error"]["message"]
    answer = json.loads(got["next"]["body"])
    assert (got["next"]["status"], answer["path"], answer["order"]) == (200, "/next", 1)
    assert server.paths() == ["/next"]


async def test_two_jobs_over_one_pooled_connection_each_get_their_own_answer(
    tmp_path: Path, server: KeepAliveServer, server_pki: ServerPKI
) -> None:
    config = config_for(tmp_path, server_pki, server.port)
    jobs = [
        job_fields("one", server.port, "/one", method="POST", body="first body"),
        job_fields("two", server.port, "/two", method="POST", body="second body"),
    ]
    ran = await arun_agent("-c", str(config), "enqueue", "-", input=json.dumps(jobs))
    assert ran.returncode == 0, ran.stderr
    await run_burst(config)
    got = await results(config, ["one", "two"])
    answers = {job_id: json.loads(result["body"]) for job_id, result in got.items()}
    assert (answers["one"]["path"], answers["one"]["body"]) == ("/one", "first body")
    assert (answers["two"]["path"], answers["two"]["body"]) == ("/two", "second body")
    assert answers["one"]["connection"] == answers["two"]["connection"]  # one pooled connection
    assert sorted(a["order"] for a in answers.values()) == [1, 2]
    assert server.paths() == ["/one", "/two"]


CLAIM_REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "host": ({"headers": {"host": "evil.test"}}, "job field 'headers': 'host' cannot be set"),
    "length": ({"headers": {"Content-Length": "0"}}, "job field 'headers'"),
    "proxy": ({"headers": {"Proxy-Authorization": "Basic x"}}, "job field 'headers'"),
    "crlf": ({"headers": {"X-A": "1\r\nX-B: 2"}}, "job field 'headers.X-A': contains a line"),
    "name": ({"headers": {"X A": "1"}}, "is not a header name"),
    "method": ({"method": "GET /x HTTP/1.1\r\n"}, "job field 'method'"),
    "sni": ({"sni": "off"}, "job field 'sni': 'off' is ambiguous: write true or false"),
    "deep": ({"raw": "[" * 1500 + "]" * 1500}, "stored job 'deep'"),
    "big": ({"raw": "{" + "x" * 5000}, "is 5001 bytes, over agent.max_job_bytes (4096 bytes)"),
}


async def test_rows_that_skipped_enqueue_end_invalid_job_and_the_agent_carries_on(
    tmp_path: Path, server: KeepAliveServer, server_pki: ServerPKI
) -> None:
    """Rows another program wrote (PostgreSQL, an instance) meet the enqueue rules at claim;
    one over agent.max_job_bytes is refused by its length (it is not even JSON here)."""
    config = config_for(tmp_path, server_pki, server.port, **{"agent.max_job_bytes": "4096"})
    rows = [
        job_fields(name, server.port, f"/{name}", **change)
        for name, (change, _) in CLAIM_REFUSALS.items()
    ]
    numeric = job_fields("numeric", server.port, "/numeric")
    numeric["endpoint"] = f"https://2130706433:{server.port}/numeric"
    await inject(config, [*rows, numeric, job_fields("fine", server.port, "/fine")])
    await run_burst(config)
    got = await results(config, [*CLAIM_REFUSALS, "numeric", "fine"])
    for name, (_, needle) in CLAIM_REFUSALS.items():
        assert got[name]["error"]["kind"] == "invalid_job", (name, got[name])
        assert needle in got[name]["error"]["message"], (name, got[name]["error"])
    assert got["numeric"]["error"]["kind"] == "invalid_job"
    assert "job field 'endpoint'" in got["numeric"]["error"]["message"]
    assert "not a canonical IPv4 address" in got["numeric"]["error"]["message"]
    assert got["fine"]["status"] == 200 and json.loads(got["fine"]["body"])["path"] == "/fine"
    assert server.paths() == ["/fine"]


async def test_a_postgres_row_over_max_job_bytes_is_refused_unread(tmp_path: Path) -> None:
    """open_queue gives the backend config.xml's limit; the claim goes by the row's length."""
    async with fresh_database() as name:
        claims = await claim_from_postgres(tmp_path, name)
    assert claims["big"].problem is not None
    assert "over agent.max_job_bytes (4096 bytes); it was not read" in claims["big"].problem
    assert claims["framed"].problem is not None
    assert "job field 'headers': 'TE' frames the request" in claims["framed"].problem


async def claim_from_postgres(tmp_path: Path, pg_database: str) -> dict[str, Claim]:
    config = load_config(
        write_config(tmp_path, {"url": database_url(pg_database), "agent.max_job_bytes": "4096"}),
        env={},
    )
    queue = open_queue(config)
    await queue.open()
    try:
        big = job_fields("big", 443, "/big", body="x" * 5000)
        framed = job_fields("framed", 443, "/x", headers={"TE": "trailers"})
        for row in (big, framed):
            await fetch(
                pg_database,
                "INSERT INTO agent_jobs (id, job) VALUES ($1, $2)",
                row["id"],
                json.dumps(row),
            )
        return {c.job.id: c for c in await queue.claim("agent-1", 10, 60)}
    finally:
        await queue.close()
