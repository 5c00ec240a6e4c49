"""A job's secrets at rest: sealed in every queue backend while queued, erased from the files once
the job has its result, never in the journal; the files that hold job data are 0600; a key the
agents do not share ends the job as ``invalid_job``; a known id with other content is refused."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import stat
from pathlib import Path

import asyncpg
import pytest

from agent.commands.demo.demoserver import DemoServer
from agent.config.secure import JobKey
from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.queues.base import Claim
from agent.queues.journal import Journal
from agent.queues.postgres import PostgresQueue
from agent.queues.postgres_sql import MIGRATIONS
from agent.queues.sqlite import SqliteQueue
from tests.support.cli import Ran, arun_agent
from tests.support.configs import write_config
from tests.support.pg import database_url, fetch, fresh_database
from tests.support.pki import PKI

pytestmark = pytest.mark.timeout(120)

KS_PASS = "Keystore-Pass-7781"
WSS_PASS = "Wss-Pass-5513"
RESOLVE = "alpha.test:127.0.0.1,beta.test:127.0.0.1"
GREET = (
    '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
    '<Greet xmlns="urn:demo"><name>at-rest</name></Greet></soap:Body></soap:Envelope>'
)


def secret_job(job_id: str, pki: PKI, port: int = 443) -> dict[str, object]:
    p12 = pki.client_one.pkcs12(KS_PASS)
    return {
        "id": job_id,
        "topic": "SOAPProbe",
        "endpoint": f"https://alpha.test:{port}/soap",
        "body": GREET,
        "inline_profile": {
            "keystore": {
                "type": "pkcs12",
                "data_base64": base64.b64encode(p12).decode(),
                "password": KS_PASS,
            },
            "truststore_pem": pki.ca.cert_pem().decode(),
            "wss": {"username": "svc-user", "password": WSS_PASS},
        },
    }


def needles(job: dict[str, object]) -> list[bytes]:
    """What must not be found in the files: both passwords and a stretch of the keystore."""
    data = job["inline_profile"]["keystore"]["data_base64"]  # type: ignore[index]
    middle = len(data) // 2
    return [KS_PASS.encode(), WSS_PASS.encode(), data[middle : middle + 48].encode()]


def found_in(directory: Path, wanted: list[bytes]) -> list[str]:
    """``file: needle`` for every needle found in the raw bytes of any file under ``directory``."""
    hits = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        hits += [f"{path.name}: {n[:20]!r}" for n in wanted if n in raw]
    return hits


def sealed_of(db: Path, job_id: str) -> str | None:
    with sqlite3.connect(db) as con:
        row = con.execute("SELECT secrets FROM jobs WHERE id = ?", (job_id,)).fetchone()
    con.close()
    return None if row is None else row[0]


def agent_config(directory: Path, queue_url: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    params = {"url": queue_url, "mid.poll.time": "0.2", "agent.resolve": RESOLVE}
    return write_config(directory, params)


async def enqueue(config: Path, *jobs: dict[str, object]) -> Ran:
    return await arun_agent("-c", str(config), "enqueue", "-", input=json.dumps(list(jobs)))


async def result_of(config: Path, job_id: str) -> dict[str, object]:
    got = await arun_agent("-c", str(config), "result", job_id)
    assert got.returncode == 0, got.stdout + got.stderr
    out: dict[str, object] = json.loads(got.stdout)
    return out


# ---------------------------------------------------------------------------------- SQLite


async def test_sqlite_secrets_are_sealed_while_queued_and_gone_after_the_result(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    """Through the CLI and the daemon: the files never hold the secrets in plain text; once the
    result is stored even the sealed copy is gone from the database and its WAL (a reader
    keeps its connection open throughout, so SQLite does not simply delete the WAL at close)."""
    port = mtls_server.port
    config = agent_config(tmp_path, f"sqlite:///{tmp_path / 'queue.db'}")
    job = secret_job("sealed", pki, port)
    ran = await enqueue(config, job)
    assert ran.returncode == 0, ran.stderr
    assert found_in(tmp_path, needles(job)) == []
    sealed = sealed_of(tmp_path / "queue.db", "sealed")
    assert sealed is not None
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("queue.db*"))
    assert sealed[100:160].encode() in stored  # the search finds the sealed copy while it is there
    reader = sqlite3.connect(tmp_path / "queue.db")
    try:
        reader.execute("SELECT count(*) FROM jobs").fetchone()  # holds the WAL in place
        ran = await arun_agent("-c", str(config), "run", "--burst")
        assert ran.returncode == 0, ran.stderr
        assert (tmp_path / "queue.db-wal").exists()
        result = await result_of(config, "sealed")
        assert result["state"] == "processed" and result["status"] == 200, result
        assert "Hello, at-rest" in str(result["body"])
        assert WSS_PASS in mtls_server.requests[-1]["body"]  # the secrets reached the call
        assert sealed_of(tmp_path / "queue.db", "sealed") is None
        gone = [*needles(job), sealed[100:160].encode(), sealed[-60:].encode()]
        assert found_in(tmp_path, gone) == []
        assert not any(n.decode() in ran.stderr for n in needles(job))
    finally:
        reader.close()


async def test_a_job_without_secrets_needs_no_key(tmp_path: Path) -> None:
    queue = SqliteQueue(tmp_path / "queue.db")
    await queue.open()
    try:
        plain = Job.from_dict({"id": "p", "topic": "RESTProbe", "endpoint": "https://a.example/"})
        await queue.enqueue([plain])
        (claim,) = await queue.claim("agent-1", 1, 60)
        assert claim.job == plain and sealed_of(tmp_path / "queue.db", "p") is None
    finally:
        await queue.close()
    assert not (tmp_path / "queue.db.key").exists()


async def test_another_key_ends_the_job_as_invalid_job_and_the_daemon_goes_on(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer
) -> None:
    """Two agents on one queue with different key files: the job fails, clearly, not the agent."""
    (tmp_path / "shared").mkdir()
    url = f"sqlite:///{tmp_path / 'shared' / 'queue.db'}"
    sender, runner = agent_config(tmp_path / "a", url), agent_config(tmp_path / "b", url)
    plain = {"id": "plain", "topic": "RESTProbe", "endpoint": "https://alpha.test:1/echo"}
    ran = await enqueue(sender, secret_job("locked", pki, mtls_server.port), plain)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "a" / "config.xml.key").exists()
    ran = await arun_agent("-c", str(runner), "run", "--burst")
    assert ran.returncode == 0, ran.stderr
    result = await result_of(runner, "locked")
    error = result["error"]
    assert result["state"] == "error" and error["kind"] == "invalid_job", result  # type: ignore[index]
    assert (
        "cannot decrypt the job's secrets: the agents sharing this queue need the same key file "
        f"{tmp_path / 'b' / 'config.xml.key'}" in error["message"]  # type: ignore[index]
    )
    assert (await result_of(runner, "plain"))["state"] == "error"  # the next job ran too
    assert KS_PASS not in json.dumps(result) and KS_PASS not in ran.stderr


async def test_a_copied_key_file_opens_the_secrets(tmp_path: Path, pki: PKI) -> None:
    one = SqliteQueue(tmp_path / "q.db", JobKey(tmp_path / "one.key"))
    other = SqliteQueue(tmp_path / "q.db", JobKey(tmp_path / "other.key"))
    await one.open()
    await other.open()
    try:
        job = Job.from_dict(secret_job("j", pki))  # (each PKCS#12 made differs: made once)
        await one.enqueue([job])
        (claim,) = await other.claim("agent-2", 1, 0.01)
        assert claim.problem is not None and str(tmp_path / "other.key") in claim.problem
        await other.release([claim])
        (tmp_path / "other.key").write_bytes((tmp_path / "one.key").read_bytes())
        (claim,) = await other.claim("agent-2", 1, 60)
        assert claim.problem is None and claim.job == job
    finally:
        await one.close()
        await other.close()


async def test_an_older_queue_file_loses_the_clear_text_secrets_of_its_finished_jobs(
    tmp_path: Path, pki: PKI
) -> None:
    """A file written by a version that stored secrets as sent: on the first open, finished
    jobs are stripped of them (and the pages overwritten)."""
    job = secret_job("old", pki)
    db = tmp_path / "queue.db"
    with sqlite3.connect(db) as con:
        con.execute(
            "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,"
            " job TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'ready', token INTEGER NOT NULL"
            " DEFAULT 0, attempt INTEGER NOT NULL DEFAULT 0, agent TEXT, lease_until REAL,"
            " created REAL NOT NULL, updated REAL NOT NULL, result TEXT)"
        )
        con.execute(
            "INSERT INTO jobs (id, job, state, created, updated, result)"
            " VALUES ('old', ?, 'processed', 0, 0, '{}')",
            (json.dumps(job),),
        )
    con.close()
    assert found_in(tmp_path, needles(job)) != []
    queue = SqliteQueue(db)
    await queue.open()
    await queue.close()
    assert found_in(tmp_path, needles(job)) == []


# ---------------------------------------------------------------------------------- modes


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_files_holding_job_data_are_0600(tmp_path: Path, pki: PKI) -> None:
    """The queue's and the journal's directories are the operator's (the agent never makes
    them: tests/test_first_hour.py); the files in them are private."""
    old = os.umask(0o022)  # the usual umask, whatever the test runner's
    (tmp_path / "new" / "dir").mkdir(parents=True)
    (tmp_path / "j").mkdir()
    try:
        queue = SqliteQueue(tmp_path / "new" / "dir" / "queue.db")
        await queue.open()
        try:
            await queue.enqueue([Job.from_dict(secret_job("m", pki))])
            db = queue.path
            files = [db, db.with_name("queue.db-wal"), db.with_name("queue.db-shm")]
            files.append(db.with_name("queue.db.key"))
            assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        finally:
            await queue.close()
        journal = Journal(tmp_path / "j" / "journal.db")
        try:
            assert mode(tmp_path / "j" / "journal.db") == 0o600
            assert mode(tmp_path / "j" / "journal.db-wal") == 0o600
        finally:
            journal.close()
    finally:
        os.umask(old)


async def test_a_queue_file_left_readable_by_an_earlier_version_is_tightened(
    tmp_path: Path,
) -> None:
    path = tmp_path / "queue.db"
    sqlite3.connect(path).close()
    os.chmod(path, 0o644)
    queue = SqliteQueue(path)
    await queue.open()
    await queue.close()
    assert mode(path) == 0o600


# ---------------------------------------------------------------------------------- journal


async def test_the_journal_never_holds_secrets_and_forgets_what_it_delivered(
    tmp_path: Path, pki: PKI
) -> None:
    job = secret_job("j1", pki)
    journal = Journal(tmp_path / "journal.db")
    try:
        claim = Claim(Job.from_dict(job), token=3, attempt=1)
        answer = "answer-body-" + "x" * 64
        await journal.put(claim, Result(id="j1", state="processed", status=200, body=answer))
        assert found_in(tmp_path, needles(job)) == []
        ((kept, result),) = await journal.pending()
        assert (kept.job.id, kept.token, kept.attempt, result.body) == ("j1", 3, 1, answer)
        await journal.remove(["j1"])
        assert found_in(tmp_path, [answer.encode()]) == []  # overwritten, not just unlinked
    finally:
        journal.close()


# ---------------------------------------------------------------------------------- PostgreSQL


async def test_postgres_row_holds_no_plaintext_secret_and_none_after_completion(
    tmp_path: Path, pki: PKI
) -> None:
    job = secret_job("pg", pki)
    async with fresh_database() as name:
        queue = PostgresQueue(database_url(name), key=JobKey(tmp_path / "shared.key"))
        await queue.open()
        try:
            await queue.enqueue([Job.from_dict(job)])
            (row,) = await fetch(name, "SELECT t::text AS all, secrets FROM agent_jobs t")
            assert row["secrets"] is not None
            assert [n for n in needles(job) if n.decode() in row["all"]] == []
            (claim,) = await queue.claim("agent-1", 1, 60)
            assert claim.job == Job.from_dict(job)
            await queue.complete([(claim, Result(id="pg", state="processed", status=200))])
            (row,) = await fetch(name, "SELECT t::text AS all, secrets, job FROM agent_jobs t")
            assert row["secrets"] is None
            assert [n for n in needles(job) if n.decode() in row["all"]] == []
            keystore = json.loads(row["job"])["inline_profile"]["keystore"]
            assert sorted(keystore) == ["type"]  # the public rest of the job stays
        finally:
            await queue.close()


async def test_postgres_agents_need_the_same_key_file(tmp_path: Path, pki: PKI) -> None:
    job = Job.from_dict(secret_job("shared", pki))
    async with fresh_database() as name:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        sender = PostgresQueue(database_url(name), key=JobKey(tmp_path / "a" / "agent.key"))
        other = PostgresQueue(database_url(name), key=JobKey(tmp_path / "b" / "agent.key"))
        await sender.open()
        await other.open()
        try:
            await sender.enqueue([job])
            (claim,) = await other.claim("agent-b", 1, 60)
            assert claim.problem is not None
            assert "need the same key file " + str(tmp_path / "b" / "agent.key") in claim.problem
            await other.release([claim])
            (tmp_path / "b" / "agent.key").write_bytes((tmp_path / "a" / "agent.key").read_bytes())
            (claim,) = await other.claim("agent-b", 1, 60)
            assert claim.problem is None and claim.job == job
        finally:
            await sender.close()
            await other.close()


async def test_postgres_migration_strips_clear_text_secrets_of_finished_jobs(pki: PKI) -> None:
    job = secret_job("old", pki)
    async with fresh_database() as name:
        con = await asyncpg.connect(database_url(name))  # the schema of version 1
        try:
            await con.execute(MIGRATIONS[0])
            await con.execute(
                "CREATE TABLE agent_schema_version (version integer NOT NULL);"
                "INSERT INTO agent_schema_version VALUES (1)"
            )
            await con.execute(
                "INSERT INTO agent_jobs (id, job, state, result)"
                " VALUES ('old', $1, 'processed', '{}')",
                json.dumps(job),
            )
        finally:
            await con.close()
        queue = PostgresQueue(database_url(name))
        await queue.open()
        await queue.close()
        (row,) = await fetch(name, "SELECT t::text AS all FROM agent_jobs t")
        assert [n for n in needles(job) if n.decode() in row["all"]] == []


# ---------------------------------------------------------------------------------- re-enqueue


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_enqueue_refuses_a_known_id_with_other_content(
    tmp_path: Path, pki: PKI, backend: str
) -> None:
    async with fresh_database() as name:
        url = database_url(name) if backend == "postgres" else f"sqlite:///{tmp_path / 'q.db'}"
        config = agent_config(tmp_path, url)
        job = secret_job("dup", pki)
        for _ in range(2):  # the same job again: a no-op
            ran = await enqueue(config, job)
            assert (ran.returncode, ran.stdout) == (0, "dup\n"), ran.stderr
        other_password = json.loads(json.dumps(job).replace(KS_PASS, "Other-Pass"))
        for changed in (job | {"timeout": 5}, other_password):
            ran = await enqueue(config, changed)
            assert ran.returncode == 2, ran.stderr
            assert "'id'" in ran.stderr
            assert "job 'dup' is already queued with different content" in ran.stderr
            assert KS_PASS not in ran.stderr and "Other-Pass" not in ran.stderr
        unkeyed = hashlib.sha256(KS_PASS.encode()).hexdigest().encode()
        assert found_in(tmp_path, [unkeyed]) == []
