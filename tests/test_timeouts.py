"""The job's timeout bounds the whole call: connecting, the handshake, waiting, reading the body.

Each peer here stalls at one stage, for good; the job must end as ``timeout`` (not hang, and not
another kind) and the stalled connection must be given up.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agent.config.config import load_config
from agent.engine.engine import Engine
from agent.jobs.model import Job
from tests.support.configs import profile_config
from tests.support.engines import running_engine
from tests.support.pki import PKI, server_context

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class StallingPeer:
    """A loopback server whose handler stalls; it counts connections it saw closed."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None) -> None:
        self.handler = handler
        self.tls = tls
        self.closed = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.handler(reader, writer)
            await reader.read()  # until the client gives up on the connection
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self.closed.set()
            writer.close()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)


async def half_a_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n")
    writer.write(b"x" * 10)
    await writer.drain()


async def headers_only_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    writer.write(b"5\r\nhello\r\n")
    await writer.drain()


async def silent_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    return None  # no TLS at all: the client's handshake waits for a ServerHello that never comes


@pytest.fixture
async def engine(tmp_path: Path, pki: PKI) -> AsyncIterator[Engine]:
    async with running_engine(load_config(profile_config(tmp_path, pki, 443), env={})) as engine:
        yield engine


@pytest.mark.parametrize(
    ("stage", "handler", "tls"),
    [
        ("handshake", silent_tcp, False),
        ("answer", never_answer, True),
        ("body with a length", half_a_body, True),
        ("chunked body", headers_only_chunked, True),
    ],
)
async def test_a_peer_stalling_at_any_stage_ends_the_job_as_timeout(
    engine: Engine, pki: PKI, stage: str, handler: Handler, tls: bool
) -> None:
    peer = StallingPeer(handler, server_context(pki) if tls else None)
    async with peer as port:
        job = Job.from_dict(
            {
                "id": f"stall-{stage}",
                "topic": "RESTProbe",
                "endpoint": f"https://alpha.test:{port}/",
                "protocol_profile": "partner",
                "timeout": 0.5,
                "max_attempts": 1,
            }
        )
        result = await asyncio.wait_for(engine.run(job), 30)
        assert result.state == "error", result
        assert result.error is not None
        assert (result.error.kind, result.attempts) == ("timeout", 1), result.error
        assert f"alpha.test:{port}" in result.error.message
        await asyncio.wait_for(peer.closed.wait(), 30)  # the stalled connection was given up
