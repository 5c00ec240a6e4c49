"""The ECC queue backend against an in-test Table API that follows the documented semantics."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from agent.commands.demo.demoserver import DemoServer
from agent.config.config import AgentConfig
from agent.engine.engine import Engine
from agent.errors import JobError
from agent.jobs.results import Result
from agent.queues.ecc import ATTEMPTS, HOLDER, UNTIL, EccQueue, lease_stamp
from agent.queues.ecc_records import job_from_record
from agent.queues.journal import Journal
from agent.worker.worker import Worker
from tests.support.configs import profile_config
from tests.support.fake_instance import FakeInstance, serve_instance
from tests.support.pki import PKI

pytestmark = pytest.mark.timeout(60)
AGENT = "mid.server.test-agent"


@pytest.fixture
def instance() -> FakeInstance:
    return FakeInstance()


@pytest.fixture
async def instance_url(pki: PKI, instance: FakeInstance, tmp_path: Path) -> AsyncIterator[str]:
    issued = pki.ca.issue("instance", names=("127.0.0.1",))
    crt, key = issued.write_pem(tmp_path, "instance")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    async with serve_instance(instance, ctx) as url:
        yield url


def client_ctx(pki: PKI) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=pki.ca.cert_pem().decode())
    return ctx


def ecc(url: str, pki: PKI, password: str = "mid-pass", host: str | None = None) -> EccQueue:
    return EccQueue(
        url,
        agent=AGENT,
        username="mid.user",
        password=password,
        ssl_context=client_ctx(pki),
        host=host,
    )


def rest_payload(port: int, path: str = "/echo") -> str:
    return (
        "<parameters>"
        f'<parameter name="rest_endpoint" value="https://alpha.test:{port}{path}"/>'
        '<parameter name="http_method" value="POST"/>'
        '<parameter name="headers" value="{&quot;X-Test&quot;: &quot;1&quot;}"/>'
        '<parameter name="content" value="hello"/>'
        '<parameter name="protocol_profile" value="partner"/>'
        "</parameters>"
    )


def test_mid_payload_maps_onto_a_job() -> None:
    job = job_from_record({"sys_id": "a" * 32, "topic": "RESTProbe", "payload": rest_payload(8443)})
    assert (job.id, job.method, job.body, job.protocol_profile) == (
        "a" * 32,
        "POST",
        b"hello",
        "partner",
    )
    assert dict(job.headers) == {"X-Test": "1"}


@pytest.mark.parametrize(
    ("payload", "limit", "problem"),
    [
        ('{"endpoint": "' + "x" * 5000 + '"}', 4096, "over agent.max_job_bytes"),
        ('{"a": ' + "[" * 200_000 + "]" * 200_000 + "}", 10**7, "nested deeper than"),
        ('{"smuggle": ', 4096, "not valid JSON"),
    ],
    ids=["too-big", "too-deep", "malformed"],
)
def test_an_instance_record_that_skipped_enqueue_is_refused_unparsed(
    payload: str, limit: int, problem: str
) -> None:
    """The instance is a source of rows that never met ``agent enqueue``: the same bounds."""
    with pytest.raises(JobError, match=problem) as info:
        job_from_record({"sys_id": "b" * 32, "topic": "RESTProbe", "payload": payload}, limit)
    assert info.value.field == "payload"


async def run_burst(config: AgentConfig, queue: EccQueue, journal: Journal | None = None) -> Worker:
    engine = Engine(config)
    worker = Worker(queue, engine, burst=True, journal=journal)
    try:
        await worker.serve()
    finally:
        await engine.close()
    return worker


async def test_output_records_are_run_and_answered(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer, instance: FakeInstance, instance_url: str
) -> None:
    config = AgentConfig.from_xml(
        profile_config(tmp_path, pki, mtls_server.port).read_bytes(), base_dir=tmp_path, env={}
    )
    good = instance.output_record("RESTProbe", rest_payload(mtls_server.port), AGENT)
    broken = instance.output_record("RESTProbe", "<parameters><parameter", AGENT)
    other = instance.output_record(
        "RESTProbe", rest_payload(mtls_server.port), "mid.server.someone-else"
    )
    queue = ecc(instance_url, pki)
    await queue.open()
    try:
        await run_burst(config, queue)
    finally:
        await queue.close()
    assert instance.records[good]["state"] == "processed"
    (answer,) = instance.answers_to(good)
    assert (
        answer["queue"] == "input" and answer["topic"] == "RESTProbe" and answer["agent"] == AGENT
    )
    assert "<http_status_code>200</http_status_code>" in answer["payload"]
    assert "alpha.test" in answer["payload"]
    assert instance.records[broken]["state"] == "error"
    assert "payload" in instance.records[broken]["error_string"]
    assert instance.records[other]["state"] == "ready"
    assert any(r.get("topic") == "HeartbeatProbe" for r in instance.records.values())


async def test_cli_ids_round_trip_through_the_instance(
    pki: PKI, instance: FakeInstance, instance_url: str
) -> None:
    from agent.jobs.model import Job

    queue = ecc(instance_url, pki)
    await queue.open()
    try:
        job = Job.from_dict(
            {"id": "order-7", "topic": "RESTProbe", "endpoint": "https://a.example/"}
        )
        assert await queue.enqueue([job]) == ["order-7"]
        assert await queue.enqueue([job]) == ["order-7"]  # again: a no-op
        assert sum(r.get("agent_correlator") == "order-7" for r in instance.records.values()) == 1
        status = await queue.status("order-7")
        assert status is not None and status.state == "ready"
        assert await queue.status("unknown") is None
    finally:
        await queue.close()


async def test_outage_keeps_results_in_the_journal_until_the_instance_returns(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer, instance: FakeInstance, instance_url: str
) -> None:
    config = AgentConfig.from_xml(
        profile_config(tmp_path, pki, mtls_server.port).read_bytes(), base_dir=tmp_path, env={}
    )
    sys_id = instance.output_record("RESTProbe", rest_payload(mtls_server.port), AGENT)
    queue = ecc(instance_url, pki)
    journal = Journal(tmp_path / "journal.db")
    await queue.open()
    try:
        engine = Engine(config)
        (claim,) = await queue.claim(AGENT, 5, 60)
        result = await engine.run(claim.job)
        await engine.close()
        instance.outage = True
        worker = Worker(queue, engine, burst=True, journal=journal)
        await worker.store([(claim, result, 0.1)])
        assert worker.stats.journaled == 1 and instance.answers_to(sys_id) == []
        journal.close()
        journal = Journal(tmp_path / "journal.db")  # a restart in between loses nothing
        instance.outage = False
        worker = Worker(queue, engine, burst=True, journal=journal)
        assert await worker.deliver_journal() == 1
    finally:
        await queue.close()
        journal.close()
    assert instance.records[sys_id]["state"] == "processed"
    assert len(instance.answers_to(sys_id)) == 1


async def test_rejected_credentials_are_named(
    pki: PKI, instance: FakeInstance, instance_url: str
) -> None:
    from agent.errors import QueueError

    queue = ecc(instance_url, pki, password="wrong-password")
    await queue.open()
    try:
        with pytest.raises(QueueError) as info:
            await queue.claim(AGENT, 1, 60)
    finally:
        await queue.close()
    assert "mid.instance.username" in str(info.value) and "wrong-password" not in str(info.value)


# ---------------------------------------------------------------------- leases


@asynccontextmanager
async def opened(queue: EccQueue) -> AsyncIterator[EccQueue]:
    await queue.open()
    try:
        yield queue
    finally:
        await queue.close()


async def test_a_dead_agents_job_is_taken_by_another_once_its_lease_lapses(
    pki: PKI, instance: FakeInstance, instance_url: str, mtls_server: DemoServer
) -> None:
    sys_id = instance.output_record("RESTProbe", rest_payload(mtls_server.port), AGENT)
    async with (
        opened(ecc(instance_url, pki, host="node-a")) as dead,
        opened(ecc(instance_url, pki, host="node-b")) as other,
    ):
        (first,) = await dead.claim(AGENT, 5, 60)
        record = instance.records[sys_id]
        assert record["state"] == "processing" and record[HOLDER] == f"{AGENT}@node-a#0"
        assert int(record[UNTIL]) > time.time() * 1000 and record[ATTEMPTS] == 1
        assert await other.claim(AGENT, 5, 60) == []  # a live lease is left alone
        record[UNTIL] = lease_stamp(time.time() - 1)  # node-a died: nobody renewed it
        (taken,) = await other.claim(AGENT, 5, 60)
        assert taken.job.id == first.job.id == sys_id
        assert taken.attempt == taken.token == 2 and record[HOLDER] == f"{AGENT}@node-b#0"
        # node-a comes back late: its renewal and its result are fenced out, not written
        assert await dead.renew([first], 60) == [first]
        assert await dead.complete([(first, Result.failed(sys_id, "timeout", "late"))]) == [first]
        assert instance.answers_to(sys_id) == [] and record["state"] == "processing"
        ok = Result(id=sys_id, state="processed", status=200, body="ok")
        assert await other.complete([(taken, ok)]) == []
    assert record["state"] == "processed" and len(instance.answers_to(sys_id)) == 1


async def test_renewal_moves_the_lease_on(
    pki: PKI, instance: FakeInstance, instance_url: str
) -> None:
    instance.output_record("RESTProbe", rest_payload(8443), AGENT)
    async with opened(ecc(instance_url, pki)) as queue:
        (claim,) = await queue.claim(AGENT, 1, 1)
        (record,) = [r for r in instance.records.values() if r.get("queue") == "output"]
        before = int(record[UNTIL])
        assert await queue.renew([claim], 3600) == []
        assert int(record[UNTIL]) - before > 3000 * 1000


async def test_a_claim_overwritten_meanwhile_is_let_go(
    pki: PKI, instance: FakeInstance, instance_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The Table API has no compare-and-set: the claim is read back, and the later writer wins."""
    caplog.set_level(logging.INFO, "agent.queues.ecc")
    sys_id = instance.output_record("RESTProbe", rest_payload(8443), AGENT)
    instance.after_patch[sys_id] = {HOLDER: f"{AGENT}@node-z#0"}  # another agent, just after
    async with opened(ecc(instance_url, pki, host="node-a")) as queue:
        assert await queue.claim(AGENT, 5, 60) == []
    assert instance.records[sys_id][HOLDER] == f"{AGENT}@node-z#0"
    assert "claimed by another agent meanwhile" in caplog.text


async def test_a_table_without_the_lease_fields_falls_back_to_one_agent_per_name(
    pki: PKI, instance: FakeInstance, instance_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    instance.lacks = (HOLDER, UNTIL, ATTEMPTS)
    sys_id = instance.output_record("RESTProbe", rest_payload(8443), AGENT)
    async with opened(ecc(instance_url, pki)) as first:
        (claim,) = await first.claim(AGENT, 5, 60)
        assert first.leases is False
        assert await first.claim(AGENT, 5, 60) == []  # not taken twice by the same run
        assert await first.renew([claim], 60) == []
    assert f"has no {HOLDER}" in caplog.text and "see the README" in caplog.text
    assert HOLDER not in instance.records[sys_id]
    async with opened(ecc(instance_url, pki)) as restarted:  # the MID's model: a restart
        (again,) = await restarted.claim(AGENT, 5, 60)
        assert again.job.id == sys_id
