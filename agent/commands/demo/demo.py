"""``agent demo``: the whole agent on embedded defaults, with no config and no network.

It makes a throwaway PKI, starts local mTLS servers on 127.0.0.1 (one port serving two names
that requires SNI and a client certificate), writes a config.xml, enqueues REST and SOAP jobs
through the real embedded queue, runs the real daemon until they finish, prints a table and
exits 0 only if every job gave the expected answer.
"""

from __future__ import annotations

import base64
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.commands.demo.demoserver import DemoServer, summary
from agent.commands.demo.pki import CA, Issued
from agent.config.secure import load_secure_config
from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.queues import open_queue
from agent.service.runtime import Daemon

P12_PASSWORD = "demo-keystore-pass"


@dataclass(frozen=True)
class Case:
    job: dict[str, Any]
    expect: str  # what the table says we want
    check: Callable[[Result], bool]


def _cases(port: int, stranger: Issued, ca_pem: str) -> list[Case]:
    base = f"https://alpha.test:{port}"
    greet = "<Greet xmlns='urn:demo'><name>demo</name></Greet>"

    def ok(status: int, contains: str = "") -> Callable[[Result], bool]:
        return lambda r: (
            r.state == "processed" and r.status == status and contains in (r.body or "")
        )

    def err(kind: str) -> Callable[[Result], bool]:
        return lambda r: r.state == "error" and r.error is not None and r.error.kind == kind

    inline = {
        "keystore": {
            "type": "pkcs12",
            "data_base64": base64.b64encode(stranger.pkcs12("x")).decode(),
            "password": "x",
        }
    }
    return [
        Case(
            {
                "id": "rest-get-alpha",
                "topic": "RESTProbe",
                "endpoint": f"{base}/echo",
                "protocol_profile": "partner",
            },
            "200, SNI alpha.test",
            ok(200, '"sni": "alpha.test"'),
        ),
        Case(
            {
                "id": "rest-post-beta",
                "topic": "RESTProbe",
                "endpoint": f"https://beta.test:{port}/echo",
                "method": "POST",
                "body": '{"order": 42}',
                "protocol_profile": "partner",
            },
            "200, SNI beta.test",
            ok(200, '"sni": "beta.test"'),
        ),
        Case(
            {
                "id": "rest-profile-url",
                "topic": "RESTProbe",
                "endpoint": "partner://alpha.test/echo",
            },
            "200 via partner://",
            ok(200, "CN=demo-client"),
        ),
        Case(
            {
                "id": "rest-pem-profile",
                "topic": "RESTProbe",
                "endpoint": f"{base}/echo",
                "protocol_profile": "pemclient",
            },
            "200, PEM keystore",
            ok(200, "CN=demo-pem-client"),
        ),
        Case(
            {
                "id": "rest-binary",
                "topic": "RESTProbe",
                "endpoint": f"{base}/binary",
                "protocol_profile": "partner",
            },
            "200, base64 body",
            lambda r: r.status == 200 and r.body_base64 is not None,
        ),
        Case(
            {
                "id": "rest-http-500",
                "topic": "RESTProbe",
                "endpoint": f"{base}/status/500",
                "protocol_profile": "partner",
            },
            "500 is an answer",
            ok(500),
        ),
        Case(
            {
                "id": "soap-greet",
                "topic": "SOAPProbe",
                "endpoint": f"{base}/soap",
                "soap_action": "urn:demo#Greet",
                "body": greet,
                "protocol_profile": "partner",
            },
            "200, SOAP answer",
            ok(200, "Hello, demo"),
        ),
        Case(
            {
                "id": "soap-fault",
                "topic": "SOAPProbe",
                "endpoint": f"{base}/soap",
                "body": "<Nope xmlns='urn:demo'/>",
                "protocol_profile": "partner",
            },
            "500 + soap_fault",
            lambda r: r.status == 500 and r.soap_fault is not None,
        ),
        Case(
            {
                "id": "rest-no-sni",
                "topic": "RESTProbe",
                "endpoint": f"{base}/echo",
                "protocol_profile": "partner",
                "sni": False,
            },
            "error sni_required",
            err("sni_required"),
        ),
        Case(
            {
                "id": "rest-untrusted-client",
                "topic": "RESTProbe",
                "endpoint": f"{base}/echo",
                "inline_profile": {**inline, "truststore_pem": ca_pem},
            },
            "client cert rejected",
            err("client_certificate_rejected"),
        ),
    ]


