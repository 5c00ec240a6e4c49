"""The one place that reaches into aiohttp's private attributes. Each use says which, and
tests/test_aiohttp_adapter.py fails if an aiohttp release moves one.

- ``TCPConnector._factory`` (and ``_loop``): aiohttp has no public hook for the protocol class;
  every connector builds its connections' protocol from it. The agent's protocol notes that a
  byte of an answer arrived, which decides whether a failed call may be retried.
- ``BaseConnector._conns`` and ``_release``: the idle connections by pool key (a deque of
  protocol and time of last use per key), which aiohttp bounds in time only; the agent also bounds
  their number, and closes an identity's idle connections when its material rotates.
- ``ClientResponse._protocol``: a short answer may be read whole and its connection back in the
  pool before the caller looks; the response still holds the protocol, and through it the TLS
  transport whose handshake the result reports.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest, ConnectionKey
from aiohttp.connector import Connection
from cryptography import x509

from agent.errors import CallError, ErrorKind
from agent.tls.context import pins_of
from agent.tls.handshake import pin_of, verified_chain
from agent.tls.revocation import Outcome, RevocationChecker, RevocationPolicy, revocation_of

log = logging.getLogger("agent.revocation")

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
    pooled = False  # idle in the connector's pool (counted in its ``_idle``)
    pin_checked = False  # the server's key was checked against the context's pins
    revocation: str | None = None  # the revocation check's evidence, once made

    def data_received(self, data: bytes) -> None:
        self.answered = True
        super().data_received(data)


class WatchedConnector(aiohttp.TCPConnector):
    """Connections whose protocol is a ``WatchedHandler``, cleared for each request; at most
    ``max_idle`` idle connections over all pool keys."""

    def __init__(self, *, max_idle: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # aiohttp has no public hook for the protocol class; its connectors all build it here.
        watched = functools.partial(WatchedHandler, loop=self._loop)
        self._factory = cast("functools.partial[ResponseHandler]", watched)
        self.max_idle = max_idle
        self.revocation: RevocationChecker | None = None  # set by the transport
        # Idle connections, counted as they enter and leave the pool: an upper bound, since
        # aiohttp drops expired ones unseen; recounted (one pass over the pool) when over the
        # bound, so a release costs the same with 1 identity as with 10,000.
        self._idle = 0

    def _release(
        self, key: ConnectionKey, protocol: ResponseHandler, *, should_close: bool = False
    ) -> None:
        super()._release(key, protocol, should_close=should_close)
        conns = self._conns.get(key)
        if not conns or conns[-1][0] is not protocol:
            return  # closed, not kept
        if isinstance(protocol, WatchedHandler):
            protocol.pooled = True
        if protocol._payload is not None and protocol._payload.is_eof():
            protocol._payload = None  # the last answer's reader, read to its end: 1.7 KiB idle
        self._idle += 1
        if self._idle > self.max_idle:
            self._idle = self.idle_count()  # the true count, now and then
            if self._idle > self.max_idle:
                self._close_oldest(self._idle - self.max_idle // 2)

    def idle_count(self) -> int:
        return sum(len(conns) for conns in self._conns.values())

    def _close_oldest(self, count: int) -> None:
        """Close the ``count`` idle connections used least recently (down to half the bound,
        so the count is not taken again on every release)."""
        idle = sorted(
            (used, id(proto), key, proto)
            for key, conns in self._conns.items()
            for proto, used in conns
        )
        doomed = {id(proto) for _, _, _, proto in idle[:count]}
        self._drop(lambda key, proto: id(proto) in doomed)

    def close_idle(self, contexts: set[ssl.SSLContext]) -> None:
        """Close the idle connections made with any of ``contexts``."""
        self._drop(lambda key, proto: key.ssl in contexts)

    def _drop(self, doomed: Callable[[ConnectionKey, ResponseHandler], bool]) -> None:
        for key in list(self._conns):
            conns = self._conns[key]
            kept = deque((p, t) for p, t in conns if not doomed(key, p))
            for proto, _ in conns:
                if doomed(key, proto):
                    proto.close()
            if kept:
                self._conns[key] = kept
            else:
                del self._conns[key]
        self._idle = self.idle_count()

    async def connect(
        self, req: ClientRequest, traces: list[Any], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        conn = await super().connect(req, traces, timeout)
        if isinstance(proto := conn.protocol, WatchedHandler):
            proto.answered = False
            if proto.pooled:  # taken from the pool
                proto.pooled = False
                self._idle -= 1
            pinned = pins_of(req.ssl)
            if pinned is not None and not proto.pin_checked:
                _check_pin(conn, pinned, f"{req.url.host}:{req.url.port}")
                proto.pin_checked = True  # a kept-alive connection is checked once
            policy = revocation_of(req.ssl)
            if policy is not None and proto.revocation is None and self.revocation is not None:
                where = f"{req.url.host}:{req.url.port}"
                proto.revocation = await _check_revocation(conn, self.revocation, policy, where)
        return conn


def _ssl_object(conn: Connection) -> ssl.SSLObject | None:
    """The TLS side of a connection just made (None: not TLS, or already gone)."""
    transport = conn.transport
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    return obj if isinstance(obj, ssl.SSLObject) else None


def _check_pin(conn: Connection, pinned: tuple[frozenset[str], str], where: str) -> None:
    """After the handshake, before any byte of the request: the server's key must be pinned."""
    pins, parameter = pinned
    obj = _ssl_object(conn)
    der = obj.getpeercert(binary_form=True) if obj is not None else None
    seen = pin_of(x509.load_der_x509_certificate(der)) if der else None
    if seen in pins:
        return
    conn.close()
    raise CallError(
        ErrorKind.CERTIFICATE_PIN,
        f"{where} presented the key pin {seen}, which is not among the {len(pins)} pin(s) of "
        f"{parameter}; if the partner changed its key, confirm the new pin with them and add it "
        "(agent sni-check prints a server's pin)",
    )


async def _check_revocation(
    conn: Connection, checker: RevocationChecker, policy: RevocationPolicy, where: str
) -> str:
    """After the handshake, before any byte of the request: is the server's certificate
    revoked? Returns the evidence for the result; raises when the call must not go on."""
    obj = _ssl_object(conn)
    chain = verified_chain(obj) if obj is not None else []
    if not chain:
        outcome = Outcome("unknown", "the server's certificate could not be read")
    else:
        outcome = await checker.check(chain[0], chain[1] if len(chain) > 1 else None, policy)
    if outcome.status == "good":
        return outcome.evidence(policy.mode)
    if outcome.status == "revoked":
        conn.close()
        when = f" on {outcome.revoked_at:%Y-%m-%d %H:%M} UTC" if outcome.revoked_at else ""
        raise CallError(
            ErrorKind.CERTIFICATE_REVOKED,
            f"{where}: the server's certificate (serial {chain[0].serial_number:x}, "
            f"{chain[0].subject.rfc4514_string()}) was revoked{when}, says {outcome.source}; "
            "the partner must replace it",
        )
    if policy.mode == "hard":
        conn.close()
        raise CallError(
            ErrorKind.REVOCATION_UNKNOWN,
            f"{where}: cannot tell whether the server's certificate is revoked ({outcome.source});"
            f" {policy.parameter}=hard refuses the call (soft would go on with a warning)",
        )
    checker.soft_failed()
    log.warning(
        "%s: cannot tell whether the server's certificate is revoked (%s); %s=soft goes on",
        where,
        outcome.source,
        policy.parameter,
    )
    return outcome.evidence(policy.mode)


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
