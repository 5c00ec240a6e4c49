"""What comes back: an answer's head is bounded, an answer that started is never retried, a
request aiohttp will not build is the job's fault, and a partner's page about the client
certificate carries a hint.

The peers here are asyncio TLS servers on 127.0.0.1 that count the requests that reached them,
then answer in one broken way each; the client-certificate pages come from real nginx.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config.config import load_config
from agent.engine.engine import Engine
from agent.http.transport import MAX_FIELD, MAX_HEADERS
from agent.jobs.model import Job
from agent.jobs.results import Result
from tests.support.configs import P, profile_config, tls_config
from tests.support.engines import running_engine
from tests.support.jobs import make_job
from tests.support.pki import PKI, server_context
from tests.support.servers import NginxPorts, ServerPKI

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"


class CountingPeer:
    """A loopback TLS server that reads each request (head and Content-Length body), counts
    it, and lets ``answer`` write what it likes; the connection is closed when it returns."""

    def __init__(self, answer: Answer, tls: ssl.SSLContext) -> None:
        self.answer = answer
        self.tls = tls
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            self.requests += 1
            await self.answer(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def sends(data: bytes) -> Answer:
    """Write ``data``, then close the connection."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()

    return answer


def sends_then_stalls(data: bytes) -> Answer:
    """Write ``data``, then wait until the client gives up on the connection."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        await reader.read()

    return answer


def sends_then_resets(data: bytes) -> Answer:
    """Write ``data``, then reset the TCP connection (RST, no close_notify, no FIN)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        sock: socket.socket = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    return answer


def headers(count: int, size: int) -> bytes:
    return b"".join(b"X-H-%d: %s\r\n" % (i, b"v" * size) for i in range(count))


@pytest.fixture
async def engine(tmp_path: Path, pki: PKI) -> AsyncIterator[Engine]:
    async with running_engine(load_config(profile_config(tmp_path, pki, 443), env={})) as engine:
        yield engine


def job(port: int, **fields: Any) -> Job:
    """A POST with a body, three attempts and a ten-second timeout, unless ``fields`` differ."""
    base = {"method": "POST", "body": "{}", "max_attempts": 3, "timeout": 10}
    return make_job("answer-1", port, "/orders", **(base | fields))


async def run(engine: Engine, pki: PKI, answer: Answer, **fields: Any) -> tuple[Result, int]:
    """The job's result and how many times its request reached the peer."""
    peer = CountingPeer(answer, server_context(pki))
    async with peer as port:
        result = await asyncio.wait_for(engine.run(job(port, **fields)), 60)
    return result, peer.requests


def kind(result: Result) -> str | None:
    return result.error.kind if result.error else None


# -- the head's bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(OK_HEAD + b"X-Big: " + b"a" * (1 << 20) + b"\r\n", id="one 1 MiB header"),
        pytest.param(OK_HEAD + headers(1000, 1), id="1000 headers"),
        pytest.param(OK_HEAD + headers(MAX_HEADERS - 5, 10_000), id="1 MiB in 95 headers"),
        pytest.param(b"HTTP/1.1 200 " + b"O" * 20_000 + b"\r\n", id="a 20 KB status line"),
    ],
)
async def test_a_head_over_the_bounds_is_response_too_large_and_sent_once(
    engine: Engine, pki: PKI, head: bytes
) -> None:
    result, requests = await run(engine, pki, sends(head + b"Content-Length: 0\r\n\r\n"))
    assert (kind(result), result.attempts, requests) == ("response_too_large", 1, 1), result
    assert result.error is not None and "not retried" in result.error.message
    assert "bounds" in result.error.message or "bytes of headers" in result.error.message
    for quoted in (b"a" * 8, b"v" * 8, b"O" * 8):  # none of the server's bytes in the message
        assert quoted.decode() not in result.error.message
    assert result.status is None and result.headers == {}


async def test_a_generous_head_within_the_bounds_is_read(engine: Engine, pki: PKI) -> None:
    big = b"X-Policy: " + b"p" * (MAX_FIELD - 100) + b"\r\n"
    head = OK_HEAD + headers(MAX_HEADERS - 10, 100) + big + b"Content-Length: 2\r\n\r\nok"
    result, requests = await run(engine, pki, sends(head))
    assert (result.state, result.status, result.body, requests) == ("processed", 200, "ok", 1)
    assert len(result.headers["X-Policy"]) == MAX_FIELD - 100


# -- retried only while no byte of an answer came -------------------------------------------------


