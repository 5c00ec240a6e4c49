"""Identities without a truststore trust the system CAs through OpenSSL's hashed directory, read
on demand, instead of a copy of the whole bundle in every context; the bundle is loaded as
before when the directory lacks any of its CAs.

The "system" here is a hashed directory and a bundle made in the test (``openssl rehash``),
put in force with ``SSL_CERT_DIR`` and ``SSL_CERT_FILE``, as OpenSSL reads them.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from agent.engine.engine import Engine
from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.tls.context import build_context
from agent.tls.systemtrust import system_trust
from tests.support.configs import tls_config
from tests.support.engines import running_engine
from tests.support.results import echo, kind
from tests.support.servers import NginxPorts, OpenSSLServer, ServerPKI
from tests.test_tls_interop import inline


def system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, directory: list[Path], bundle: list[Path]
) -> None:
    """Make ``directory`` (hashed) and ``bundle`` the system's CAs."""
    hashed = tmp_path / "certs"
    hashed.mkdir()
    for i, pem in enumerate(directory):
        (hashed / f"ca-{i}.pem").write_bytes(pem.read_bytes())
    subprocess.run(["openssl", "rehash", str(hashed)], check=True, capture_output=True)
    file = tmp_path / "ca-certificates.crt"
    file.write_bytes(b"".join(p.read_bytes() for p in bundle))
    monkeypatch.setenv("SSL_CERT_DIR", str(hashed))
    monkeypatch.setenv("SSL_CERT_FILE", str(file))


async def run_inline(engine: Engine, url: str, pki: ServerPKI) -> Result:
    job = {"id": "s", "topic": "RESTProbe", "endpoint": url, "inline_profile": inline(pki, None)}
    return await engine.run(Job.from_dict(job))


async def test_the_hashed_directory_is_read_on_demand_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    system(tmp_path, monkeypatch, directory=[server_pki.ca_pem], bundle=[server_pki.ca_pem])
    trust = system_trust()
    assert trust.lazy and "holds all 1 of" in trust.why
    ctx = build_context(None, None)
    assert ctx.cert_store_stats()["x509"] == 0  # nothing parsed until a chain needs it
    async with running_engine(tls_config(tmp_path, server_pki)) as engine:
        result = await run_inline(
            engine, f"https://alpha.test:{nginx_ports.plain}/echo", server_pki
        )
        seen = echo(result)
        assert seen["client_dn"].startswith("CN=client-one")


async def test_a_ca_missing_from_the_directory_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    """The directory is what is trusted, not anything at all: the harness root is not in it."""
    system(
        tmp_path,
        monkeypatch,
        directory=[server_pki.stranger_ca_pem],
        bundle=[server_pki.stranger_ca_pem],
    )
    assert system_trust().lazy
    async with running_engine(tls_config(tmp_path, server_pki)) as engine:
        result = await run_inline(
            engine, f"https://alpha.test:{nginx_ports.plain}/echo", server_pki
        )
        assert kind(result) == "certificate_verify", result.to_dict()


async def test_a_bundle_the_directory_does_not_cover_is_loaded_whole(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server_pki: ServerPKI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The stranger CA is only in the bundle: it stays trusted, and the cost is said."""
    system(
        tmp_path,
        monkeypatch,
        directory=[server_pki.ca_pem],
        bundle=[server_pki.ca_pem, server_pki.stranger_ca_pem],
    )
    with caplog.at_level(logging.WARNING, logger="agent.credentials"):
        trust = system_trust()
    assert not trust.lazy and "1 of the 2 CAs" in trust.why
    assert any("1 of the 2 CAs" in r.getMessage() for r in caplog.records)
    assert build_context(None, None).cert_store_stats()["x509"] == 2
    stranger = server_pki.alpha_untrusted  # alpha.test, issued by the stranger CA
    with OpenSSLServer(tmp_path, stranger.crt, stranger.key) as server:
        async with running_engine(tls_config(tmp_path, server_pki)) as engine:
            url = f"https://alpha.test:{server.port}/"
            result = await run_inline(engine, url, server_pki)
            assert result.status == 200, result.to_dict()
