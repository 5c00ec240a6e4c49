"""The TLS engine against real nginx and openssl s_server on loopback: SNI on, off, overridden.

nginx layouts (tests/support/servers.py): ``sni`` carries alpha.test and beta.test on one port and
refuses handshakes without SNI; ``wrong_default`` hands out other.test's certificate to a
handshake without SNI; ``plain`` has one server (alpha.test) whatever the SNI. All require a
client certificate from the harness root CA.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.engine.engine import Engine
from agent.jobs.model import Job
from agent.jobs.results import Result
from tests.support.configs import P, tls_config
from tests.support.engines import running_engine
from tests.support.results import echo, kind
from tests.support.servers import NginxPorts, OpenSSLServer, ServerPKI


@pytest.fixture
async def engine(tmp_path: Path, server_pki: ServerPKI) -> AsyncIterator[Engine]:
    async with running_engine(tls_config(tmp_path, server_pki)) as engine:
        yield engine


async def call(engine: Engine, url: str, profile: str = "one", **fields: Any) -> Result:
    job = {"id": "j", "topic": "RESTProbe", "endpoint": url, "protocol_profile": profile}
    return await engine.run(Job.from_dict(job | fields))


async def test_sni_on_reaches_each_name_with_its_certificate(
    engine: Engine, nginx_ports: NginxPorts
) -> None:
    for name in ("alpha.test", "beta.test"):
        result = await call(engine, f"https://{name}:{nginx_ports.sni}/echo")
        seen = echo(result)
        assert seen["sni"] == name and seen["server_name"] == name
        assert seen["client_dn"].startswith("CN=client-one") and seen["client_verify"] == "SUCCESS"
        assert result.tls is not None
        assert result.tls.sni == name
        assert (result.tls.server_certificate or "").startswith(f"CN={name},")
        assert result.tls.client_certificate is not None
        assert result.tls.client_certificate.startswith("CN=client-one")
        assert result.tls.version in ("TLSv1.2", "TLSv1.3") and result.tls.cipher


async def test_sni_off_is_refused_by_a_server_that_requires_it(
    engine: Engine, nginx_ports: NginxPorts
) -> None:
    result = await call(engine, f"https://alpha.test:{nginx_ports.sni}/echo", sni=False)
    assert kind(result) == "sni_required", result.to_dict()
    assert result.error is not None
    assert "glide.outbound.tls_sni.enabled" in result.error.message
    assert f"{P}.one.sni" in result.error.message
    assert result.tls is not None and result.tls.sni is None


async def test_sni_off_never_accepts_a_certificate_for_another_name(
    engine: Engine, nginx_ports: NginxPorts
) -> None:
    """Without SNI the server shows other.test's certificate: calling alpha.test must fail."""
    result = await call(engine, f"https://alpha.test:{nginx_ports.wrong_default}/echo", sni=False)
    assert kind(result) == "hostname_mismatch", result.to_dict()
    assert result.error is not None and "other.test" in result.error.message
    # The same port with SNI on gets alpha.test's own certificate.
    seen = echo(await call(engine, f"https://alpha.test:{nginx_ports.wrong_default}/echo"))
    assert seen["sni"] == "alpha.test" and seen["server_name"] == "alpha.test"


async def test_sni_off_still_verifies_and_connects_when_the_name_matches(
    engine: Engine, nginx_ports: NginxPorts
) -> None:
    result = await call(engine, f"https://alpha.test:{nginx_ports.plain}/echo", sni=False)
    seen = echo(result)
    assert seen["sni"] == "" and seen["client_dn"].startswith("CN=client-one")
    assert result.tls is not None and result.tls.sni is None
    # No SNI and an untrusted issuer is still refused: verification did not turn off.
    result = await call(
        engine, f"https://alpha.test:{nginx_ports.plain}/echo", "foreign", sni=False
    )
    assert kind(result) == "certificate_verify", result.to_dict()


