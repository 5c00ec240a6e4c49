"""A small mTLS server with SNI virtual hosts, for ``agent demo`` (and the tests).

One port serves several names, each with its own certificate; it requires a client certificate
from the given CA and refuses handshakes without SNI (``unrecognized_name``), as the servers that
trouble MID users do. ``/echo`` reports what the server saw: the SNI name, the client
certificate's subject, method, path, headers and body. ``/flaky?fail=N`` drops the connection
unanswered for the first N requests carrying one ``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from asyncio import sslproto
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from cryptography import x509

from agent.commands.demo.pki import CA, Issued
from agent.credentials.formats import KeyMaterial
from agent.credentials.memory import load_client_material

SOAP_REPLY = (
    '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
    '<GreetResponse xmlns="urn:demo">Hello, {name}</GreetResponse></soap:Body></soap:Envelope>'
)
SOAP_FAULT = (
    '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
    "<soap:Fault><faultcode>soap:Client</faultcode><faultstring>unknown operation</faultstring>"
    "</soap:Fault></soap:Body></soap:Envelope>"
)


def _subject_of(obj: ssl.SSLObject | None) -> str:
    """The client certificate's subject, RFC 4514 (``CN=...,O=...``), or "" without one."""
    der = obj.getpeercert(binary_form=True) if obj else None
    return x509.load_der_x509_certificate(der).subject.rfc4514_string() if der else ""


class _AlertingSSLProtocol(sslproto.SSLProtocol):
    """asyncio's server-side TLS, but a failed handshake sends its alert before closing.

    asyncio drops the connection without flushing the alert OpenSSL wrote (an untrusted client
    certificate, a missing SNI name), so the client would see only a reset. Real servers send
    the alert; the demo should behave like them.
    """

    def _do_handshake(self) -> None:
        try:
            self._sslobj.do_handshake()  # type: ignore[attr-defined]
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            self._process_outgoing()  # type: ignore[attr-defined]
        except ssl.SSLError as exc:
            self._process_outgoing()  # type: ignore[attr-defined]
            self._on_handshake_complete(exc)
        else:
            self._on_handshake_complete(None)


class DemoServer:
    """``async with DemoServer(ca, {"alpha.test": cert, ...}) as server: server.port``."""

    def __init__(self, ca: CA, certs: dict[str, Issued], *, require_sni: bool = True) -> None:
        self.ca = ca
        self.certs = certs
        self.require_sni = require_sni
        self.port = 0
        self.seen: Counter[str] = Counter()  # Idempotency-Key → requests seen
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak = 0  # the most requests in /slow or /hold at once
        self.started = asyncio.Event()  # set when a /slow or /hold request arrives
        self.release = asyncio.Event()  # lets the requests held in /hold go
        self.changed = asyncio.Event()  # set whenever a request enters or leaves /slow or /hold
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None

    def _context(self) -> ssl.SSLContext:
        contexts = {}
        for name, issued in self.certs.items():
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            chain = (issued.cert, *issued.chain)
            load_client_material(ctx, KeyMaterial.of(chain, issued.key, f"server {name}"))
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=self.ca.cert_pem().decode())
            contexts[name] = ctx
        default = next(iter(contexts.values()))

        def pick(obj: Any, name: str | None, _ctx: ssl.SSLContext) -> int | None:
            if name in contexts:
                obj.context = contexts[name]
            elif self.require_sni:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            obj.demo_sni = name
            return None

        default.sni_callback = pick
        return default

    def _record(self, request: web.Request, body: bytes) -> dict[str, Any]:
        obj = request.transport.get_extra_info("ssl_object") if request.transport else None
        seen = {
            "sni": getattr(obj, "demo_sni", None),
            "client": _subject_of(obj),
            "method": request.method,
            "path": request.path,
            "host": request.headers.get("Host"),
            "headers": dict(request.headers),
            "body": body.decode(errors="replace"),
        }
        key = request.headers.get("Idempotency-Key")
        if key:
            self.seen[key] += 1
        self.requests.append(seen)
        return seen

    async def _echo(self, request: web.Request) -> web.Response:
        return web.json_response(self._record(request, await request.read()))

    async def _slow(self, request: web.Request) -> web.Response:
        seconds = float(request.query.get("seconds", "1"))
        return await self._answer_after(request, lambda: asyncio.sleep(seconds))

    async def _hold(self, request: web.Request) -> web.Response:
        """Answers once ``release`` is set: a caller sees what is in flight at once."""
        return await self._answer_after(request, self.release.wait)

    async def _answer_after(
        self, request: web.Request, done: Callable[[], Awaitable[object]]
    ) -> web.Response:
        """Echo the request once ``done()`` returns, counted in flight meanwhile."""
        seen = self._record(request, await request.read())
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.started.set()
        self.changed.set()
        try:
            await done()
        finally:
            self.in_flight -= 1
            self.changed.set()
        return web.json_response(seen)

    async def until(self, condition: Callable[[], bool]) -> None:
        """Until ``condition()`` holds, looked at whenever /slow or /hold changes."""
        while not condition():
            self.changed.clear()
            await self.changed.wait()

    async def _soap(self, request: web.Request) -> web.Response:
        body = (await request.read()).decode()
        self._record(request, body.encode())
        if "Greet" not in body:
            return web.Response(status=500, text=SOAP_FAULT, content_type="text/xml")
        name = body.split("<name>", 1)[-1].split("</name>", 1)[0]
        return web.Response(text=SOAP_REPLY.format(name=name), content_type="text/xml")

    async def _flaky(self, request: web.Request) -> web.StreamResponse:
        """Drops the connection without answering for the first ``fail`` requests of a key."""
        seen = self._record(request, await request.read())
        key = request.headers.get("Idempotency-Key", "")
        if self.seen[key] <= int(request.query.get("fail", "1")) and request.transport:
            request.transport.abort()
        return web.json_response(seen)

    async def _binary(self, request: web.Request) -> web.Response:
        return web.Response(body=bytes(range(256)), content_type="application/octet-stream")

    async def _status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="as asked")

    async def start(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/echo", self._echo)
        app.router.add_route("*", "/slow", self._slow)
        app.router.add_route("*", "/hold", self._hold)
        app.router.add_route("*", "/flaky", self._flaky)
        app.router.add_post("/soap", self._soap)
        app.router.add_get("/binary", self._binary)
        app.router.add_get("/status/{code}", self._status)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        ctx = self._context()
        loop = asyncio.get_running_loop()
        handler = self._runner.server
        assert handler is not None

        def protocol() -> asyncio.BaseProtocol:
            return _AlertingSSLProtocol(
                loop,
                handler(),
                ctx,
                None,  # type: ignore[arg-type]
                server_side=True,
            )

        self._server = await loop.create_server(protocol, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> DemoServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def summary(body: str | None) -> str:
    try:
        seen = json.loads(body or "")
        return f"sni={seen['sni']} client={seen['client'].split(',')[0]}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{len(body or '')} chars"
