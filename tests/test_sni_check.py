"""``agent sni-check`` against each nginx layout: the diagnosis a user would otherwise work out
with ``openssl s_client -servername`` by hand."""

from __future__ import annotations

import base64
import hashlib
import socket
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.tls.handshake import pin_of
from tests.support.cli import arun_agent
from tests.support.configs import tls_params, write_config
from tests.support.servers import NginxPorts, OpenSSLServer, ServerPKI


async def sni_check(
    tmp_path: Path, pki: ServerPKI, url: str, *, profile: str = "one", code: int = 0, **extra: str
) -> str:
    config = write_config(tmp_path, tls_params(pki) | extra)
    ran = await arun_agent("-c", str(config), "sni-check", url, "--profile", profile)
    assert ran.returncode == code, ran.stdout + ran.stderr
    return ran.stdout


async def test_port_that_refuses_handshakes_without_sni(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    out = await sni_check(tmp_path, server_pki, f"https://alpha.test:{nginx_ports.sni}/")
    assert "with SNI 'alpha.test': TLSv1" in out and "CN=alpha.test" in out
    assert "without SNI: handshake failed" in out
    assert "SNI is REQUIRED: without it the handshake fails" in out
    assert "as configured (SNI 'alpha.test', from the global setting):" in out
    assert "trust:     verified by the truststore (1 certificate)" in out
    assert "name:      the certificate names 'alpha.test'" in out
    assert f"pin:       {pin_of(server_pki.alpha.issued.cert)}" in out
    assert "OK: the handshake succeeds" in out


async def test_port_whose_default_certificate_has_another_name(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    out = await sni_check(tmp_path, server_pki, f"https://alpha.test:{nginx_ports.wrong_default}/")
    assert "SNI is REQUIRED: without it the server hands out a different certificate" in out
    assert "CN=other.test" in out and "names:     other.test" in out


async def test_port_that_does_not_need_sni(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    out = await sni_check(tmp_path, server_pki, f"https://alpha.test:{nginx_ports.plain}/")
    assert "SNI is not needed: the server sends the same certificate either way" in out


async def test_name_the_server_does_not_serve(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    out = await sni_check(tmp_path, server_pki, f"https://beta.test:{nginx_ports.plain}/", code=1)
    assert "warning: the certificate sent for SNI 'beta.test' does not name it" in out
    assert "name:      the certificate does NOT name 'beta.test' (alpha.test)" in out
    assert "PROBLEM (hostname_mismatch)" in out


async def test_unknown_profile_is_a_clear_error(tmp_path: Path, server_pki: ServerPKI) -> None:
    config = write_config(tmp_path, tls_params(server_pki))
    ran = await arun_agent("-c", str(config), "sni-check", "https://a.test/", "--profile", "nope")
    assert ran.returncode == 2 and "nope" in ran.stderr and "Traceback" not in ran.stderr


def test_pin_is_the_sha256_of_the_subject_public_key_info(server_pki: ServerPKI) -> None:
    cert = server_pki.alpha.issued.cert
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert pin_of(cert) == "sha256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


async def test_untrusted_server_is_a_problem_even_when_sni_is_not(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    """Profile ``foreign`` trusts only the stranger CA: a real call ends certificate_verify."""
    url = f"https://alpha.test:{nginx_ports.plain}/"
    out = await sni_check(tmp_path, server_pki, url, profile="foreign", code=1)
    assert "SNI is not needed" in out  # true, and no longer the last word
    assert "trust:     NOT verified by the truststore (1 certificate)" in out
    assert "PROBLEM (certificate_verify): the server's certificate for 'alpha.test'" in out
    assert "name:      the certificate names 'alpha.test'" in out  # the name is still judged
    assert "OK:" not in out


async def test_refused_client_certificate_is_a_problem(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    url = f"https://alpha.test:{nginx_ports.plain}/"
    out = await sni_check(tmp_path, server_pki, url, profile="stranger", code=1)
    assert "trust:     verified by the truststore" in out
    assert "PROBLEM (client_certificate_rejected)" in out and "CN=stranger" in out


async def test_sni_off_against_a_server_that_requires_it_is_a_problem(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    url = f"https://alpha.test:{nginx_ports.sni}/"
    out = await sni_check(
        tmp_path, server_pki, url, code=1, **{"mid.httpclient.protocol.one.sni": "false"}
    )
    assert "as configured (no SNI, from the profile setting):" in out
    assert "PROBLEM (sni_required)" in out and "mid.httpclient.protocol.one.sni" in out


async def test_unreachable_targets_exit_2(tmp_path: Path, server_pki: ServerPKI) -> None:
    config = write_config(tmp_path, tls_params(server_pki))
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    ran = await arun_agent("-c", str(config), "sni-check", f"https://127.0.0.1:{port}/")
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert f"cannot reach 127.0.0.1:{port}" in ran.stderr and "Traceback" not in ran.stderr
    ran = await arun_agent("-c", str(config), "sni-check", "https://no-such-host.invalid/")
    assert ran.returncode == 2 and "cannot resolve 'no-such-host.invalid'" in ran.stderr


async def test_profile_names_match_without_regard_to_case(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    """``--profile ONE`` and a URL written ``One://`` both find profile ``one``."""
    url = f"https://alpha.test:{nginx_ports.sni}/"
    assert "profile one" in await sni_check(tmp_path, server_pki, url, profile="ONE")
    config = write_config(tmp_path, tls_params(server_pki))
    ran = await arun_agent("-c", str(config), "sni-check", f"One://alpha.test:{nginx_ports.sni}/")
    assert ran.returncode == 0 and "profile one" in ran.stdout, ran.stdout + ran.stderr
    ran = await arun_agent("-c", str(config), "sni-check", "Nope://alpha.test/")
    assert ran.returncode == 2 and "the URL: no protocol profile 'Nope'" in ran.stderr


async def test_client_certificate_refused_by_alert_is_a_problem(
    tmp_path: Path, server_pki: ServerPKI
) -> None:
    """openssl s_server refuses the stranger's certificate with an alert; under TLS 1.3 the
    client's side of the handshake is already done, so only the request shows it."""
    files = server_pki.alpha
    server = OpenSSLServer(
        tmp_path, files.crt, files.key, chain=server_pki.bundle_pem, client_ca=server_pki.ca_pem
    )
    with server:
        url = f"https://alpha.test:{server.port}/"
        out = await sni_check(tmp_path, server_pki, url, profile="stranger", code=1)
        good = await sni_check(tmp_path, server_pki, url, profile="one")
    assert "PROBLEM (client_certificate_rejected)" in out and "CN=stranger" in out
    assert "answer:    HTTP/1.0 200 ok" in good and "OK: the handshake succeeds" in good
