"""Real servers on loopback for the test suite: nginx, ``openssl s_server`` and tinyproxy.

Everything here runs real binaries on 127.0.0.1 ports chosen at run time, inside a directory the
caller owns (``tmp_path``), and is stopped by the context manager that started it. A server that
does not come up raises :class:`HarnessError` carrying the tail of its log.

- :class:`ServerPKI` — a root CA, an intermediate, server certificates (``alpha.test``,
  ``beta.test``, ``other.test``, ``localhost``/``127.0.0.1``) issued by the intermediate, client
  certificates issued by the root, and a client certificate from a CA nobody trusts; PEM files.
- :class:`Nginx` + :class:`NginxServer` — an nginx configured from server definitions; layouts
  :func:`sni_port`, :func:`wrong_default_port`, :func:`plain_mtls_port`.
- :class:`OpenSSLServer` — ``openssl s_server -trace -www``; :func:`client_hello_snis` reads
  from its trace whether each ClientHello carried a server_name extension.
- :class:`Tinyproxy` — a forward proxy (CONNECT) with optional basic auth; its log shows tunnels.

Locations of every nginx server that does not reject handshakes:

``/echo`` (and ``/echo/...``)
    A JSON object describing what nginx saw (keys in :data:`ECHO_FIELDS`). The echo module
    cannot escape JSON, so each value passes through an nginx ``map`` that keeps it when it holds
    no ``"``, ``\\`` or control character, escapes up to :data:`MAX_QUOTES` double quotes (enough
    for a quoted ``SOAPAction`` or ``action="..."`` in a SOAP 1.2 content type), and otherwise
    puts :data:`UNSAFE` in its place; an absent header or body gives ``""``. Multi-line or
    quote-heavy bodies (SOAP envelopes, most JSON) therefore show as :data:`UNSAFE`: read those
    through ``/raw``.
``/raw``
    The request body returned byte for byte, with the TLS facts in ``X-Echo-*`` response headers
    (``X-Echo-Sni``, ``-Client-Dn``, ``-Client-Verify``, ``-Server-Name``, ``-Method``, ``-Uri``).
``/status/<code>``
    That status with body ``{"status": <code>}`` for the codes in :data:`STATUSES`.
``/redirect``
    302 to ``/echo/redirected``.
``/set-cookie``
    200 with ``Set-Cookie: session=first-job; Path=/``.
``/sleep/<seconds>``
    Answers ``{"slept": "<seconds>"}`` after that long (for timeouts and cancellation).
``/binary``, ``/large``, ``/files/<name>``
    :data:`BINARY` (1 KiB, every byte value); a sparse file of ``large_bytes`` zero bytes
    (50 MiB by default); any file written to ``Nginx.files_dir``.
``/`` (everything else)
    Proxied to ``http://127.0.0.1:<upstream_port>`` when the definition has one (same URI, plus
    ``X-SSL-Client-S-DN``, ``X-SSL-Client-Verify`` and ``X-SSL-Server-Name`` request headers),
    so a plain-HTTP app (a SOAP service) sits behind nginx's mutual TLS; otherwise 404.

nginx answers a missing or untrusted client certificate with HTTP 400 ("No required SSL
certificate was sent" / "The SSL certificate error"), not with a handshake failure;
``openssl s_server -Verify`` with ``-verify_return_error`` is the peer that rejects the handshake.

Pytest fixtures (import them into conftest.py by name): :func:`server_pki` (session) and
:func:`nginx_ports` (session; one nginx carrying every layout).
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from agent.commands.demo.pki import CA, Issued

ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
BINARY = bytes(range(256)) * 4
LARGE_BYTES = 50 * 1024 * 1024
STATUSES = (200, 201, 202, 204, 400, 401, 403, 404, 409, 429, 500, 502, 503, 504)
UNSAFE = "<not-json-safe>"
MAX_QUOTES = 8

# JSON key -> nginx variable, for /echo.
ECHO_FIELDS: dict[str, str] = {
    "server_name": "$server_name",
    "sni": "$ssl_server_name",
    "client_dn": "$ssl_client_s_dn",
    "client_issuer_dn": "$ssl_client_i_dn",
    "client_verify": "$ssl_client_verify",
    "client_serial": "$ssl_client_serial",
    "protocol": "$ssl_protocol",
    "port": "$server_port",
    "method": "$request_method",
    "uri": "$request_uri",
    "host": "$http_host",
    "x_test": "$http_x_test",
    "idempotency_key": "$http_idempotency_key",
    "content_type": "$http_content_type",
    "soapaction": "$http_soapaction",
    "authorization": "$http_authorization",
    "user_agent": "$http_user_agent",
    "cookie": "$http_cookie",
    "content_length": "$content_length",
    "body": "$request_body",
}


class HarnessError(RuntimeError):
    """A test server could not be started; the message ends with the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port`` now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(paths: Sequence[Path], lines: int = 40) -> str:
    parts = []
    for path in paths:
        if path.exists():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
    return "\n".join(parts) or "(no log written)"


