"""SOAPProbe against an independent SOAP stack: a spyne service behind nginx's mutual TLS.

spyne (tests/support/soapserver.py) serves ``/soap11`` (SOAP 1.1) and ``/soap12`` (SOAP 1.2) and
records each request's Content-Type, SOAPAction and body, so these tests check both what the
agent sent (headers, a fragment wrapped into the right Envelope) and what it made of the answers
(values, faults). Malformed or mismatched bodies must be refused before any connection is made."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from agent.config.config import load_config
from agent.engine.engine import Engine
from agent.errors import JobError
from agent.jobs.model import Job
from agent.jobs.results import Result
from tests.support.engines import running_engine
from tests.support.servers import Nginx, ServerPKI
from tests.support.soapserver import (
    ENVELOPE_NS,
    TNS,
    SeenRequest,
    SoapBackend,
    envelope,
    soap_config,
    soap_nginx,
)

pytestmark = pytest.mark.timeout(60)

PATHS = {"1.1": "/soap11", "1.2": "/soap12"}


@dataclass
class Soap:
    backend: SoapBackend
    nginx: Nginx

    @property
    def port(self) -> int:
        return self.nginx.ports[0]

    def url(self, version: str) -> str:
        return f"https://alpha.test:{self.port}{PATHS[version]}"

    def access_lines(self) -> int:
        log = self.nginx.access_log
        return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture(scope="module")
def soap_site(server_pki: ServerPKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Soap]:
    directory = tmp_path_factory.mktemp("soap-nginx")
    with SoapBackend() as backend, soap_nginx(server_pki, directory, backend) as nginx:
        yield Soap(backend, nginx)


@pytest.fixture
def soap(soap_site: Soap) -> Soap:
    soap_site.backend.clear()
    return soap_site


@pytest.fixture
async def engine(tmp_path: Path, server_pki: ServerPKI) -> AsyncIterator[Engine]:
    async with running_engine(load_config(soap_config(tmp_path, server_pki), env={})) as engine:
        yield engine


def soap_job(url: str, version: str, op: str, body: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"soap-{op}-{version}",
        "topic": "SOAPProbe",
        "endpoint": url,
        "protocol_profile": "p",
        "soap_version": version,
        "soap_action": f"{TNS}/{op}",
        "body": body,
        **extra,
    }


async def run(engine: Engine, raw: dict[str, Any]) -> Result:
    return await engine.run(Job.from_dict(raw))


def answered(result: Result, status: int = 200) -> etree._Element:
    """The result's body parsed (the test's own parser: no entities, no network)."""
    assert result.state == "processed" and result.status == status, result.to_dict()
    assert result.body is not None, result.to_dict()
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    root: etree._Element = etree.fromstring(result.body.encode(), parser)
    return root


def value(result: Result, op: str) -> str:
    root = answered(result)
    assert result.soap_fault is None, result.to_dict()
    found = root.find(f".//{{{TNS}}}{op}Result")
    assert found is not None and found.text is not None, result.body
    return str(found.text)


def sent_operation(seen: SeenRequest, version: str) -> str:
    """The operation element the server got, checking it sits in an Envelope of ``version``."""
    root = etree.fromstring(seen.body)
    ns = ENVELOPE_NS[version]
    assert root.tag == f"{{{ns}}}Envelope", seen.body
    body = root.find(f"{{{ns}}}Body")
    assert body is not None and len(body) == 1, seen.body
    return str(body[0].tag)


def content_type_parts(value: str) -> list[str]:
    return [part.strip() for part in value.split(";")]


@pytest.mark.parametrize("version", ["1.1", "1.2"])
async def test_echo_and_add_come_back_with_the_answer(
    engine: Engine, soap: Soap, version: str
) -> None:
    text = "héllo & <bye> ✓"
    echo_body = (
        "<t:echo xmlns:t='urn:test:soap'><t:text>héllo &amp; &lt;bye&gt; ✓</t:text></t:echo>"
    )
    add_body = f'<t:add xmlns:t="{TNS}"><t:a>2</t:a><t:b>40</t:b></t:add>'
    echoed = await run(engine, soap_job(soap.url(version), version, "echo", echo_body))
    added = await run(engine, soap_job(soap.url(version), version, "add", add_body))
    assert value(echoed, "echo") == text
    assert value(added, "add") == "42"
    assert [sent_operation(seen, version) for seen in soap.backend.requests] == [
        f"{{{TNS}}}echo",
        f"{{{TNS}}}add",
    ]
    assert [seen.path for seen in soap.backend.requests] == [PATHS[version]] * 2


async def test_soap11_sends_text_xml_and_a_quoted_soapaction(engine: Engine, soap: Soap) -> None:
    body = f'<t:add xmlns:t="{TNS}"><t:a>1</t:a><t:b>1</t:b></t:add>'
    assert value(await run(engine, soap_job(soap.url("1.1"), "1.1", "add", body)), "add") == "2"
    [seen] = soap.backend.requests
    parts = content_type_parts(seen.content_type)
    assert parts[0] == "text/xml" and [p.lower() for p in parts[1:]] == ["charset=utf-8"], parts
    assert seen.soap_action == f'"{TNS}/add"'


async def test_soap12_sends_soap_xml_with_the_action_parameter(engine: Engine, soap: Soap) -> None:
    body = f'<t:add xmlns:t="{TNS}"><t:a>3</t:a><t:b>4</t:b></t:add>'
    assert value(await run(engine, soap_job(soap.url("1.2"), "1.2", "add", body)), "add") == "7"
    [seen] = soap.backend.requests
    parts = content_type_parts(seen.content_type)
    assert parts[0] == "application/soap+xml", parts
    assert "charset=utf-8" in [p.lower() for p in parts[1:]], parts
    assert f'action="{TNS}/add"' in parts[1:], parts


@pytest.mark.parametrize("version", ["1.1", "1.2"])
async def test_a_whole_envelope_is_sent_as_given(engine: Engine, soap: Soap, version: str) -> None:
    """An Envelope (own prefix, a Header) is not wrapped a second time."""
    ns = ENVELOPE_NS[version]
    whole = (
        f'<s:Envelope xmlns:s="{ns}" xmlns:t="{TNS}"><s:Header/>'
        "<s:Body><t:add><t:a>20</t:a><t:b>22</t:b></t:add></s:Body></s:Envelope>"
    )
    result = await run(engine, soap_job(soap.url(version), version, "add", whole))
    assert value(result, "add") == "42"
    [seen] = soap.backend.requests
    root = etree.fromstring(seen.body)
    assert root.tag == f"{{{ns}}}Envelope" and root.find(f"{{{ns}}}Header") is not None
    assert sent_operation(seen, version) == f"{{{TNS}}}add"


async def test_soap11_fault_comes_back_as_soap_fault(engine: Engine, soap: Soap) -> None:
    body = f'<t:reject xmlns:t="{TNS}"><t:reason>no way</t:reason></t:reject>'
    result = await run(engine, soap_job(soap.url("1.1"), "1.1", "reject", body))
    answered(result, status=500)
    assert result.error is None and result.soap_fault is not None, result.to_dict()
    assert "Client" in result.soap_fault.code, result.soap_fault
    assert result.soap_fault.message == "rejected: no way"
    assert "reason" in (result.soap_fault.detail or ""), result.soap_fault


async def test_soap12_fault_comes_back_as_soap_fault(engine: Engine, soap: Soap) -> None:
    body = f'<t:reject xmlns:t="{TNS}"><t:reason>not today</t:reason></t:reject>'
    result = await run(engine, soap_job(soap.url("1.2"), "1.2", "reject", body))
    answered(result, status=500)
    assert result.error is None and result.soap_fault is not None, result.to_dict()
    assert "Sender" in result.soap_fault.code, result.soap_fault  # spyne: Client -> Sender
    assert result.soap_fault.message == "rejected: not today"
    assert "reason" in (result.soap_fault.detail or ""), result.soap_fault


async def refused(engine: Engine, raw: dict[str, Any]) -> tuple[str, str]:
    """(kind, message) of a job refused at validation or as an ``error`` result."""
    try:
        job = Job.from_dict(raw)
    except JobError as exc:
        return exc.kind, exc.message
    result = await engine.run(job)
    assert result.state == "error" and result.error is not None, result.to_dict()
    assert result.status is None, result.to_dict()
    return result.error.kind, result.error.message


@pytest.mark.parametrize(
    ("version", "body"),
    [
        pytest.param("1.1", envelope("1.2", "<t:add/>"), id="1.2-envelope-as-1.1"),
        pytest.param("1.2", envelope("1.1", "<t:add/>"), id="1.1-envelope-as-1.2"),
        pytest.param("1.1", "this is not XML <at all", id="not-xml"),
        pytest.param("1.2", f'<t:add xmlns:t="{TNS}"><t:a>1</t:add>', id="unbalanced"),
    ],
)
async def test_a_bad_body_is_an_invalid_job_and_nothing_is_sent(
    engine: Engine, soap: Soap, version: str, body: str
) -> None:
    before = soap.access_lines()
    kind, message = await refused(engine, soap_job(soap.url(version), version, "add", body))
    assert kind == "invalid_job" and "body" in message, message
    assert soap.backend.requests == [] and soap.access_lines() == before
