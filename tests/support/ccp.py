"""A CyberArk Central Credential Provider for the tests, written from its documented behaviour.

``GET /AIMWebService/api/Accounts?AppID=..&Safe=..&Folder=..&Object=..`` over mutual TLS: the
application is recognised by its client certificate (issued by the CA the server trusts, its common
name registered for the AppID) and its AppID. The answer is the account as JSON (``Content``,
``UserName``, ``Address``, ``Safe``, ``Folder``, ``Name``, ...). Errors are HTTP 4xx/5xx with
``{"ErrorCode": ..., "ErrorMsg": ...}``: ``APPAP004E`` when no object matches, ``APPAP282E``
when the application cannot be authenticated (an unknown AppID, or a certificate not registered
for it). ``down`` makes every request answer 503, as a CCP whose vault is away.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.commands.demo.pki import CA
from tests.support.servers import free_port

PATH = "/AIMWebService/api/Accounts"


@dataclass
class Account:
    content: str
    username: str = "svc-mid"
    address: str = "partner.example"


@dataclass
class CCPServer:
    """The CCP on 127.0.0.1 (in a thread of its own), trusting ``ca`` for client certificates."""

    ca: CA
    server_cert: Path
    server_key: Path
    apps: dict[str, set[str]]  # AppID -> common names of the client certificates allowed
    # (safe, folder, object name) -> account
    accounts: dict[tuple[str, str, str], Account] = field(default_factory=dict)
    down: bool = False
    requests: list[dict[str, str]] = field(default_factory=list)
    port: int = 0

    def add(self, safe: str, name: str, content: str, folder: str = "Root") -> None:
        self.accounts[(safe, folder, name)] = Account(content)

    async def _accounts(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        transport = request.transport
        assert transport is not None
        peer = transport.get_extra_info("peercert") or {}
        subject = next(
            (v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), ""
        )
        self.requests.append(query | {"client": subject})
        if self.down:
            return _error(503, "APPAP009E", "The Vault is currently unavailable")
        app = query.get("AppID", "")
        if subject not in self.apps.get(app, set()):
            return _error(
                403,
                "APPAP282E",
                f"Failed to verify application authentication data: application {app!r} "
                "is not authorised for this certificate",
            )
        key = (query.get("Safe", ""), query.get("Folder", "Root"), query.get("Object", ""))
        account = self.accounts.get(key)
        if account is None:
            return _error(404, "APPAP004E", "Password object matching query [...] was not found")
        body: dict[str, Any] = {
            "Content": account.content,
            "UserName": account.username,
            "Address": account.address,
            "Safe": key[0],
            "Folder": key[1],
            "Name": key[2],
            "PolicyID": "Test-Policy",
            "PasswordChangeInProcess": "False",
        }
        return web.json_response(body)

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        ctx.load_verify_locations(cadata=self.ca.cert_pem().decode())
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def start(self) -> None:
        self.port = free_port()
        started = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            app = web.Application()
            app.router.add_get(PATH, self._accounts)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._context())
            await site.start()
            started.set()

        def run() -> None:
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name="ccp")
        self._thread.start()
        assert started.wait(15), "the CCP did not start"

    def stop(self) -> None:
        async def close() -> None:
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(15)
        self._loop.close()

    @property
    def endpoint(self) -> str:
        return f"https://ccp.test:{self.port}{PATH}"


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"ErrorCode": code, "ErrorMsg": message}, status=status)
