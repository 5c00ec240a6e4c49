"""An HTTP/1.1 server over mutual TLS that honours ``Transfer-Encoding: chunked`` and keeps every
connection open: the kind of peer a request-smuggling job would exploit.

Each request is answered with JSON saying which connection it came on and in what order, and
what the server read (method, path, body), so a test can tell whether a body was read as a
second request. Certificates come from :class:`tests.support.servers.ServerPKI`.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from tests.support.servers import ServerPKI


@dataclass
class Seen:
    connection: int
    order: int  # 1 for a connection's first request
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class KeepAliveServer:
    """``async with KeepAliveServer(pki) as server: server.port, server.seen``."""

    pki: ServerPKI
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.Server | None = None
    _open: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.pki.alpha.crt, self.pki.alpha.key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(self.pki.ca_pem)
        return ctx

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._context())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._open.values():
            writer.close()
        await asyncio.gather(*self._open, return_exceptions=True)
        await self._server.wait_closed()

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection, order = self.connections, 0
        task = asyncio.current_task()
        assert task is not None
        self._open[task] = writer
        try:
            while (request := await _read_request(reader)) is not None:
                order += 1
                method, path, headers, body = request
                self.seen.append(Seen(connection, order, method, path, headers, body))
                answer = {"connection": connection, "order": order, "path": path}
                payload = json.dumps(answer | {"body": body.decode(errors="replace")}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            self._open.pop(task, None)
            writer.close()


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    line = await reader.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return method, path, headers, await _read_chunked(reader)
    length = int(headers.get("content-length", "0"))
    return method, path, headers, await reader.readexactly(length)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()  # the blank line after the last chunk (no trailers)
            return body
        body += await reader.readexactly(size)
        await reader.readline()