CUT_OFF = [
    pytest.param(sends(b"HTTP/1.1 200 OK\r\n"), id="closed after the status line"),
    pytest.param(sends(b"HTTP/1.1 20"), id="closed inside the status line"),
    pytest.param(sends(OK_HEAD + b"X-A: b\r\nX-B"), id="closed inside the headers"),
    pytest.param(sends_then_resets(b"HTTP/1.1 200 OK\r\n"), id="reset after the status line"),
    pytest.param(sends(OK_HEAD + b"Content-Length: 100\r\n\r\nabc"), id="closed mid-body"),
    pytest.param(
        sends(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nab"), id="closed mid-chunk"
    ),
    pytest.param(sends_then_resets(OK_HEAD + b"Content-Length: 9\r\n\r\nab"), id="reset mid-body"),
    pytest.param(sends(b"HTXP/1.1 200 OK\r\n\r\n"), id="not HTTP"),
    pytest.param(
        sends(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n"), id="bad chunk size"
    ),
]


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("answer", CUT_OFF)
async def test_an_answer_cut_off_or_malformed_is_bad_response_and_sent_once(
    engine: Engine, pki: PKI, answer: Answer, method: str
) -> None:
    """GET too: aiohttp retries a dropped idempotent request on its own, unless told otherwise."""
    body = {"body": "{}"} if method == "POST" else {"body": None}
    result, requests = await run(engine, pki, answer, method=method, **body)
    assert (kind(result), result.attempts, requests) == ("bad_response", 1, 1), result
    assert result.error is not None
    assert "not retried" in result.error.message and "alpha.test" in result.error.message


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(sends_then_stalls(b"HTTP/1.1 200 OK\r\n"), id="after the status line"),
        pytest.param(sends_then_stalls(b"H"), id="after one byte"),
        pytest.param(sends_then_stalls(OK_HEAD + b"Content-Length: 100\r\n\r\nabc"), id="mid-body"),
    ],
)
async def test_a_timeout_after_the_first_byte_is_not_retried(
    engine: Engine, pki: PKI, answer: Answer
) -> None:
    result, requests = await run(engine, pki, answer, timeout=0.5, method="GET", body=None)
    assert (kind(result), result.attempts, requests) == ("timeout", 1, 1), result
    assert result.error is not None and "started answering" in result.error.message


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param(sends(b""), "connect", id="closed without a byte"),
        pytest.param(sends_then_resets(b""), "connect", id="reset without a byte"),
        pytest.param(sends_then_stalls(b""), "timeout", id="no byte within the timeout"),
    ],
)
async def test_without_a_byte_of_an_answer_the_request_is_retried(
    engine: Engine, pki: PKI, answer: Answer, expected: str
) -> None:
    result, requests = await run(engine, pki, answer, timeout=0.5)
    assert (kind(result), result.attempts, requests) == (expected, 3, 3), result


# -- requests aiohttp will not build --------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"headers": {"X-A": "a\x00b"}}, "headers", id="NUL in a value"),
        pytest.param({"headers": {"X-A": "a\r\nX-Injected: 1"}}, "headers", id="CRLF in a value"),
        pytest.param({"headers": {"X\x00A": "a"}}, "headers", id="NUL in a name"),
        pytest.param({"headers": {"X-A": "\x7f"}}, "headers", id="DEL in a value"),
        pytest.param({"method": "GE T"}, "method", id="space in the method"),
        pytest.param({"method": "G\x00T"}, "method", id="NUL in the method"),
    ],
)
async def test_a_request_aiohttp_will_not_build_is_invalid_job(
    engine: Engine, pki: PKI, change: dict[str, Any], field: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The job is built past validation (as one from an older agent's queue might be)."""
    peer = CountingPeer(sends(OK_HEAD + b"Content-Length: 0\r\n\r\n"), server_context(pki))
    async with peer as port:
        bad = dataclasses.replace(job(port), **change)
        result = await asyncio.wait_for(engine.run(bad), 60)
    assert (kind(result), result.attempts, peer.requests) == ("invalid_job", 1, 0), result
    assert result.error is not None and f"job field {field!r}" in result.error.message
    assert "cannot classify" not in caplog.text and "Traceback" not in caplog.text


async def test_an_endpoint_port_out_of_range_is_invalid_job(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    bad = dataclasses.replace(job(443), endpoint="https://alpha.test:99999/")
    result = await engine.run(bad)
    assert (kind(result), result.attempts) == ("invalid_job", 1), result
    assert result.error is not None and "job field 'endpoint'" in result.error.message
    assert "unexpected failure" not in caplog.text


# -- a 400 about the client certificate -----------------------------------------------------------


@pytest.fixture
async def nginx_engine(tmp_path: Path, server_pki: ServerPKI) -> AsyncIterator[Engine]:
    extra = {f"{P}.nocert.truststore": str(server_pki.ca_pem)}  # trusts nginx, presents nothing
    async with running_engine(tls_config(tmp_path, server_pki, **extra)) as engine:
        yield engine


async def nginx_call(engine: Engine, port: int, profile: str) -> Result:
    fields = {"id": "h", "topic": "RESTProbe", "protocol_profile": profile}
    endpoint = f"https://alpha.test:{port}/echo"
    return await engine.run(Job.from_dict(fields | {"endpoint": endpoint}))


@pytest.mark.parametrize(
    ("profile", "page", "advice"),
    [
        ("nocert", "No required SSL certificate was sent", f"{P}.nocert.path is not set"),
        ("stranger", "The SSL certificate error", f"{P}.stranger.path"),
    ],
)
async def test_a_400_about_the_client_certificate_carries_a_hint(
    nginx_engine: Engine, nginx_ports: NginxPorts, profile: str, page: str, advice: str
) -> None:
    result = await nginx_call(nginx_engine, nginx_ports.plain, profile)
    assert (result.state, result.status, result.error) == ("processed", 400, None)
    assert page in (result.body or "")
    assert result.hint is not None and result.hint.startswith("the server answered 400")
    assert advice in result.hint
    if profile == "stranger":
        assert "CN=stranger" in result.hint and "trusts its issuer" in result.hint
    assert result.to_dict()["hint"] == result.hint
    assert Result.from_dict(result.to_dict()).hint == result.hint  # as the queues store it


async def test_an_ordinary_400_has_no_hint(nginx_engine: Engine, nginx_ports: NginxPorts) -> None:
    result = await nginx_call(nginx_engine, nginx_ports.plain, "one")  # a trusted client cert
    assert (result.status, result.hint) == (200, None)
    endpoint = f"https://alpha.test:{nginx_ports.plain}/status/400"
    fields = {"id": "h", "topic": "RESTProbe", "endpoint": endpoint, "protocol_profile": "one"}
    result = await nginx_engine.run(Job.from_dict(fields))
    assert (result.state, result.status, result.hint) == ("processed", 400, None)
    assert result.to_dict()["hint"] is None