async def test_sni_override_sends_another_name_and_verifies_against_it(
    engine: Engine, nginx_ports: NginxPorts
) -> None:
    url = f"https://alpha.test:{nginx_ports.sni}/echo"
    result = await call(engine, url, sni="beta.test")
    # A job cannot set Host; nginx answers a Host (alpha.test) other than the SNI name with 421
    # Misdirected Request, after a handshake that sent beta.test and verified beta.test's
    # certificate against that name (alpha.test's name check would have failed it).
    assert (result.state, result.status) == ("processed", 421), result.to_dict()
    assert result.tls is not None and result.tls.sni == "beta.test"


async def test_profile_sni_setting_applies_and_the_job_overrides_it(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    config = tls_config(tmp_path, server_pki, **{f"{P}.one.sni": "false"})
    async with running_engine(config) as engine:
        url = f"https://alpha.test:{nginx_ports.sni}/echo"
        assert kind(await call(engine, url)) == "sni_required"
        assert echo(await call(engine, url, sni=True))["sni"] == "alpha.test"


async def test_global_sni_off_applies_to_profiles_without_a_setting(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    config = tls_config(tmp_path, server_pki, **{"glide.outbound.tls_sni.enabled": "false"})
    async with running_engine(config) as engine:
        url = f"https://alpha.test:{nginx_ports.plain}/echo"
        assert echo(await call(engine, url))["sni"] == ""


async def test_untrusted_server_names_the_issuer(engine: Engine, nginx_ports: NginxPorts) -> None:
    result = await call(engine, f"https://alpha.test:{nginx_ports.sni}/echo", "foreign")
    assert kind(result) == "certificate_verify", result.to_dict()
    assert result.error is not None and "truststore" in result.error.message


def inline(pki: ServerPKI, trust_pem: bytes | None) -> dict[str, Any]:
    """An inline record presenting client-one, trusting ``trust_pem`` (None: the system CAs)."""
    keystore = pki.client_one.issued.pkcs12("inline-pass")
    record: dict[str, Any] = {
        "keystore": {
            "type": "pkcs12",
            "data_base64": base64.b64encode(keystore).decode(),
            "password": "inline-pass",
        }
    }
    if trust_pem is not None:
        record["truststore_pem"] = trust_pem.decode()
    return record


@pytest.mark.parametrize(
    ("how", "trust"),
    [
        ("profile", f"{P}.foreign.truststore"),
        ("inline", "inline_profile.truststore_pem"),
        ("inline without a truststore", "the system CAs (the job's inline_profile has no"),
        ("no profile", "the system CAs (the job names no protocol_profile"),
    ],
)
async def test_untrusted_server_names_the_trust_store_in_force(
    engine: Engine, nginx_ports: NginxPorts, server_pki: ServerPKI, how: str, trust: str
) -> None:
    """The message names the parameter to change, not a placeholder."""
    url = f"https://alpha.test:{nginx_ports.plain}/echo"
    if how == "profile":
        result = await call(engine, url, "foreign")
    else:
        job = {"id": "t", "topic": "RESTProbe", "endpoint": url}
        if how.startswith("inline"):
            pem = None if "without" in how else server_pki.stranger_ca_pem.read_bytes()
            job["inline_profile"] = inline(server_pki, pem)
        result = await engine.run(Job.from_dict(job))
    assert kind(result) == "certificate_verify", result.to_dict()
    assert result.error is not None and trust in result.error.message
    assert "<profile>.truststore" not in result.error.message or how == "no profile"


async def test_an_address_the_certificate_does_not_list_is_a_hostname_mismatch(
    engine: Engine, nginx_ports: NginxPorts
) -> None:
    """alpha.test's certificate lists only that name: calling 127.0.0.1 must not pass, and the
    failure is the name, not the trust (the chain is trusted)."""
    result = await call(engine, f"https://127.0.0.1:{nginx_ports.plain}/echo")
    assert kind(result) == "hostname_mismatch", result.to_dict()
    assert result.error is not None
    assert "'127.0.0.1'" in result.error.message and "alpha.test" in result.error.message
    assert "agent.resolve" in result.error.message


async def test_hostname_mismatch_names_the_certificate_names(
    engine: Engine, nginx_ports: NginxPorts
) -> None:
    # The plain port shows alpha.test's certificate whatever name is asked for.
    result = await call(engine, f"https://beta.test:{nginx_ports.plain}/echo")
    assert kind(result) == "hostname_mismatch", result.to_dict()
    assert result.error is not None and "alpha.test" in result.error.message


async def test_nginx_answers_an_untrusted_client_certificate_with_400(
    engine: Engine, nginx_ports: NginxPorts
) -> None:
    """nginx finishes the handshake and answers 400: an answer, so the job is processed."""
    result = await call(engine, f"https://alpha.test:{nginx_ports.sni}/echo", "stranger")
    assert (result.state, result.status) == ("processed", 400)


async def test_client_certificate_rejected_in_the_handshake(
    tmp_path: Path, engine: Engine, server_pki: ServerPKI
) -> None:
    pki = server_pki
    with OpenSSLServer(
        tmp_path, pki.alpha.crt, pki.alpha.key, chain=pki.bundle_pem, client_ca=pki.ca_pem
    ) as server:
        url = f"https://alpha.test:{server.port}/"
        result = await call(engine, url, "stranger")
        assert kind(result) == "client_certificate_rejected", result.to_dict()
        assert result.error is not None and "CN=stranger" in result.error.message
        ok = await call(engine, url, "one")
        assert (ok.state, ok.status) == ("processed", 200), ok.to_dict()


async def test_sni_off_sends_no_server_name_extension(
    tmp_path: Path, engine: Engine, server_pki: ServerPKI
) -> None:
    """openssl's trace shows the ClientHello: no server_name extension at all with SNI off."""
    pki = server_pki
    with OpenSSLServer(tmp_path, pki.alpha.crt, pki.alpha.key, chain=pki.bundle_pem) as server:
        url = f"https://alpha.test:{server.port}/"
        off = await call(engine, url, sni=False)
        on = await call(engine, url)
        override = await call(engine, url, sni="beta.test")
        assert server.wait_client_hellos(3) == [None, "alpha.test", "beta.test"]
    assert off.status == 200 and on.status == 200
    assert kind(override) == "hostname_mismatch"  # verified against the name sent


async def test_ip_literal_hosts_send_no_sni(
    tmp_path: Path, engine: Engine, server_pki: ServerPKI
) -> None:
    pki = server_pki
    with OpenSSLServer(tmp_path, pki.local.crt, pki.local.key, chain=pki.bundle_pem) as server:
        result = await call(engine, f"https://127.0.0.1:{server.port}/")
        assert server.wait_client_hellos(1) == [None]
    assert (result.status, result.tls.sni if result.tls else "x") == (200, None)


async def test_profile_url_scheme_uses_the_profile_and_its_port(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    config = tls_config(tmp_path, server_pki, **{f"{P}.two.port": str(nginx_ports.sni)})
    async with running_engine(config) as engine:
        job = {"id": "p", "topic": "RESTProbe", "endpoint": "two://beta.test/echo"}
        seen = echo(await engine.run(Job.from_dict(job)))
        assert seen["sni"] == "beta.test" and seen["client_dn"].startswith("CN=client-two")
        assert seen["port"] == str(nginx_ports.sni)


async def test_connections_are_never_shared_across_certificates(
    engine: Engine, nginx_ports: NginxPorts
) -> None:
    """Jobs alternating two client certificates to one host: each answer names its own."""
    url = f"https://alpha.test:{nginx_ports.sni}/echo"
    for i in range(12):
        profile = ("one", "two")[i % 2]
        seen = echo(await call(engine, url, profile))
        assert seen["client_dn"].startswith(f"CN=client-{profile}"), (i, seen)