# ---------------------------------------------------------------------------------------------
# PKI


@dataclass(frozen=True)
class PemFiles:
    """One issued certificate on disk: ``crt`` is leaf + intermediates, ``key`` is unencrypted."""

    issued: Issued
    crt: Path
    key: Path

    @property
    def subject(self) -> str:
        return self.issued.subject


@dataclass(frozen=True)
class ServerPKI:
    """Certificates for the harness servers and for the clients that call them."""

    directory: Path
    root: CA
    intermediate: CA
    ca_pem: Path  # the root alone: what clients trust and what servers accept client certs from
    bundle_pem: Path  # intermediate + root
    alpha: PemFiles  # alpha.test (servers: issued by the intermediate)
    beta: PemFiles  # beta.test
    other: PemFiles  # other.test
    local: PemFiles  # localhost + 127.0.0.1
    alpha_untrusted: PemFiles  # alpha.test from the stranger CA
    client_one: PemFiles  # CN=client-one (clients: issued by the root)
    client_two: PemFiles  # CN=client-two
    client_chained: PemFiles  # CN=client-chained, issued by the intermediate
    stranger: PemFiles  # CN=stranger, from a CA nobody trusts
    stranger_ca: CA
    stranger_ca_pem: Path

    @classmethod
    def create(cls, directory: Path) -> ServerPKI:
        directory.mkdir(parents=True, exist_ok=True)
        root = CA("Harness Root CA")
        inter = root.intermediate("Harness Intermediate CA")
        stranger_ca = CA("Stranger CA")

        def put(issued: Issued, stem: str) -> PemFiles:
            return PemFiles(issued, *issued.write_pem(directory, stem))

        ca_pem = directory / "ca.pem"
        ca_pem.write_bytes(root.cert_pem())
        bundle = directory / "bundle.pem"
        bundle.write_bytes(inter.cert_pem() + root.cert_pem())
        stranger_pem = directory / "stranger-ca.pem"
        stranger_pem.write_bytes(stranger_ca.cert_pem())
        return cls(
            directory=directory,
            root=root,
            intermediate=inter,
            ca_pem=ca_pem,
            bundle_pem=bundle,
            alpha=put(inter.issue("alpha.test"), "alpha"),
            beta=put(inter.issue("beta.test"), "beta"),
            other=put(inter.issue("other.test"), "other"),
            local=put(inter.issue("localhost", names=("localhost", "127.0.0.1")), "local"),
            alpha_untrusted=put(stranger_ca.issue("alpha.test"), "alpha-untrusted"),
            client_one=put(root.issue("client-one", client=True), "client-one"),
            client_two=put(root.issue("client-two", client=True), "client-two"),
            client_chained=put(inter.issue("client-chained", client=True), "client-chained"),
            stranger=put(stranger_ca.issue("stranger", client=True), "stranger"),
            stranger_ca=stranger_ca,
            stranger_ca_pem=stranger_pem,
        )


# ---------------------------------------------------------------------------------------------
# Processes


