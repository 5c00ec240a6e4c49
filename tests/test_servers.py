"""The real-server harness works: nginx layouts, openssl s_server's SNI trace, tinyproxy tunnels.

Only the standard library talks to the servers here, so a failure points at the harness.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import (
    BINARY,
    LARGE_BYTES,
    UNSAFE,
    HarnessError,
    Nginx,
    NginxPorts,
    NginxServer,
    OpenSSLServer,
    PemFiles,
    ServerPKI,
    Tinyproxy,
    free_port,
    nginx_ports,
    plain_mtls_port,
    server_pki,
)

__all__ = ["nginx_ports", "server_pki"]  # pytest fixtures, requested by name below

pytestmark = pytest.mark.timeout(60)


def context(pki: ServerPKI, client: PemFiles | None = None, *, names: bool) -> ssl.SSLContext:
    """Trust the harness root only; ``names=False`` when no SNI is sent (nothing to match)."""
    ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    ctx.check_hostname = names
    if client is not None:
        ctx.load_cert_chain(client.crt, client.key)
    return ctx


def cn_of(cert: dict[str, Any]) -> str:
    return str(next(v for rdn in cert["subject"] for k, v in rdn if k == "commonName"))


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    peer_cn: str

    def json(self) -> dict[str, str]:
        data: dict[str, str] = json.loads(self.body)
        return data


class Conn(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1:port sending ``sni`` (None: no server_name extension)."""

    def __init__(self, port: int, ctx: ssl.SSLContext, sni: str | None) -> None:
        super().__init__("127.0.0.1", port, context=ctx, timeout=10)
        self.ctx, self.sni = ctx, sni
        self.peer_cn = ""

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        tls = self.ctx.wrap_socket(sock, server_hostname=self.sni)
        cert = tls.getpeercert()
        assert cert is not None
        self.sock, self.peer_cn = tls, cn_of(dict(cert))


def call(
    port: int,
    ctx: ssl.SSLContext,
    sni: str | None,
    path: str = "/echo",
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    conn = Conn(port, ctx, sni)
    try:
        conn.request(
            method, path, body, {"Host": f"{sni or '127.0.0.1'}:{port}", **(headers or {})}
        )
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read(), conn.peer_cn)
    finally:
        conn.close()


def handshake_cn(port: int, ctx: ssl.SSLContext, sni: str | None) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        cert = tls.getpeercert()
        assert cert is not None
        return cn_of(dict(cert))


# --- nginx: the three layouts -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alpha.test", "beta.test"])
def test_sni_port_answers_each_name_with_its_certificate(
    nginx_ports: NginxPorts, server_pki: ServerPKI, name: str
) -> None:
    ctx = context(server_pki, server_pki.client_one, names=True)
    answer = call(nginx_ports.sni, ctx, name, "/echo/x?y=1", headers={"X-Test": "t-1"})
    seen = answer.json()
    assert (answer.status, answer.peer_cn) == (200, name)
    assert seen["sni"] == seen["server_name"] == name
    assert seen["client_dn"] == "CN=client-one,O=Agent Test PKI"
    assert seen["client_verify"] == "SUCCESS"
    assert (seen["method"], seen["uri"], seen["x_test"]) == ("GET", "/echo/x?y=1", "t-1")
    assert seen["host"] == f"{name}:{nginx_ports.sni}"


def test_sni_port_refuses_handshake_without_or_with_unknown_sni(
    nginx_ports: NginxPorts, server_pki: ServerPKI
) -> None:
    ctx = context(server_pki, server_pki.client_one, names=False)
    for sni in (None, "gamma.test"):
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            handshake_cn(nginx_ports.sni, ctx, sni)


def test_sni_port_answers_400_to_untrusted_or_missing_client_certificate(
    nginx_ports: NginxPorts, server_pki: ServerPKI
) -> None:
    stranger = call(
        nginx_ports.sni, context(server_pki, server_pki.stranger, names=True), "alpha.test"
    )
    nobody = call(nginx_ports.sni, context(server_pki, names=True), "alpha.test")
    assert (stranger.status, nobody.status) == (400, 400)
    assert b"The SSL certificate error" in stranger.body
    assert b"No required SSL certificate was sent" in nobody.body


def test_client_certificate_from_the_intermediate_is_accepted(
    nginx_ports: NginxPorts, server_pki: ServerPKI
) -> None:
    ctx = context(server_pki, server_pki.client_chained, names=True)
    seen = call(nginx_ports.plain, ctx, "alpha.test").json()
    assert seen["client_dn"] == "CN=client-chained,O=Agent Test PKI"
    assert seen["client_issuer_dn"] == "CN=Harness Intermediate CA,O=Agent Test PKI"


