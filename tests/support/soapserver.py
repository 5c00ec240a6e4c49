"""SOAP peers for the test suite: a real spyne service behind nginx's mutual TLS, and a hostile one.

- :class:`SoapBackend` — a spyne (2.14) application on a plain-HTTP WSGI server in a background
  thread: ``/soap11`` speaks SOAP 1.1 in and out, ``/soap12`` SOAP 1.2. Operations (namespace
  :data:`TNS`): ``echo(text) -> text``, ``add(a, b) -> int`` and ``reject(reason)``, which raises
  ``Fault(faultcode="Client.Invalid", faultstring="rejected: <reason>", detail=...)``. Every
  request is kept in ``requests`` (path, Content-Type, SOAPAction, body) so tests can assert what
  went over the wire. :func:`soap_nginx` puts it behind nginx (``sni_port`` layout: SNI and a
  client certificate from the harness root CA required).
- :class:`HostileServer` — aiohttp.web over the same mutual TLS (alpha.test's certificate, client
  certificate required), answering with XXE, external DTDs, billion laughs, a 50 MiB chunked
  stream and an HTML 502 page; it counts what it managed to send and which DTD fetches came.

spyne 2.14 runs on Python 3.11 but is old: it imports ``cgi`` (deprecated in 3.11, removed in
3.13) and vendors six 1.14, whose meta-path importer lacks ``find_spec`` (ImportWarning on 3.11).
The suite turns warnings into errors, so spyne is imported with warnings silenced and the
importer is given ``find_spec`` afterwards (:func:`_modernise_six_importer`).
"""

from __future__ import annotations

import asyncio
import io
import socket
import socketserver
import ssl
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import spec_from_loader
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from aiohttp import web

from tests.support.configs import write_config
from tests.support.servers import Managed, Nginx, ServerPKI, free_port, sni_port

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # cgi deprecation, six's importer (see docstring)
    from spyne import Application, Fault, Integer, ServiceBase, Unicode, rpc
    from spyne.protocol.soap import Soap11, Soap12
    from spyne.server.wsgi import WsgiApplication
    from spyne.util import six as _spyne_six


def _modernise_six_importer() -> None:
    """Give spyne's vendored six 1.14 importer the ``find_spec`` API (as six 1.16 has).

    It stays on ``sys.meta_path``; without ``find_spec`` every import that reaches it (any
    module not found elsewhere, e.g. an optional dependency tried in ``try: import``) makes
    Python 3.11 emit an ImportWarning, which this suite turns into an error.
    """
    cls: Any = _spyne_six._SixMetaPathImporter
    if hasattr(cls, "find_spec"):
        return

    def find_spec(self: Any, fullname: str, path: Any, target: Any = None) -> Any:
        return spec_from_loader(fullname, self) if fullname in self.known_modules else None

    cls.find_spec = find_spec
    cls.create_module = lambda self, spec: self.load_module(spec.name)
    cls.exec_module = lambda self, module: None


_modernise_six_importer()

TNS = "urn:test:soap"
SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
ENVELOPE_NS = {"1.1": SOAP11_NS, "1.2": SOAP12_NS}
STREAM_BYTES = 50 * 1024 * 1024
STREAM_CHUNK = 64 * 1024

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


# ---------------------------------------------------------------------------------------------
# The spyne service


class TestService(ServiceBase):  # type: ignore[misc]
    """What a partner's SOAP service looks like: two answers and one refusal."""

    __test__ = False  # not a pytest class

    @rpc(Unicode, _returns=Unicode)  # type: ignore[untyped-decorator]
    def echo(ctx: Any, text: str) -> str:
        return text

    @rpc(Integer, Integer, _returns=Integer)  # type: ignore[untyped-decorator]
    def add(ctx: Any, a: int, b: int) -> int:
        return a + b

    @rpc(Unicode, _returns=Unicode)  # type: ignore[untyped-decorator]
    def reject(ctx: Any, reason: str) -> str:
        raise Fault(
            faultcode="Client.Invalid",
            faultstring=f"rejected: {reason}",
            detail={"field": "reason"},
        )


def soap_app(protocol: type[Any]) -> WsgiApp:
    app = Application(
        [TestService],
        tns=TNS,
        in_protocol=protocol(validator="lxml"),
        out_protocol=protocol(),
    )
    wsgi: WsgiApp = WsgiApplication(app)
    return wsgi


@dataclass(frozen=True)
class SeenRequest:
    path: str
    content_type: str
    soap_action: str | None
    body: bytes


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Requests are recorded by the app; no access log on the test's stderr."""