def nginx_temp_paths(directory: Path) -> str:
    """The ``*_temp_path`` lines for an nginx run from ``directory`` (its own temporary
    directories, made here, not the system's)."""
    lines = []
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / "tmp" / kind).mkdir(parents=True, exist_ok=True)
        lines.append(f"  {kind}_temp_path {directory / 'tmp' / kind};")
    return "\n".join(lines)


class Managed:
    """``with server:`` starts it and always stops it."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Process(Managed):
    """A child process started in a directory, ready when ``_ready()`` says so, always stopped."""

    name = "server"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stdout_path = directory / f"{self.name}.stdout"
        self.stderr_path = directory / f"{self.name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.command: list[str] = []

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _logs(self) -> list[Path]:
        return [self.stdout_path, self.stderr_path]

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self._logs(), lines)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self.command = self._command()
        try:
            with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
                self.proc = subprocess.Popen(
                    self.command,
                    cwd=self.directory,
                    stdout=out,
                    stderr=err,
                    stdin=subprocess.DEVNULL,
                )
        except FileNotFoundError as exc:
            raise HarnessError(f"{self.command[0]} is not installed: run scripts/test") from exc
        try:
            self._wait_ready(self.proc, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready():
            if proc.poll() is not None:
                self._fail(f"exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                self._fail(f"was not ready within {timeout:g} s")
            time.sleep(0.02)  # polling a readiness condition; the deadline bounds it

    def _fail(self, what: str) -> None:
        self.stop()
        raise HarnessError(f"{self.name} {what}: {' '.join(self.command)}\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # nginx: fast shutdown; s_server, tinyproxy: exit
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# ---------------------------------------------------------------------------------------------
# nginx


@dataclass(frozen=True)
class NginxServer:
    """One ``server {}`` block listening on ``127.0.0.1:port`` with TLS."""

    port: int
    names: tuple[str, ...] = ()
    cert: Path | None = None  # leaf + chain PEM
    key: Path | None = None
    default: bool = False
    reject_handshake: bool = False  # ssl_reject_handshake on: no cert needed
    verify_client: str = "off"  # on | optional | optional_no_ca | off
    client_ca: Path | None = None
    verify_depth: int = 2
    upstream_port: int | None = None  # plain HTTP app on 127.0.0.1 behind location /
    extra: str = ""  # raw directives appended to the server block

    def __post_init__(self) -> None:
        if self.verify_client not in ("on", "optional", "optional_no_ca", "off"):
            raise ValueError(f"verify_client must be on|optional|optional_no_ca|off: {self}")
        if not self.reject_handshake and (self.cert is None or self.key is None):
            raise ValueError(f"server {self.names or self.port} needs cert and key")
        if self.verify_client in ("on", "optional") and self.client_ca is None:
            raise ValueError(f"verify_client {self.verify_client} needs client_ca")


def _json_map(var: str, index: int) -> str:
    """An nginx map turning ``var`` into a JSON-string-safe value (see module docstring)."""
    plain = r'[^"\\\\\x00-\x1f]'  # after nginx unescaping: [^"\\\x00-\x1f]
    escaped_quote = r'\\"'  # after nginx unescaping: \" (a JSON-escaped quote)
    lines = [f"map {var} $json_{index} {{", f"  '~^{plain}*$' {var};"]
    for quotes in range(1, MAX_QUOTES + 1):
        groups = [f"(?<j{index}_{g}>{plain}*)" for g in range(quotes + 1)]
        refs = [f"${{j{index}_{g}}}" for g in range(quotes + 1)]
        pattern, value = '"'.join(groups), escaped_quote.join(refs)
        lines.append(f"  '~^{pattern}$' '{value}';")
    # Regexes are tried in order and never on an empty value (which takes the default).
    lines += [f"  '~^' '{UNSAFE}';", "  default '';", "}"]
    return "\n".join(lines)


def _echo_json() -> str:
    items = ",".join(f'"{key}":"$json_{i}"' for i, key in enumerate(ECHO_FIELDS))
    return "{" + items + "}"


RAW_HEADERS = {
    "X-Echo-Sni": "$ssl_server_name",
    "X-Echo-Client-Dn": "$ssl_client_s_dn",
    "X-Echo-Client-Verify": "$ssl_client_verify",
    "X-Echo-Server-Name": "$server_name",
    "X-Echo-Method": "$request_method",
    "X-Echo-Uri": "$request_uri",
}


def _locations(server: NginxServer, files: Path) -> str:
    statuses = "\n".join(
        f"    location = /status/{code} {{ return {code} '{{\"status\": {code}}}'; }}"
        if code != 204
        else "    location = /status/204 { return 204; }"
        for code in STATUSES
    )
    raw_headers = "\n".join(f'      add_header {k} "{v}" always;' for k, v in RAW_HEADERS.items())
    fallback = (
        f"""proxy_pass http://127.0.0.1:{server.upstream_port};
      proxy_set_header Host $http_host;
      proxy_set_header X-SSL-Client-S-DN $ssl_client_s_dn;
      proxy_set_header X-SSL-Client-Verify $ssl_client_verify;
      proxy_set_header X-SSL-Server-Name $ssl_server_name;
      proxy_http_version 1.1;
      proxy_set_header Connection "";"""
        if server.upstream_port
        else """return 404 '{"status": 404}';"""
    )
    return f"""
    default_type application/json;
    location /echo {{
      echo_read_request_body;
      echo '{_echo_json()}';
    }}
    location = /raw {{
      default_type application/octet-stream;
{raw_headers}
      echo_read_request_body;
      echo_request_body;
    }}
{statuses}
    location = /redirect {{ return 302 /echo/redirected; }}
    location = /set-cookie {{
      add_header Set-Cookie "session=first-job; Path=/" always;
      return 200 '{{"set": "session"}}';
    }}
    location ~ ^/sleep/(?<sleep_seconds>[0-9]+(\\.[0-9]+)?)$ {{
      echo_sleep $sleep_seconds;
      echo '{{"slept": "$sleep_seconds"}}';
    }}
    location = /binary {{ default_type application/octet-stream; alias {files}/binary.bin; }}
    location = /large {{ default_type application/octet-stream; alias {files}/large.bin; }}
    location /files/ {{ default_type application/octet-stream; alias {files}/; }}
    location / {{
      {fallback}
    }}"""


def _server_block(server: NginxServer, files: Path) -> str:
    listen = f"127.0.0.1:{server.port} ssl" + (" default_server" if server.default else "")
    lines = [f"listen {listen};"]
    if server.names:
        lines.append(f"server_name {' '.join(server.names)};")
    if server.reject_handshake:
        lines.append("ssl_reject_handshake on;")
    if server.cert is not None and server.key is not None:
        lines += [f"ssl_certificate {server.cert};", f"ssl_certificate_key {server.key};"]
    if server.verify_client != "off":
        lines.append(f"ssl_verify_client {server.verify_client};")
        lines.append(f"ssl_verify_depth {server.verify_depth};")
    if server.client_ca is not None:
        lines.append(f"ssl_client_certificate {server.client_ca};")
    body = "\n".join(f"    {line}" for line in lines)
    if not server.reject_handshake:
        body += _locations(server, files)
    if server.extra:
        body += f"\n    {server.extra}"
    return f"  server {{\n{body}\n  }}"


class Nginx(_Process):
    """``with Nginx(tmp_path / "nginx", servers) as nginx:``; ports accept when it returns."""

    name = "nginx"

    def __init__(
        self,
        directory: Path,
        servers: Sequence[NginxServer],
        *,
        large_bytes: int = LARGE_BYTES,
    ) -> None:
        super().__init__(directory)
        if not servers:
            raise ValueError("Nginx needs at least one server definition")
        self.servers = tuple(servers)
        self.large_bytes = large_bytes
        self.files_dir = directory / "files"
        self.conf_path = directory / "nginx.conf"
        self.error_log = directory / "error.log"
        self.access_log = directory / "access.log"

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(sorted({s.port for s in self.servers}))

    def config_text(self) -> str:
        d = self.directory
        temp = nginx_temp_paths(d)
        maps = "\n".join(_json_map(var, i) for i, var in enumerate(ECHO_FIELDS.values()))
        servers = "\n".join(_server_block(s, self.files_dir) for s in self.servers)
        return f"""load_module {ECHO_MODULE};
