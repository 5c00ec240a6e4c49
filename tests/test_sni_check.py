"""``agent sni-check`` against each nginx layout: the diagnosis a user would otherwise work out
with ``openssl s_client -servername`` by hand."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import arun_agent, write_config
from tests.servers import NginxPorts, ServerPKI
from tests.test_tls_interop import tls_params


async def sni_check(tmp_path: Path, pki: ServerPKI, url: str) -> str:
    config = write_config(tmp_path, tls_params(pki))
    ran = await arun_agent("-c", str(config), "sni-check", url, "--profile", "one")
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


async def test_port_that_refuses_handshakes_without_sni(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    out = await sni_check(tmp_path, server_pki, f"https://alpha.test:{nginx_ports.sni}/")
    assert "with SNI 'alpha.test': TLSv1" in out and "CN=alpha.test" in out
    assert "without SNI: handshake failed" in out
    assert "SNI is REQUIRED: without it the handshake fails" in out


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
    out = await sni_check(tmp_path, server_pki, f"https://beta.test:{nginx_ports.plain}/")
    assert "warning: the certificate sent for SNI 'beta.test' does not name it" in out


async def test_unknown_profile_is_a_clear_error(tmp_path: Path, server_pki: ServerPKI) -> None:
    config = write_config(tmp_path, tls_params(server_pki))
    ran = await arun_agent("-c", str(config), "sni-check", "https://a.test/", "--profile", "nope")
    assert ran.returncode == 2 and "nope" in ran.stderr and "Traceback" not in ran.stderr
