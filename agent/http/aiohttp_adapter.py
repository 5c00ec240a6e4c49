"""The one place that reaches into aiohttp's private attributes. Each use says which, and
tests/test_aiohttp_adapter.py fails if an aiohttp release moves one.

- ``TCPConnector._factory`` (and ``_loop``): aiohttp has no public hook for the protocol class;
  every connector builds its connections' protocol from it. The agent's protocol notes that a
  byte of an answer arrived, which decides whether a failed call may be retried.
- ``ClientResponse._protocol``: a short answer may be read whole and its connection back in the
  pool before the caller looks; the response still holds the protocol, and through it the TLS
  transport whose handshake the result reports.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any, cast

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection

_ANSWERED: contextvars.ContextVar[bool] = contextvars.ContextVar("answered", default=False)


def answer_started() -> bool:
    """Whether the calling task's request that just failed had started to get its answer.
    Reading clears it, for the next attempt."""
    if _ANSWERED.get():
        _ANSWERED.set(False)
        return True
    return False


def mark_answered() -> None:
    """The calling task's request failed after its answer had started (e.g. reading the body)."""
    _ANSWERED.set(True)


class AnswerCutOff(aiohttp.ClientPayloadError):
    """The connection ended, or failed, after the answer had started. Not a disconnect that
    aiohttp retries on its own: the request may have had effects."""


class WatchedHandler(ResponseHandler):
    """aiohttp's protocol, noting that a byte of an answer arrived."""

    answered = False

    def data_received(self, data: bytes) -> None:
        self.answered = True
        super().data_received(data)


class WatchedConnector(aiohttp.TCPConnector):
    """Connections whose protocol is a ``WatchedHandler``, cleared for each request."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # aiohttp has no public hook for the protocol class; its connectors all build it here.
        watched = functools.partial(WatchedHandler, loop=self._loop)
        self._factory = cast("functools.partial[ResponseHandler]", watched)

    async def connect(
        self, req: ClientRequest, traces: list[Any], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        conn = await super().connect(req, traces, timeout)
        if isinstance(proto := conn.protocol, WatchedHandler):
            proto.answered = False
        return conn


class WatchedResponse(aiohttp.ClientResponse):
    """Reading the status line and headers: a failure after the answer had started marks the
    task, and a disconnect then is not left for aiohttp to retry."""

    async def start(self, connection: Connection) -> aiohttp.ClientResponse:
        proto = connection.protocol
        try:
            return await super().start(connection)
        except BaseException as exc:
            if isinstance(proto, WatchedHandler) and proto.answered:
                _ANSWERED.set(True)
                if isinstance(exc, (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
                    raise AnswerCutOff(f"connection lost during the answer: {exc!r}") from exc
            raise


def protocol_of(resp: aiohttp.ClientResponse) -> object | None:
    """The connection's protocol object. A short answer may already be read and its connection
    back in the pool: the protocol (kept by the response) still holds the TLS transport."""
    conn = resp.connection
    return conn.protocol if conn is not None else getattr(resp, "_protocol", None)