daemon off;
master_process off;
worker_processes 1;
error_log {self.error_log} info;
pid {d / "nginx.pid"};
events {{ worker_connections 512; }}
http {{
  access_log {self.access_log};
{temp}
  ssl_protocols TLSv1.2 TLSv1.3;
  client_max_body_size 100m;
  client_body_buffer_size 16m;
  map_hash_bucket_size 128;
{maps}
{servers}
}}
"""

    def _prepare(self) -> None:
        self.files_dir.mkdir(exist_ok=True)
        (self.files_dir / "binary.bin").write_bytes(BINARY)
        with (self.files_dir / "large.bin").open("wb") as large:
            large.truncate(self.large_bytes)  # sparse: instant, reads back as zero bytes
        self.conf_path.write_text(self.config_text())

    def _command(self) -> list[str]:
        d = str(self.directory)
        return ["nginx", "-e", str(self.error_log), "-p", d, "-c", str(self.conf_path)]

    def _ready(self) -> bool:
        return all(accepts(port) for port in self.ports)

    def _logs(self) -> list[Path]:
        return [self.error_log, *super()._logs()]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self._prepare()
        super().start(timeout)


def sni_port(pki: ServerPKI, port: int, *, upstream_port: int | None = None) -> list[NginxServer]:
    """alpha.test and beta.test (own certificates) on one port; no or unknown SNI is refused."""
    return [
        NginxServer(port, default=True, reject_handshake=True),
        *(
            NginxServer(
                port,
                (name,),
                files.crt,
                files.key,
                verify_client="on",
                client_ca=pki.ca_pem,
                upstream_port=upstream_port,
            )
            for name, files in (("alpha.test", pki.alpha), ("beta.test", pki.beta))
        ),
    ]


def wrong_default_port(
    pki: ServerPKI, port: int, *, upstream_port: int | None = None
) -> list[NginxServer]:
    """Without SNI (or with an unknown name) the default server shows other.test's certificate."""
    return [
        NginxServer(
            port,
            ("other.test",),
            pki.other.crt,
            pki.other.key,
            default=True,
            verify_client="on",
            client_ca=pki.ca_pem,
            upstream_port=upstream_port,
        ),
        NginxServer(
            port,
            ("alpha.test",),
            pki.alpha.crt,
            pki.alpha.key,
            verify_client="on",
            client_ca=pki.ca_pem,
            upstream_port=upstream_port,
        ),
    ]


