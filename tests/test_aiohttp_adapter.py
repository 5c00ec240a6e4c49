"""The private aiohttp attributes the agent relies on (agent/http/aiohttp_adapter.py) are still
there and still mean what the adapter assumes. An aiohttp release that moves one fails here,
not as wrongly retried POSTs or results without their TLS block."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.client_proto import ResponseHandler

from agent.http.aiohttp_adapter import (
    AnswerCutOff,
    WatchedConnector,
    WatchedHandler,
    WatchedResponse,
    answer_started,
    protocol_of,
)


@pytest.fixture
async def web_port() -> AsyncIterator[int]:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    yield server.sockets[0].getsockname()[1]
    await runner.cleanup()


@pytest.fixture
async def cut_port() -> AsyncIterator[int]:
    """Answers half a status line, then closes the connection."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=WatchedConnector(max_idle=100), response_class=WatchedResponse
    )


async def test_connectors_build_their_protocol_from_a_factory_the_adapter_can_replace() -> None:
    plain = aiohttp.TCPConnector()
    watched = WatchedConnector(max_idle=100)
    try:
        factory = plain._factory
        assert isinstance(factory, functools.partial) and factory.func is ResponseHandler
        assert plain._loop is asyncio.get_running_loop()
        assert watched._factory.func is WatchedHandler
        assert "data_received" in vars(ResponseHandler)  # the method the handler extends
        params = inspect.signature(aiohttp.BaseConnector._release).parameters
        assert list(params) == ["self", "key", "protocol", "should_close"]
        assert params["should_close"].kind is inspect.Parameter.KEYWORD_ONLY
    finally:
        await plain.close()
        await watched.close()


async def test_a_read_answer_still_names_its_protocol_through_the_response(web_port: int) -> None:
    async with session() as client, client.get(f"http://127.0.0.1:{web_port}/") as resp:
        assert await resp.text() == "hello"
        assert resp.connection is None  # read whole: the connection is back in the pool
        proto = protocol_of(resp)
        assert isinstance(proto, WatchedHandler) and proto.answered
        assert proto is resp._protocol
        assert proto.transport is not None
        connector = client.connector
        assert isinstance(connector, WatchedConnector)
        pooled = connector._conns  # the idle connections, by pool key, that the bound counts
        assert [list(conns) for conns in pooled.values()][0][0][0] is proto
        assert connector.idle_count() == 1


async def test_an_idle_connection_lets_go_of_its_last_answers_reader(web_port: int) -> None:
    """aiohttp keeps the last answer's reader on the protocol (1.7 KiB) after it is read; a
    pooled connection drops it, and the next request on it works as before."""
    url = f"http://127.0.0.1:{web_port}/"
    async with session() as client:
        for _ in range(2):
            async with client.get(url) as resp:
                assert await resp.text() == "hello"
                proto = protocol_of(resp)
            assert isinstance(proto, WatchedHandler) and proto.pooled
            assert proto._payload is None and not proto.should_close
        connector = client.connector
        assert isinstance(connector, WatchedConnector) and connector.idle_count() == 1


async def test_an_answer_cut_after_its_first_byte_marks_the_task(cut_port: int) -> None:
    async with session() as client:
        with pytest.raises(AnswerCutOff):
            await client.post(f"http://127.0.0.1:{cut_port}/", data=b"once")
    assert answer_started() is True
    assert answer_started() is False  # reading cleared it