def _config_xml(workdir: Path, port: int, ca_path: Path) -> str:
    prefix = "mid.httpclient.protocol"
    params = {
        "name": "demo",
        "url": f"sqlite:///{workdir / 'queue.db'}",
        "threads.max": "8",
        "mid.poll.time": "0.2",
        "agent.resolve": "alpha.test:127.0.0.1,beta.test:127.0.0.1",
        f"{prefix}.partner.path": "client.p12",
        f"{prefix}.partner.type": "pkcs12",
        f"{prefix}.partner.port": str(port),
        f"{prefix}.partner.truststore": ca_path.name,
        f"{prefix}.pemclient.path": "pem-client.crt",
        f"{prefix}.pemclient.key": "pem-client.key",
        f"{prefix}.pemclient.truststore": ca_path.name,
    }
    lines = [f'  <parameter name="{k}" value="{v}"/>' for k, v in params.items()]
    lines.append(
        f'  <parameter name="{prefix}.partner.password" value="{P12_PASSWORD}" secure="true"/>'
    )
    return "<parameters>\n" + "\n".join(lines) + "\n</parameters>\n"


def _row(case: Case, result: Result | None) -> tuple[str, ...]:
    if result is None:
        return (case.job["id"], case.expect, "no result", "FAIL")
    got = (
        f"{result.status} {_summary(result)}"
        if result.state == "processed"
        else f"error {result.error.kind if result.error else '?'}"
    )
    return (case.job["id"], case.expect, got, "ok" if case.check(result) else "FAIL")


def _summary(result: Result) -> str:
    if result.soap_fault:
        return f"fault {result.soap_fault.code}"
    if result.body_base64 is not None:
        return f"{len(result.body_base64)} base64 chars"
    return summary(result.body)


def _print_table(rows: list[tuple[str, ...]]) -> None:
    header = ("job", "expected", "got", "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


async def run_demo(*, keep: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="agent-demo-"))
    try:
        return await _run(workdir)
    finally:
        if keep:
            print(f"demo files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _run(workdir: Path) -> int:
    ca = CA("Demo Root CA")
    servers = {n: ca.issue(n) for n in ("alpha.test", "beta.test")}
    client = ca.issue("demo-client", client=True)
    pem_client = ca.issue("demo-pem-client", client=True)
    stranger = CA("Unknown CA").issue("stranger", client=True)
    (workdir / "client.p12").write_bytes(client.pkcs12(P12_PASSWORD))
    pem_client.write_pem(workdir, "pem-client")
    ca_path = workdir / "ca.pem"
    ca_path.write_bytes(ca.cert_pem())
    server = DemoServer(ca, servers)
    port = await server.start()
    try:
        config_path = workdir / "config.xml"
        config_path.write_text(_config_xml(workdir, port, ca_path))
        config = load_secure_config(config_path, env={})
        cases = _cases(port, stranger, ca.cert_pem().decode())
        queue = open_queue(config)
        await queue.open()
        try:
            await queue.enqueue([Job.from_dict(c.job) for c in cases])
            print(
                f"demo: {len(cases)} jobs enqueued; mTLS server on 127.0.0.1:{port} "
                "(alpha.test, beta.test; SNI and a client certificate required)"
            )
            await Daemon(config, config_path, burst=True).run()
            statuses = [await queue.status(c.job["id"]) for c in cases]
        finally:
            await queue.close()
    finally:
        await server.stop()
    rows = [_row(c, s.result if s else None) for c, s in zip(cases, statuses, strict=True)]
    print()
    _print_table(rows)
    failed = sum(1 for r in rows if r[-1] != "ok")
    print(f"\n{len(rows) - failed} of {len(rows)} jobs gave the expected answer")
    sys.stdout.flush()
    return 0 if failed == 0 else 1
