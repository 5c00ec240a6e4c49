"""The benchmark's peer: a throwaway PKI and a minimal nginx requiring client certificates.

The tests' harness nginx (tests/support/servers.py) carries echo maps and an access log for
assertions; here every request costs nginx as little as possible, so the client side is what is
measured. Two servers on 127.0.0.1: ``warm_port`` keeps connections alive (many requests each),
and ``cold_port`` closes after every answer (``keepalive_timeout 0``), so each request there
needs a fresh handshake. Session caches and tickets are off: a new connection is a full mTLS
handshake."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from agent.commands.demo.pki import CA
from tests.support.servers import Managed, accepts, free_port, nginx_temp_paths

HOST = "localhost"  # the URL host: SNI is sent, the server certificate names it
PATH = "/bench"
BODY = '{"ok":true}'


@dataclass(frozen=True)
class BenchPKI:
    """Root CA (trusted by the client), server chain for localhost, one client certificate."""

    ca: Path
    server_crt: Path
    server_key: Path
    client_crt: Path
    client_key: Path
    root: CA | None = field(default=None, compare=False, repr=False)  # issues more clients

    def clients(self, directory: Path, n: int) -> list[tuple[Path, Path]]:
        """``n`` client certificates of their own (certificate and key files), from the root."""
        assert self.root is not None
        directory.mkdir(parents=True, exist_ok=True)
        return [
            self.root.issue(f"bench-client-{i}", client=True).write_pem(directory, f"c{i}")
            for i in range(n)
        ]

    @classmethod
    def create(cls, directory: Path) -> BenchPKI:
        directory.mkdir(parents=True, exist_ok=True)
        root = CA("Bench Root CA")
        inter = root.intermediate("Bench Intermediate CA")
        ca = directory / "ca.pem"
        ca.write_bytes(root.cert_pem())
        server = inter.issue(HOST, names=(HOST, "127.0.0.1"))
        server_crt, server_key = server.write_pem(directory, "server")
        client_crt, client_key = root.issue("bench-client", client=True).write_pem(
            directory, "client"
        )
        return cls(ca, server_crt, server_key, client_crt, client_key, root)


def _server(port: int, pki: BenchPKI, keepalive: str) -> str:
    return f"""  server {{
    listen 127.0.0.1:{port} ssl default_server;
    server_name {HOST};
    ssl_certificate {pki.server_crt};
    ssl_certificate_key {pki.server_key};
    ssl_verify_client on;
    ssl_verify_depth 2;
    ssl_client_certificate {pki.ca};
    keepalive_timeout {keepalive};
    location = {PATH} {{ default_type application/json; return 200 '{BODY}'; }}
    location / {{ return 404; }}
  }}"""


class BenchNginx(Managed):
    """``with BenchNginx(dir, pki) as nginx:`` — both ports accept connections on return."""

    def __init__(self, directory: Path, pki: BenchPKI) -> None:
        self.directory = directory
        self.pki = pki
        self.warm_port = free_port()
        self.cold_port = free_port()
        self.status_port = free_port()  # plain HTTP: nginx's connection counters
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, port: int) -> str:
        return f"https://{HOST}:{port}{PATH}"

    def config_text(self) -> str:
        d = self.directory
        temps = nginx_temp_paths(d)
        return f"""daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 40000;
error_log {d / "error.log"} warn;
pid {d / "nginx.pid"};
events {{ worker_connections 16384; }}
http {{
  access_log off;
{temps}
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache off;
  ssl_session_tickets off;
  keepalive_requests 1000000;
{_server(self.warm_port, self.pki, "300s")}
{_server(self.cold_port, self.pki, "0")}
  server {{
    listen 127.0.0.1:{self.status_port};
    location = /status {{ stub_status; }}
  }}
}}
"""

    def start(self) -> None:
        conf = self.directory / "nginx.conf"
        conf.write_text(self.config_text())
        log = self.directory / "nginx.stderr"
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                ["nginx", "-e", str(self.directory / "error.log"), "-p", str(self.directory)]
                + ["-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 10
        while not all(accepts(p) for p in (self.warm_port, self.cold_port)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not start: {log.read_text(errors='replace')}")
            time.sleep(0.02)  # readiness poll, bounded by the deadline

    def accepted(self) -> int:
        """Connections nginx has accepted so far, this read's own included: on the TLS ports
        each is a full handshake (no session resumption)."""
        url = f"http://127.0.0.1:{self.status_port}/status"
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback, http
            lines = resp.read().decode().splitlines()
        return int(lines[2].split()[0])  # "server accepts handled requests" / "N N N"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def nginx_version() -> str:
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().split("/", 1)[-1]
