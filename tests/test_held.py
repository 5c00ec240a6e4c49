"""What a hostile job could not do, kept so: through ``agent call`` against real TLS servers.

- a redirect is answered, not followed;
- an answer of 100 MB, or a gzip body that inflates to 1 GiB, stops at
  ``agent.max_response_bytes`` without the agent's memory growing with it;
- the allow-list refuses every spelling of a loopback address when loopback is not allowed,
  with no connection made.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.cli import agent_cmd
from tests.support.configs import profile_config
from tests.support.pki import PKI

LIMIT = 1024 * 1024  # agent.max_response_bytes in these tests
BIG = 100 * 1024 * 1024
INFLATED = 1024 * 1024 * 1024
CHUNK = 64 * 1024
MEMORY_SLACK = 32 * 1024 * 1024  # peak RSS may exceed a small call's by this much, not by 100 MB


def _bomb() -> list[bytes]:
    """A gzip stream of 1 GiB of zeros (about 1 MB), in pieces."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1024 * 1024)
    pieces = [packer.compress(zeros) for _ in range(INFLATED // len(zeros))]
    pieces.append(packer.flush())
    return [p for p in pieces if p]


class Partner:
    """An HTTPS server requiring a client certificate; counts requests by path."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.requests: Counter[str] = Counter()
        self.port = 0
        self.bomb = _bomb()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            self.requests[path] += 1
            await self.answer(path, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the agent hung up at its limit: expected
        finally:
            writer.close()

    async def answer(self, path: str, writer: asyncio.StreamWriter) -> None:
        if path == "/redirect":
            writer.write(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n")
        elif path == "/big":
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n".encode())
            zeros = bytes(CHUNK)
            for _ in range(BIG // CHUNK):
                writer.write(zeros)
                await writer.drain()
        elif path == "/bomb":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
                b"Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for piece in self.bomb:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()


@pytest.fixture
async def partner(tmp_path: Path, pki: PKI) -> AsyncIterator[Partner]:
    pki.alpha.write_pem(tmp_path, "alpha")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "alpha.crt", tmp_path / "alpha.key")
    context.load_verify_locations(pki.write_ca(tmp_path))
    context.verify_mode = ssl.CERT_REQUIRED
    server = Partner(context)
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=context)
    server.port = listening.sockets[0].getsockname()[1]
    async with listening:
        yield server


MEASURE = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stdout.write(done.stdout)\n"
    "sys.stderr.write(done.stderr)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr)\n"
    "sys.exit(done.returncode)\n"
)


async def call(config: Path, endpoint: str) -> tuple[dict[str, object], int]:
    """``agent call`` of one job; its result and the agent process's peak RSS in bytes."""
    job = {"topic": "RESTProbe", "endpoint": endpoint, "protocol_profile": "partner"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        MEASURE,
        *agent_cmd("-c", str(config), "call", "-"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(job).encode()), 120)
    peak = int(err.decode().strip().splitlines()[-1])
    return json.loads(out), peak


async def test_a_redirect_is_answered_not_followed(tmp_path: Path, pki: PKI, partner: Partner):
    config = profile_config(tmp_path, pki, partner.port)
    result, _ = await call(config, f"https://alpha.test:{partner.port}/redirect")
    assert (result["state"], result["status"]) == ("processed", 302), result
    headers = result["headers"]
    assert isinstance(headers, dict) and headers["Location"] == "/elsewhere"
    assert partner.requests == {"/redirect": 1}


@pytest.mark.parametrize("path", ["/big", "/bomb"])
async def test_a_huge_answer_stops_at_the_limit_in_bounded_memory(
    tmp_path: Path, pki: PKI, partner: Partner, path: str
) -> None:
    config = profile_config(tmp_path, pki, partner.port, **{"agent.max_response_bytes": str(LIMIT)})
    small, baseline = await call(config, f"https://alpha.test:{partner.port}/small")
    assert small["status"] == 200, small
    result, peak = await call(config, f"https://alpha.test:{partner.port}{path}")
    error = result["error"]
    assert isinstance(error, dict) and error["kind"] == "response_too_large", result
    assert "agent.max_response_bytes" in error["message"]
    assert partner.requests[path] == 1  # not retried
    assert peak < baseline + MEMORY_SLACK, (peak, baseline)


class Listener:
    """A plain TCP listener on 127.0.0.1 that counts what connects."""

    def __init__(self) -> None:
        self.accepted = 0

    async def accept(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()


@pytest.mark.parametrize(
    "host",
    [
        "[::ffff:127.0.0.1]",  # an IPv4-mapped IPv6 address
        "localhost",
        "10.0.0.1@127.0.0.1",  # userinfo that looks like an allowed address
        "127.0.0.1.",  # a trailing dot
        "alpha.test",  # an allowed-looking name that agent.resolve maps to loopback
    ],
)
async def test_every_spelling_of_loopback_is_refused_without_a_connection(
    tmp_path: Path, pki: PKI, host: str
) -> None:
    counting = Listener()
    server = await asyncio.start_server(counting.accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        config = profile_config(
            tmp_path, pki, port, **{"agent.outbound.allow": "*.test,10.0.0.0/8"}
        )
        result, _ = await call(config, f"https://{host}:{port}/echo")
    error = result["error"]
    assert isinstance(error, dict), result
    assert error["kind"] in ("destination_denied", "invalid_job"), result
    assert counting.accepted == 0