class SoapBackend(Managed):
    """``with SoapBackend() as backend:`` — spyne on ``http://127.0.0.1:<port>/soap11|soap12``."""

    def __init__(self) -> None:
        self.apps = {"/soap11": soap_app(Soap11), "/soap12": soap_app(Soap12)}
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        self.port = 0
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        app = self.apps.get(path)
        if app is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no such service\n"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        with self._lock:
            self.requests.append(
                SeenRequest(
                    path=path,
                    content_type=environ.get("CONTENT_TYPE", ""),
                    soap_action=environ.get("HTTP_SOAPACTION"),
                    body=body,
                )
            )
        environ["wsgi.input"] = io.BytesIO(body)
        return app(environ, start_response)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def start(self) -> None:
        self._server = make_server(
            "127.0.0.1", 0, self, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="soap-backend", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)


@contextmanager
def soap_nginx(pki: ServerPKI, directory: Path, backend: SoapBackend) -> Iterator[Nginx]:
    """nginx (``sni_port`` layout) in front of ``backend``; its TLS port is ``ports[0]``.

    ``/echo``, ``/raw`` etc. (tests/support/servers.py) are served by nginx itself; everything else,
    ``/soap11`` and ``/soap12`` included, goes to the backend.
    """
    port = free_port()
    with Nginx(directory, sni_port(pki, port, upstream_port=backend.port)) as nginx:
        yield nginx


def soap_config(directory: Path, pki: ServerPKI, **extra: str) -> Path:
    """config.xml with profile ``p``: client-one (PEM), trusting the harness root CA."""
    p = "mid.httpclient.protocol.p"
    params = {
        "name": "soap-test-agent",
        "url": f"sqlite:///{directory / 'queue.db'}",
        "mid.poll.time": "0.2",
        "agent.resolve": "alpha.test:127.0.0.1,beta.test:127.0.0.1",
        f"{p}.path": str(pki.client_one.crt),
        f"{p}.key": str(pki.client_one.key),
        f"{p}.truststore": str(pki.ca_pem),
    }
    return write_config(directory, params | extra)


def envelope(version: str, body: str, *, prefix: str = "env") -> str:
    """A whole Envelope of ``version`` around a Body fragment."""
    ns = ENVELOPE_NS[version]
    return (
        f'<{prefix}:Envelope xmlns:{prefix}="{ns}" xmlns:t="{TNS}">'
        f"<{prefix}:Body>{body}</{prefix}:Body></{prefix}:Envelope>"
    )


# ---------------------------------------------------------------------------------------------
# The hostile server


def laughs_doctype(depth: int = 10, width: int = 10) -> str:
    """Billion laughs: entity ``lol<depth-1>`` expands to ``width ** (depth-1)`` "lol"s."""
    lines = ['<!ENTITY lol0 "lol">']
    for level in range(1, depth):
        refs = f"&lol{level - 1};" * width
        lines.append(f'<!ENTITY lol{level} "{refs}">')
    return "<!DOCTYPE Envelope [\n" + "\n".join(lines) + "\n]>\n"


def fault_envelope(version: str, code_xml: str, reason_xml: str, detail_xml: str) -> str:
    """A SOAP fault whose parts are given as raw XML (entity references allowed)."""
    if version == "1.1":
        inner = (
            f"<faultcode>{code_xml}</faultcode><faultstring>{reason_xml}</faultstring>"
            f"<detail><info>{detail_xml}</info></detail>"
        )
    else:
        inner = (
            f"<env:Code><env:Value>{code_xml}</env:Value></env:Code>"
            f'<env:Reason><env:Text xml:lang="en">{reason_xml}</env:Text></env:Reason>'
            f"<env:Detail><info>{detail_xml}</info></env:Detail>"
        )
    return envelope(version, f"<env:Fault>{inner}</env:Fault>")


CONTENT_TYPES = {"1.1": "text/xml", "1.2": "application/soap+xml"}
HTML_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