def plain_mtls_port(
    pki: ServerPKI,
    port: int,
    *,
    upstream_port: int | None = None,
    verify_client: str = "on",
) -> list[NginxServer]:
    """One default server with alpha.test's certificate, whatever the SNI; client cert required."""
    return [
        NginxServer(
            port,
            ("alpha.test",),
            pki.alpha.crt,
            pki.alpha.key,
            default=True,
            verify_client=verify_client,
            client_ca=pki.ca_pem,
            upstream_port=upstream_port,
        )
    ]


# ---------------------------------------------------------------------------------------------
# openssl s_server


_HELLO = re.compile(r"^\s*ClientHello, Length=", re.M)
_RECORD = re.compile(r"^(Sent|Received) Record", re.M)
_SNI_EXT = re.compile(r"extension_type=server_name\(0\), length=\d+\n((?:\s+[0-9a-f]{4} - .*\n)+)")


def _dump_bytes(dump: str) -> bytes:
    """Bytes of an OpenSSL BIO_dump block (hex columns only, the ASCII column dropped)."""
    out = bytearray()
    for line in dump.splitlines():
        hex_part = line.split(" - ", 1)[1][:47].replace("-", " ")
        out += bytes.fromhex("".join(hex_part.split()))
    return bytes(out)


def _server_name(ext: bytes) -> str:
    # server_name_list length (2), then entries: type (1), length (2), name
    length = int.from_bytes(ext[3:5], "big")
    return ext[5 : 5 + length].decode("ascii")


