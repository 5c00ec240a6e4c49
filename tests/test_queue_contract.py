"""One contract for every queue backend: the semantics agent/queues/base.py promises.

Each case runs against the embedded SQLite queue, PostgreSQL (a fresh database) and the ECC
queue over the in-test Table API (tests/support/fake_instance.py). All three lease claims and
fence out stale tokens. Only SQLite and PostgreSQL claim atomically: the Table API offers no
compare-and-set, so the ECC queue writes a claim and reads it back, which leaves a moment in
which two agents can both take a record; the case about concurrent claimers runs on the other
two. The ECC queue's own cases (a restart takes back its records at once, a live lease is left
alone, a claim overwritten meanwhile is let go, a table without the lease fields) follow.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config.secure import JobKey
from agent.errors import JobError
from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.queues.base import Claim, Queue
from agent.queues.ecc import EccQueue
from agent.queues.postgres import PostgresQueue
from agent.queues.sqlite import SqliteQueue
from tests.support.fake_instance import FakeInstance, serve_instance
from tests.support.pg import database_url, fresh_database
from tests.support.pki import PKI

pytestmark = pytest.mark.timeout(60)

RECLAIM_SLACK = 3.0  # seconds past a lease's end for the job to be claimable again


@dataclass
class Backend:
    name: str
    make: Callable[[], Queue]  # a new, unopened queue object on the same store

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[Queue]:
        queue = self.make()
        await queue.open()
        try:
            yield queue
        finally:
            await queue.close()


@asynccontextmanager
async def ecc_backend(pki: PKI, tmp_path: Path) -> AsyncIterator[Backend]:
    issued = pki.ca.issue("instance", names=("127.0.0.1",))
    crt, key = issued.write_pem(tmp_path, "instance")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(crt, key)
    instance = FakeInstance()
    async with serve_instance(instance, server_ctx) as url:

        def make() -> Queue:
            ctx = ssl.create_default_context(cadata=pki.ca.cert_pem().decode())
            return EccQueue(
                url,
                agent="mid.server.contract",
                username=instance.username,
                password=instance.password,
                ssl_context=ctx,
            )

        yield Backend("ecc", make)


@asynccontextmanager
async def make_backend(name: str, tmp_path: Path, pki: PKI) -> AsyncIterator[Backend]:
    if name == "sqlite":
        yield Backend("sqlite", lambda: SqliteQueue(tmp_path / "queue.db"))
    elif name == "postgres":
        async with fresh_database() as name:
            key = JobKey(tmp_path / "queue.key")
            yield Backend("postgres", lambda: PostgresQueue(database_url(name), key=key))
    else:
        async with ecc_backend(pki, tmp_path) as ecc:
            yield ecc


@pytest.fixture(params=["sqlite", "postgres", "ecc"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, pki: PKI
) -> AsyncIterator[Backend]:
    """Every backend."""
    async with make_backend(request.param, tmp_path, pki) as made:
        yield made


@pytest.fixture(params=["sqlite", "postgres", "ecc"])
async def leased(
    request: pytest.FixtureRequest, tmp_path: Path, pki: PKI
) -> AsyncIterator[Backend]:
    """The backends with leases and fencing tokens (all of them)."""
    async with make_backend(request.param, tmp_path, pki) as made:
        yield made


@pytest.fixture(params=["sqlite", "postgres"])
async def atomic(
    request: pytest.FixtureRequest, tmp_path: Path, pki: PKI
) -> AsyncIterator[Backend]:
    """The backends whose claims are atomic (not the ECC queue: see the module's docstring)."""
    async with make_backend(request.param, tmp_path, pki) as made:
        yield made


@pytest.fixture
async def queue(backend: Backend) -> AsyncIterator[Queue]:
    async with backend.opened() as q:
        yield q


@pytest.fixture
async def leased_queue(leased: Backend) -> AsyncIterator[Queue]:
    async with leased.opened() as q:
        yield q


def job(job_id: str) -> Job:
    return Job.from_dict(
        {"id": job_id, "topic": "RESTProbe", "endpoint": f"https://a.example/{job_id}"}
    )


def done(claim: Claim, state: str = "processed") -> tuple[Claim, Result]:
    if state == "processed":
        return claim, Result(id=claim.job.id, state="processed", status=200, body="ok")
    return claim, Result.failed(claim.job.id, "connect", "refused")


async def reclaim(queue: Queue, agent: str, lease: float) -> list[Claim]:
    """Claim until a lease of ``lease`` seconds lapses and its job comes back (polled, bounded)."""
    end = time.monotonic() + lease + RECLAIM_SLACK
    while time.monotonic() < end:
        claims = await queue.claim(agent, 10, 60)
        if claims:
            return claims
        await asyncio.sleep(0.05)
    raise AssertionError("no lapsed lease came back")


async def test_enqueue_is_idempotent(queue: Queue) -> None:
    assert await queue.enqueue([job("a"), job("b")]) == ["a", "b"]
    assert await queue.enqueue([job("a")]) == ["a"]
    claims = await queue.claim("agent-1", 10, 60)
    assert sorted(c.job.id for c in claims) == ["a", "b"]
    assert await queue.claim("agent-1", 10, 60) == []


def secret_job(job_id: str, password: str = "ks-pass") -> Job:
    inline = {
        "keystore": {"type": "pkcs12", "data_base64": "a2V5c3RvcmU=", "password": password},
        "wss": {"username": "svc", "password": "wss-pass"},
    }
    return Job.from_dict(
        {"id": job_id, "topic": "SOAPProbe", "endpoint": "https://a.example/", "body": "<x/>"}
        | {"inline_profile": inline}
    )


async def test_enqueue_under_a_known_id_with_other_content_is_refused(
    leased_queue: Queue,
) -> None:
    queue = leased_queue
    await queue.enqueue([job("a"), secret_job("s")])
    assert await queue.enqueue([job("a"), secret_job("s")]) == ["a", "s"]  # the same: no-op
    other = Job.from_dict(job("a").to_dict() | {"method": "POST"})
    for batch in ([job("new"), other], [secret_job("s", password="changed")]):
        with pytest.raises(JobError) as refused:
            await queue.enqueue(batch)
        assert refused.value.field == "id"
        assert "is already queued with different content" in refused.value.message
    assert await queue.status("new") is None  # the refused batch left nothing behind
    claims = await queue.claim("agent-1", 10, 60)
    assert sorted(c.job.id for c in claims) == ["a", "s"]
    assert {c.job.id: c.job for c in claims} == {"a": job("a"), "s": secret_job("s")}


async def test_a_job_comes_back_with_its_secrets_at_claim(leased_queue: Queue) -> None:
    await leased_queue.enqueue([secret_job("s")])
    (claim,) = await leased_queue.claim("agent-1", 1, 60)
    assert claim.problem is None and claim.job == secret_job("s")


async def test_claim_takes_jobs_in_enqueue_order_up_to_the_limit(queue: Queue) -> None:
    ids = [f"job-{i}" for i in range(5)]
    await queue.enqueue([job(i) for i in ids[:3]])
    await queue.enqueue([job(i) for i in ids[3:]])
    first = await queue.claim("agent-1", 3, 60)
    assert [c.job.id for c in first] == ids[:3]
    assert first[0].job == job("job-0")
    assert all(c.attempt == 1 for c in first)
    assert [c.job.id for c in await queue.claim("agent-1", 3, 60)] == ids[3:]
    assert await queue.claim("agent-1", 0, 60) == []
    status = await queue.status("job-4")
    assert status is not None and (status.state, status.result) == ("processing", None)


async def test_lapsed_lease_is_claimed_again_with_a_higher_token(leased_queue: Queue) -> None:
    queue = leased_queue
    await queue.enqueue([job("lapse")])
    (first,) = await queue.claim("agent-1", 1, 0.1)
    (again,) = await reclaim(queue, "agent-2", 0.1)
    assert again.job.id == "lapse"
    assert again.token > first.token and again.attempt == first.attempt + 1 == 2


async def test_renew_keeps_the_lease(leased_queue: Queue) -> None:
    queue = leased_queue
    await queue.enqueue([job("kept"), job("lapsed")])
    kept, lapsed = await queue.claim("agent-1", 2, 0.5)
    assert await queue.renew([kept], 60) == []
    # Both leases ran out at the same moment; only the renewed one must stay ours.
    assert [c.job.id for c in await reclaim(queue, "agent-2", 0.5)] == ["lapsed"]
    assert await queue.complete([done(kept)]) == []
    assert lapsed.job.id == "lapsed"


async def test_stale_token_is_fenced_out(leased_queue: Queue) -> None:
    queue = leased_queue
    await queue.enqueue([job("fenced")])
    (stale,) = await queue.claim("agent-1", 1, 0.1)
    (current,) = await reclaim(queue, "agent-2", 0.1)
    assert await queue.renew([stale], 60) == [stale]
    assert await queue.complete([done(stale, "error")]) == [stale]
    await queue.release([stale])  # no effect: the job is agent-2's now
    status = await queue.status("fenced")
    assert status is not None and (status.state, status.result) == ("processing", None)
    assert await queue.complete([done(current)]) == []
    status = await queue.status("fenced")
    assert status is not None and status.state == "processed"


async def test_a_fenced_claim_in_a_batch_leaves_the_others_stored(leased_queue: Queue) -> None:
    queue = leased_queue
    await queue.enqueue([job("lapses"), job("stays")])
    (stale,) = await queue.claim("agent-1", 1, 0.1)
    (mine,) = await queue.claim("agent-1", 1, 60)
    (current,) = await reclaim(queue, "agent-2", 0.1)
    assert current.job.id == "lapses"
    assert await queue.complete([done(stale), done(mine, "error")]) == [stale]
    lapsed, stayed = await queue.status("lapses"), await queue.status("stays")
    assert lapsed is not None and (lapsed.state, lapsed.result) == ("processing", None)
    assert stayed is not None and stayed.state == "error" and stayed.result is not None


async def test_exchange_stores_results_then_claims_the_next_jobs(queue: Queue) -> None:
    await queue.enqueue([job(f"x-{i}") for i in range(4)])
    (first,) = await queue.claim("agent-1", 1, 60)
    done_now = await queue.exchange([done(first)], "agent-1", 2, 60)
    assert done_now.fenced == [] and done_now.claim_error is None
    assert [c.job.id for c in done_now.claims] == ["x-1", "x-2"]
    status = await queue.status("x-0")
    assert status is not None and status.state == "processed"
    assert status.result is not None and status.result.body == "ok"
    rest = await queue.exchange([], "agent-1", 5, 60)
    assert [c.job.id for c in rest.claims] == ["x-3"]
    assert (await queue.exchange([], "agent-1", 5, 60)).claims == []


async def test_release_returns_the_job_without_counting_an_attempt(queue: Queue) -> None:
    await queue.enqueue([job("given-back")])
    (claim,) = await queue.claim("agent-1", 1, 60)
    await queue.release([claim])
    status = await queue.status("given-back")
    assert status is not None and status.state == "ready"
    (again,) = await queue.claim("agent-2", 1, 60)
    assert again.job.id == "given-back" and again.attempt == claim.attempt == 1


async def test_complete_stores_the_result_and_its_state(queue: Queue) -> None:
    await queue.enqueue([job("ok"), job("bad")])
    ok, bad = await queue.claim("agent-1", 2, 60)
    assert await queue.complete([done(ok), done(bad, "error")]) == []
    ok_status, bad_status = await queue.status("ok"), await queue.status("bad")
    assert ok_status is not None and ok_status.state == "processed"
    assert ok_status.result is not None and ok_status.result.body == "ok"
    assert bad_status is not None and bad_status.state == "error"
    assert bad_status.result is not None and bad_status.result.error is not None
    assert bad_status.result.error.kind == "connect"
    assert await queue.claim("agent-1", 10, 60) == []


async def test_status_of_an_unknown_id_is_none(queue: Queue) -> None:
    assert await queue.status("never-enqueued") is None


async def test_results_survive_close_and_open(backend: Backend) -> None:
    async with backend.opened() as queue:
        await queue.enqueue([job("durable"), job("waiting")])
        (claim,) = await queue.claim("agent-1", 1, 60)
        await queue.complete([done(claim)])
    async with backend.opened() as queue:
        status = await queue.status("durable")
        assert status is not None and status.state == "processed"
        assert status.result is not None and status.result.status == 200
        waiting = await queue.status("waiting")
        assert waiting is not None and waiting.state == "ready"


async def test_concurrent_claimers_never_share_a_job(atomic: Backend) -> None:
    backend = atomic
    ids = [f"c-{i:03d}" for i in range(60)]
    async with AsyncExitStack() as stack:
        one = await stack.enter_async_context(backend.opened())
        two = await stack.enter_async_context(backend.opened())
        await one.enqueue([job(i) for i in ids])
        taken: list[str] = []
        while True:
            rounds = await asyncio.gather(
                *(q.claim(f"agent-{n}", 3, 60) for n, q in enumerate([one, two] * 4))
            )
            got = [c.job.id for claims in rounds for c in claims]
            if not got:
                break
            taken += got
    assert len(taken) == len(set(taken)), "a job was claimed twice"
    assert sorted(taken) == ids


async def test_ecc_agent_restarted_under_its_name_takes_back_its_records(
    tmp_path: Path, pki: PKI
) -> None:
    """The ECC queue's recovery: records left ``processing`` by a run that died are run again."""
    async with ecc_backend(pki, tmp_path) as ecc:
        async with ecc.opened() as first:
            await first.enqueue([job("left-behind"), job("untouched")])
            (claim,) = await first.claim("mid.server.contract", 1, 60)
            assert claim.job.id == "left-behind"
            status = await first.status("left-behind")
            assert status is not None and status.state == "processing"
        async with ecc.opened() as restarted:
            again = await restarted.claim("mid.server.contract", 10, 60)
            assert sorted(c.job.id for c in again) == ["left-behind", "untouched"]
            assert await restarted.claim("mid.server.contract", 10, 60) == []


async def test_a_retry_waits_in_the_queue_with_its_secrets_and_history(atomic: Backend) -> None:
    """The backends with due times hold a retry as ``ready`` until its back-off is over; the
    next claim is the next attempt, with the failed attempts and the job's secrets."""
    entry = {"attempt": 1, "at": "t", "kind": "connect", "message": "refused", "status": None}
    async with atomic.opened() as queue:
        assert queue.delays_retries
        await queue.enqueue([secret_job("later"), secret_job("soon")])
        claims = {c.job.id: c for c in await queue.claim("agent-1", 2, 60)}
        retries = []
        for job_id, due in (("later", time.time() + 3600), ("soon", time.time() - 1)):
            result = Result.failed(job_id, "connect", "refused", history=[entry])
            result.retry_at = due
            retries.append((claims[job_id], result))
        assert await queue.complete(retries) == []
        status = await queue.status("later")
        assert status is not None and (status.state, status.result) == ("ready", None)
        rows = {row.id: row for row in await queue.list_jobs("ready", 10)}
        assert (rows["later"].error_kind, rows["later"].attempts) == ("connect", 1)
        (again,) = await queue.claim("agent-1", 10, 60)  # "later" is not due yet
    assert again.job.id == "soon" and again.attempt == 2
    assert again.history == (entry,)
    assert again.job == secret_job("soon")  # its secrets were kept for the next attempt