class HostileServer:
    """``async with HostileServer(pki, secret_file) as hostile:`` — routes (``?v=1.1|1.2``):

    ``/xxe``        200, ``&xxe;`` (SYSTEM file:// of ``secret_file``) in the echo result
    ``/xxe-fault``  500, ``&xxe;`` in the fault string and detail
    ``/xxe-dtd``    200, an external DTD and a parameter entity fetched from ``dtd_url``
    ``/laughs``     500, a fault whose fault string is the billion-laughs entity
    ``/stream``     200, :data:`STREAM_BYTES` of XML in chunks, no Content-Length
    ``/html``       502, an nginx-style HTML page (text/html)

    ``stream_sent`` counts the bytes the stream handed to the transport before the client
    went away; ``stream_done`` is set when the handler stopped. ``dtd_hits`` counts fetches of
    the plain-HTTP ``dtd_url``. ``bodies`` holds what each route sent (for comparing).
    """

    def __init__(self, pki: ServerPKI, secret_file: Path) -> None:
        self.pki = pki
        self.secret_file = secret_file
        self.port = 0
        self.plain_port = 0
        self.stream_sent = 0
        self.stream_done = asyncio.Event()
        self.dtd_hits = 0
        self.client_subjects: list[str] = []
        self.bodies: dict[str, str] = {}
        self._runner: web.AppRunner | None = None

    @property
    def dtd_url(self) -> str:
        return f"http://127.0.0.1:{self.plain_port}/evil.dtd"

    def url(self, route: str, version: str = "1.1") -> str:
        return f"https://alpha.test:{self.port}{route}?v={version}"

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.pki.alpha.crt, self.pki.alpha.key)
        ctx.load_verify_locations(self.pki.ca_pem)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _seen(self, request: web.Request) -> str:
        cert = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in cert["subject"]) if cert else {}
        self.client_subjects.append(str(subject.get("commonName", "")))
        return request.query.get("v", "1.1")

    def _xml(self, route: str, version: str, text: str, status: int = 200) -> web.Response:
        self.bodies[f"{route}?v={version}"] = text
        ct = f"{CONTENT_TYPES[version]}; charset=utf-8"
        return web.Response(status=status, body=text.encode(), headers={"Content-Type": ct})

    def _xxe_doctype(self) -> str:
        return f'<!DOCTYPE Envelope [<!ENTITY xxe SYSTEM "file://{self.secret_file}">]>\n'

    async def xxe(self, request: web.Request) -> web.Response:
        v = self._seen(request)
        body = envelope(v, "<t:echoResponse><t:echoResult>&xxe;</t:echoResult></t:echoResponse>")
        return self._xml("/xxe", v, self._xxe_doctype() + body)

    async def xxe_fault(self, request: web.Request) -> web.Response:
        v = self._seen(request)
        code = "env:Server" if v == "1.1" else "env:Receiver"
        body = fault_envelope(v, code, "leaked: &xxe;", "&xxe;")
        return self._xml("/xxe-fault", v, self._xxe_doctype() + body, status=500)

    async def xxe_dtd(self, request: web.Request) -> web.Response:
        v = self._seen(request)
        doctype = (
            f'<!DOCTYPE Envelope SYSTEM "{self.dtd_url}" [\n'
            f'<!ENTITY % remote SYSTEM "{self.dtd_url}">\n%remote;\n]>\n'
        )
        body = envelope(v, "<t:echoResponse><t:echoResult>&leak;</t:echoResult></t:echoResponse>")
        return self._xml("/xxe-dtd", v, doctype + body)

    async def evil_dtd(self, request: web.Request) -> web.Response:
        self.dtd_hits += 1
        dtd = f'<!ENTITY leak SYSTEM "file://{self.secret_file}">\n'
        return web.Response(body=dtd.encode(), content_type="application/xml-dtd")

    async def laughs(self, request: web.Request) -> web.Response:
        v = self._seen(request)
        code = "env:Server" if v == "1.1" else "env:Receiver"
        body = fault_envelope(v, code, "&lol9;", "&lol9;")
        return self._xml("/laughs", v, laughs_doctype() + body, status=500)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        v = self._seen(request)
        resp = web.StreamResponse(headers={"Content-Type": f"{CONTENT_TYPES[v]}; charset=utf-8"})
        resp.enable_chunked_encoding()
        whole = envelope(v, "<t:echoResponse><t:echoResult>|</t:echoResult></t:echoResponse>")
        head = whole.split("|", 1)[0].encode()  # never finished: the filler goes on
        filler = b"A" * STREAM_CHUNK
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:  # keep the kernel's share small, so the count tells what was read
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_CHUNK)
        try:
            await resp.prepare(request)
            await resp.write(head)
            while self.stream_sent < STREAM_BYTES:
                await resp.write(filler)
                self.stream_sent += len(filler)
        except ConnectionError:
            pass  # the client stopped reading and closed: what we wanted to see
        finally:
            self.stream_done.set()
        return resp

    async def html(self, request: web.Request) -> web.Response:
        self._seen(request)
        self.bodies["/html"] = HTML_502
        return web.Response(status=502, text=HTML_502, content_type="text/html")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/xxe", self.xxe)
        app.router.add_post("/xxe-fault", self.xxe_fault)
        app.router.add_post("/xxe-dtd", self.xxe_dtd)
        app.router.add_get("/evil.dtd", self.evil_dtd)
        app.router.add_post("/laughs", self.laughs)
        app.router.add_post("/stream", self.stream)
        app.router.add_post("/html", self.html)
        return app

    async def __aenter__(self) -> HostileServer:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        self.port, self.plain_port = free_port(), free_port()
        ctx = self.ssl_context()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ctx).start()
        await web.TCPSite(self._runner, "127.0.0.1", self.plain_port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


__all__ = [
    "ENVELOPE_NS",
    "HTML_502",
    "STREAM_BYTES",
    "TNS",
    "HostileServer",
    "SeenRequest",
    "SoapBackend",
    "TestService",
    "envelope",
    "fault_envelope",
    "laughs_doctype",
    "soap_config",
    "soap_nginx",
]