def test_wrong_default_port_shows_other_test_without_sni(
    nginx_ports: NginxPorts, server_pki: ServerPKI
) -> None:
    ctx = context(server_pki, server_pki.client_two, names=False)
    assert handshake_cn(nginx_ports.wrong_default, ctx, None) == "other.test"
    assert handshake_cn(nginx_ports.wrong_default, ctx, "beta.test") == "other.test"
    named = call(
        nginx_ports.wrong_default,
        context(server_pki, server_pki.client_two, names=True),
        "alpha.test",
    )
    assert (named.peer_cn, named.json()["server_name"]) == ("alpha.test", "alpha.test")
    assert named.json()["client_dn"] == "CN=client-two,O=Agent Test PKI"


def test_plain_port_shows_alpha_with_or_without_sni(
    nginx_ports: NginxPorts, server_pki: ServerPKI
) -> None:
    ctx = context(server_pki, server_pki.client_one, names=False)
    answer = call(nginx_ports.plain, ctx, None)
    assert (answer.status, answer.peer_cn, answer.json()["sni"]) == (200, "alpha.test", "")
    assert handshake_cn(nginx_ports.plain, ctx, "beta.test") == "alpha.test"


def test_optional_port_answers_without_client_certificate(
    nginx_ports: NginxPorts, server_pki: ServerPKI
) -> None:
    seen = call(nginx_ports.optional, context(server_pki, names=True), "alpha.test").json()
    assert (seen["client_verify"], seen["client_dn"]) == ("NONE", "")


# --- nginx: the locations -----------------------------------------------------------------------


def test_echo_json_escapes_quoted_header_values_and_marks_unsafe_ones(
    nginx_ports: NginxPorts, server_pki: ServerPKI
) -> None:
    ctx = context(server_pki, server_pki.client_one, names=True)
    headers = {
        "SOAPAction": '"urn:demo#Greet"',
        "Content-Type": 'application/soap+xml; charset=utf-8; action="urn:a"',
        "Idempotency-Key": "key-42",
        "X-Test": "back\\slash",
    }
    body = b'{"name": "alpha", "n": 1}'
    seen = call(
        nginx_ports.sni, ctx, "alpha.test", method="POST", body=body, headers=headers
    ).json()
    assert seen["soapaction"] == '"urn:demo#Greet"'
    assert seen["content_type"] == headers["Content-Type"]
    assert (seen["idempotency_key"], seen["x_test"]) == ("key-42", UNSAFE)
    assert (seen["body"], seen["content_length"]) == (body.decode(), str(len(body)))


def test_raw_returns_the_body_bytes_with_tls_facts_in_headers(
    nginx_ports: NginxPorts, server_pki: ServerPKI
) -> None:
    ctx = context(server_pki, server_pki.client_two, names=True)
    body = b'<x a="1">\n\\</x>' + bytes(range(256))
    answer = call(nginx_ports.sni, ctx, "beta.test", "/raw", method="POST", body=body)
    assert answer.body == body
    assert answer.headers["X-Echo-Sni"] == "beta.test"
    assert answer.headers["X-Echo-Client-Dn"] == "CN=client-two,O=Agent Test PKI"
    assert answer.headers["X-Echo-Method"] == "POST"


def test_status_binary_large_and_missing_locations(
    nginx_ports: NginxPorts, server_pki: ServerPKI
) -> None:
    ctx = context(server_pki, server_pki.client_one, names=True)
    failed = call(nginx_ports.sni, ctx, "alpha.test", "/status/500")
    assert (failed.status, json.loads(failed.body)) == (500, {"status": 500})
    assert call(nginx_ports.sni, ctx, "alpha.test", "/binary").body == BINARY
    assert call(nginx_ports.sni, ctx, "alpha.test", "/nowhere").status == 404
    conn = Conn(nginx_ports.sni, ctx, "alpha.test")
    try:
        conn.request("GET", "/large", headers={"Host": "alpha.test"})
        resp = conn.getresponse()
        size = 0
        while chunk := resp.read(1 << 20):
            size += len(chunk)
    finally:
        conn.close()
    assert size == LARGE_BYTES == int(resp.headers["Content-Length"])