def client_hello_snis(trace: str) -> list[str | None]:
    """For each complete ClientHello in ``openssl s_server -trace`` output: its SNI or None."""
    starts = [m.start() for m in _HELLO.finditer(trace)]
    result: list[str | None] = []
    for start in starts:
        end = _RECORD.search(trace, start)
        if end is None:
            break  # the server has not answered this hello yet: its block may be incomplete
        ext = _SNI_EXT.search(trace, start, end.start())
        result.append(_server_name(_dump_bytes(ext.group(1))) if ext else None)
    return result


class OpenSSLServer(_Process):
    """``openssl s_server -www -trace`` on a free port; ``client_hellos()`` tells what SNI came.

    ``sni_name`` + ``cert2``/``key2``: a ClientHello naming ``sni_name`` gets the second
    certificate, anything else (no SNI included) the first. ``client_ca`` requires a client
    certificate from that CA and fails the handshake otherwise (``-verify_return_error``).
    ``chain`` is a PEM bundle (intermediates + root) from which the sent chains are built.
    """

    name = "s_server"

    def __init__(
        self,
        directory: Path,
        cert: Path,
        key: Path,
        *,
        chain: Path | None = None,
        client_ca: Path | None = None,
        sni_name: str | None = None,
        cert2: Path | None = None,
        key2: Path | None = None,
        verify_depth: int = 2,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(directory)
        if (sni_name is None) != (cert2 is None):
            raise ValueError("sni_name and cert2 go together")
        self.port = free_port()
        self.cert, self.key, self.chain, self.client_ca = cert, key, chain, client_ca
        self.sni_name, self.cert2, self.key2 = sni_name, cert2, key2 or cert2
        self.verify_depth = verify_depth
        self.extra_args = tuple(extra_args)
        self.trust_path = directory / "s_server-trust.pem"

    def _command(self) -> list[str]:
        cmd = ["openssl", "s_server", "-accept", f"127.0.0.1:{self.port}", "-www", "-trace"]
        cmd += ["-cert", str(self.cert), "-key", str(self.key)]
        if self.sni_name and self.cert2 and self.key2:
            cmd += ["-servername", self.sni_name, "-cert2", str(self.cert2)]
            cmd += ["-key2", str(self.key2)]
        trust = [p for p in (self.chain, self.client_ca) if p is not None]
        if trust:  # -cert/-cert2 read only the leaf: chains are built from this store
            self.trust_path.write_bytes(b"".join(p.read_bytes() for p in trust))
            cmd += ["-CAfile", str(self.trust_path), "-build_chain"]
        if self.client_ca is not None:
            cmd += ["-Verify", str(self.verify_depth), "-verify_return_error"]
        return [*cmd, *self.extra_args]

    def _ready(self) -> bool:  # "ACCEPT" once listening; no probe connection pollutes the trace
        return self.stdout_path.exists() and "ACCEPT" in self.stdout_path.read_text("latin-1")

    def output(self) -> str:
        return self.stdout_path.read_text("latin-1") if self.stdout_path.exists() else ""

    def errors(self) -> str:
        """What s_server wrote to stderr (verification errors of client certificates)."""
        return self.stderr_path.read_text("latin-1") if self.stderr_path.exists() else ""

    def client_hellos(self) -> list[str | None]:
        """SNI of each ClientHello seen so far (None: no server_name extension)."""
        return client_hello_snis(self.output())

    def wait_client_hellos(self, count: int, timeout: float = 5.0) -> list[str | None]:
        """The first ``count`` ClientHellos' SNI, once the server has answered them."""
        deadline = time.monotonic() + timeout
        while len(hellos := self.client_hellos()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"saw {len(hellos)} ClientHello(s), wanted {count}")
            time.sleep(0.02)  # the trace is written by another process; bounded by deadline
        return hellos[:count]


# ---------------------------------------------------------------------------------------------
# tinyproxy


_CONNECT = re.compile(r"Request \(file descriptor \d+\): CONNECT (\S+) HTTP")


class Tinyproxy(_Process):
    """A forward proxy on a free loopback port; ``connects()`` lists the tunnels requested."""

    name = "tinyproxy"

    def __init__(
        self,
        directory: Path,
        *,
        auth: tuple[str, str] | None = None,
        connect_ports: Sequence[int] = (),
    ) -> None:
        super().__init__(directory)
        self.port = free_port()
        self.auth = auth
        self.connect_ports = tuple(connect_ports)  # empty: CONNECT to any port
        self.conf_path = directory / "tinyproxy.conf"
        self.log_path = directory / "tinyproxy.log"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:port`` (credentials are not in it: see ``auth``)."""
        return f"http://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        # As root without a User directive tinyproxy warns and keeps running as root: fine here.
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 60",
            f'LogFile "{self.log_path}"',
            "LogLevel Info",
            "MaxClients 100",
            "Allow 127.0.0.1",
            "DisableViaHeader Yes",
        ]
        lines += [f"ConnectPort {p}" for p in self.connect_ports]
        if self.auth:
            lines.append(f"BasicAuth {self.auth[0]} {self.auth[1]}")
        return "\n".join(lines) + "\n"

    def _command(self) -> list[str]:
        self.conf_path.write_text(self.config_text())
        self.conf_path.chmod(0o600)
        return ["tinyproxy", "-d", "-c", str(self.conf_path)]

    def _ready(self) -> bool:
        return "Accepting connections" in self.log()

    def _logs(self) -> list[Path]:
        return [self.log_path, *super()._logs()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def connects(self) -> list[str]:
        """``host:port`` of every CONNECT request received, in order."""
        return _CONNECT.findall(self.log())


# ---------------------------------------------------------------------------------------------
# pytest fixtures


@dataclass
class NginxPorts:
    """One nginx carrying every layout; ``optional`` is plain_mtls_port with verify optional."""

    nginx: Nginx
    sni: int
    wrong_default: int
    plain: int
    optional: int
    pki: ServerPKI
    layouts: dict[str, list[NginxServer]] = field(default_factory=dict)


def start_layouts(
    pki: ServerPKI, directory: Path, *, upstream_port: int | None = None
) -> Iterator[NginxPorts]:
    """Generator behind :func:`nginx_ports`; usable with ``contextlib.contextmanager``."""
    builders: dict[str, Callable[..., list[NginxServer]]] = {
        "sni": sni_port,
        "wrong_default": wrong_default_port,
        "plain": plain_mtls_port,
    }
    ports = {name: free_port() for name in (*builders, "optional")}
    layouts = {
        name: build(pki, ports[name], upstream_port=upstream_port)
        for name, build in builders.items()
    }
    layouts["optional"] = plain_mtls_port(
        pki, ports["optional"], upstream_port=upstream_port, verify_client="optional"
    )
    servers = [s for layout in layouts.values() for s in layout]
    with Nginx(directory, servers) as nginx:
        yield NginxPorts(nginx, pki=pki, layouts=layouts, **ports)


@pytest.fixture(scope="session")
def server_pki(tmp_path_factory: pytest.TempPathFactory) -> ServerPKI:
    return ServerPKI.create(tmp_path_factory.mktemp("server-pki"))


@pytest.fixture(scope="session")
def nginx_ports(
    server_pki: ServerPKI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NginxPorts]:
    yield from start_layouts(server_pki, tmp_path_factory.mktemp("nginx"))


__all__ = [
    "BINARY",
    "ECHO_FIELDS",
    "HarnessError",
    "Nginx",
    "NginxPorts",
    "Managed",
    "NginxServer",
    "OpenSSLServer",
    "PemFiles",
    "ServerPKI",
    "Tinyproxy",
    "UNSAFE",
    "accepts",
    "client_hello_snis",
    "free_port",
    "nginx_temp_paths",
    "nginx_ports",
    "plain_mtls_port",
    "server_pki",
    "sni_port",
    "start_layouts",
    "wrong_default_port",
]