class _Upstream(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        seen = {
            "path": self.path,
            "dn": self.headers["X-SSL-Client-S-DN"],
            "sni": self.headers["X-SSL-Server-Name"],
            "body": self.rfile.read(length).decode(),
        }
        reply = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_nginx_proxies_other_paths_to_a_plain_http_upstream_and_stops(
    tmp_path: Path, server_pki: ServerPKI, upstream: int
) -> None:
    port = free_port()
    with Nginx(tmp_path, plain_mtls_port(server_pki, port, upstream_port=upstream)) as nginx:
        ctx = context(server_pki, server_pki.client_one, names=True)
        answer = call(port, ctx, "alpha.test", "/soap?wsdl", method="POST", body=b"<Envelope/>")
        assert answer.json() == {
            "path": "/soap?wsdl",
            "dn": "CN=client-one,O=Agent Test PKI",
            "sni": "alpha.test",
            "body": "<Envelope/>",
        }
        assert call(port, ctx, "alpha.test", "/echo").status == 200  # the echo still answers
    assert not nginx.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_nginx_that_cannot_start_raises_with_its_log(tmp_path: Path, server_pki: ServerPKI) -> None:
    broken = NginxServer(
        free_port(), ("alpha.test",), tmp_path / "missing.crt", server_pki.alpha.key, default=True
    )
    with (
        pytest.raises(HarnessError, match=r"(?s)nginx exited.*missing\.crt"),
        Nginx(tmp_path / "nginx", [broken]),
    ):
        pass


# --- openssl s_server ---------------------------------------------------------------------------


def test_s_server_trace_shows_whether_sni_arrived(tmp_path: Path, server_pki: ServerPKI) -> None:
    pki = server_pki
    long_name = "a-name-longer-than-sixteen-bytes.beta.test"
    with OpenSSLServer(
        tmp_path, pki.alpha.crt, pki.alpha.key, chain=pki.bundle_pem,
        sni_name=long_name, cert2=pki.beta.crt, key2=pki.beta.key,
    ) as server:  # fmt: skip
        quiet = context(pki, names=False)
        assert handshake_cn(server.port, quiet, None) == "alpha.test"
        assert handshake_cn(server.port, quiet, long_name) == "beta.test"
        assert handshake_cn(server.port, context(pki, names=True), "alpha.test") == "alpha.test"
        assert server.wait_client_hellos(3) == [None, long_name, "alpha.test"]


def test_s_server_with_client_ca_rejects_a_handshake_without_client_certificate(
    tmp_path: Path, server_pki: ServerPKI
) -> None:
    pki = server_pki
    with OpenSSLServer(
        tmp_path, pki.alpha.crt, pki.alpha.key, chain=pki.bundle_pem, client_ca=pki.ca_pem
    ) as server:
        ok = call(server.port, context(pki, pki.client_one, names=True), "alpha.test", "/")
        assert ok.status == 200 and b"s_server" in ok.body
        # TLS 1.3 delivers the verdict on the client certificate after the handshake: read it.
        for client, alert in ((pki.stranger, "UNKNOWN_CA"), (None, "CERTIFICATE_REQUIRED")):
            ctx = context(pki, client, names=True)
            with (
                socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
                ctx.wrap_socket(raw, server_hostname="alpha.test") as tls,
                pytest.raises(ssl.SSLError, match=alert),
            ):
                tls.recv(1)
        assert "unable to get local issuer certificate" in server.errors()
        assert server.wait_client_hellos(3) == ["alpha.test"] * 3


# --- tinyproxy ----------------------------------------------------------------------------------


def tunnel(
    proxy: Tinyproxy, target: str, auth: tuple[str, str] | None
) -> tuple[int, socket.socket]:
    """Open a CONNECT tunnel through ``proxy``; the socket is open only when the status is 200."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        lines.append(f"Proxy-Authorization: Basic {token}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        sock.close()
    return status, sock


def test_tinyproxy_carries_a_connect_to_the_sni_port(
    tmp_path: Path, nginx_ports: NginxPorts, server_pki: ServerPKI
) -> None:
    auth = ("proxyuser", "proxy-pass-1")
    target = f"127.0.0.1:{nginx_ports.sni}"
    with Tinyproxy(tmp_path, auth=auth) as proxy:
        assert tunnel(proxy, target, None)[0] == 407
        status, sock = tunnel(proxy, target, auth)
        assert status == 200
        ctx = context(server_pki, server_pki.client_one, names=True)
        with ctx.wrap_socket(sock, server_hostname="alpha.test") as tls:
            tls.sendall(b"GET /echo HTTP/1.0\r\nHost: alpha.test\r\n\r\n")
            reply = b""
            while chunk := tls.recv(65536):
                reply += chunk
        seen = json.loads(reply.split(b"\r\n\r\n", 1)[1])
        assert (seen["sni"], seen["client_dn"]) == ("alpha.test", "CN=client-one,O=Agent Test PKI")
        assert proxy.connects() == [target, target]
    assert not proxy.running
