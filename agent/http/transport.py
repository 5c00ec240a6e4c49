"""HTTP transport: one pooled aiohttp session per runtime state, a resolver honouring
``agent.resolve`` and the allow-list, bounds on idle connections and on an answer's head, and a
watch on whether a failed request's answer had started.

The pool is shared by every identity, and safe to share: aiohttp's pool key holds the SSL
context and the SNI name, and each identity has contexts of its own, so a kept-alive connection
opened with one client certificate and trust store only ever serves jobs of that identity (and
SNI variants stay apart too). Rotated material makes a new identity with new contexts; the old
one's idle connections are closed (``forget``), its busy ones finish their request and close.

Whether an answer had started decides whether a failed call may be retried: once a byte of the
answer arrived, the request reached the server and may have had effects. Each connection's
protocol notes that a byte arrived (one attribute store per chunk read); the connector clears the
note when it hands the connection to a request. A failure with the note set marks the calling
task (``answer_started``), and is never turned into one of aiohttp's own silent retries.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509

from agent.http.aiohttp_adapter import WatchedConnector, WatchedResponse
from agent.http.allowlist import AllowList
from agent.jobs.results import TLSInfo
from agent.tls.handshake import pin_of
from agent.tls.revocation import RevocationChecker

log = logging.getLogger("agent.transport")

# Idle kept-alive connections, over all identities. Each costs some 50 KiB (OpenSSL's share is
# 29 KiB); beyond this many the least recently used close, and their identity reconnects when
# next used. The defaults of agent.http.max_idle_connections and agent.http.idle_seconds.
MAX_IDLE = 1024  # idle connections kept over all identities
IDLE_SECONDS = 30.0  # an idle connection closes after this long

# What an answer's head may hold. aiohttp's parser enforces the first three and the call checks
# the total (``head_too_large``); an answer beyond them ends with ``response_too_large``. Real
# answers carry a few KiB of headers (nginx's proxy buffer for them is 4-8 KiB).
MAX_STATUS_LINE = 8 * 1024
MAX_FIELD = 16 * 1024  # a header's name, and its value, each
MAX_HEADERS = 100
MAX_HEAD_BYTES = 256 * 1024
# Up to this many headers cannot exceed MAX_HEAD_BYTES, so their total is not counted.
_HEADERS_WITHIN = MAX_HEAD_BYTES // (2 * MAX_FIELD)


def head_too_large(raw_headers: tuple[tuple[bytes, bytes], ...]) -> bool:
    """More header bytes than MAX_HEAD_BYTES (only counted when there are enough headers)."""
    if len(raw_headers) <= _HEADERS_WITHIN:
        return False
    return sum(len(k) + len(v) for k, v in raw_headers) > MAX_HEAD_BYTES


class StaticResolver(AbstractResolver):
    """``agent.resolve``: fixed name → address entries, the system resolver for the rest."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self.mapping = {k.lower(): v for k, v in mapping.items()}
        self._fallback = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addr = self.mapping.get(host.lower().rstrip("."))
        if addr is None:
            return await self._fallback.resolve(host, port, family)
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        return [
            ResolveResult(
                hostname=host,
                host=addr,
                port=port,
                family=fam,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        await self._fallback.close()


class AllowingResolver(AbstractResolver):
    """``agent.outbound.allow`` step 2: only addresses inside its networks are connected to.

    Wraps the resolver of every connection, so the check applies to the address actually used
    (``agent.resolve`` entries too). Raises ``DestinationDenied`` (not an ``OSError``: aiohttp
    lets it through unchanged, and no connection is attempted).
    """

    def __init__(self, inner: AbstractResolver, allow: AllowList | None) -> None:
        self.inner = inner
        self.allow = allow

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        allow = self.allow
        if allow is None or not allow.networks:
            return results
        kept = set(allow.check_addresses(host, [r["host"] for r in results]))
        return [r for r in results if r["host"] in kept]

    async def close(self) -> None:
        await self.inner.close()


@dataclass(frozen=True, slots=True)
class Network:
    """Where a state's connections may go and how names resolve: ``agent.resolve`` and the
    allow-list whose networks bound the addresses (None: no address check, none set or a proxy
    resolves the names)."""

    resolve: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    allow: AllowList | None = None
    max_idle: int = MAX_IDLE  # agent.http.max_idle_connections
    idle_seconds: float = IDLE_SECONDS  # agent.http.idle_seconds


class _Pool:
    """One network's session: a single connector whose pool holds every identity's connections."""

    def __init__(self, session: aiohttp.ClientSession, network: Network) -> None:
        self.session = session
        self.network = network
        self.in_flight = 0
        self.retired = False

    @property
    def connector(self) -> WatchedConnector:
        connector = self.session.connector
        assert isinstance(connector, WatchedConnector)
        return connector


class Transport:
    """The agent's connections: one pooled session per network (a runtime state's
    ``agent.resolve`` and allow-list), shared by all the state's identities.

    aiohttp pools connections under a key that holds the SSL context and the SNI name, and
    every identity has SSL contexts of its own, so a connection opened with one client
    certificate and trust store only ever serves jobs of that identity. Idle connections are
    bounded in number (the network's ``max_idle``, the least recently used close first) and in
    time (``idle_seconds``), not by identity: as many identities as the bound allows keep their
    connections warm. It keeps no configuration: each ``acquire`` names the network its session
    must use.
    """

    def __init__(self) -> None:
        self._current: Network | None = None  # the network of the state in force
        self._pools: dict[int, _Pool] = {}  # by id of their network (each pool holds it)
        self._closing: set[asyncio.Task[None]] = set()
        self.on_connection: list[Callable[[bool], None]] = []  # called with new=True/False
        self.on_revocation_unknown: list[Callable[[], None]] = []  # a soft check went on blind
        self._seen: weakref.WeakKeyDictionary[object, TLSInfo] = weakref.WeakKeyDictionary()

    def observe(self, protocol: object | None, base: TLSInfo) -> TLSInfo:
        """The result's tls block for a request that went out on ``protocol``'s connection,
        and count that connection as new (a TLS handshake) or reused.

        Connections are told apart by their protocol object, remembered weakly with their TLS
        details: a connection belongs to one identity and one SNI name (aiohttp's pool key), so
        ``base`` is the same on every request it carries, and the handshake's version, cipher
        and server certificate are read once per connection. This costs a dictionary lookup per
        request; aiohttp's tracing hooks counted connections at about a tenth of the client's
        throughput.
        """
        if protocol is None:
            return base
        info = self._seen.get(protocol)
        new = info is None
        if info is None:
            info = tls_details(protocol, base)
            self._seen[protocol] = info
        if self.on_connection:
            self._connection_event(new)
        return info

    def _connection_event(self, new: bool) -> None:
        for listener in self.on_connection:
            try:
                listener(new)
            except Exception:  # noqa: BLE001 - a metrics listener must not fail a call
                log.exception("connection listener failed")

    def _new_session(self, network: Network) -> aiohttp.ClientSession:
        connector = WatchedConnector(
            max_idle=network.max_idle,
            limit=0,
            resolver=AllowingResolver(StaticResolver(network.resolve), network.allow),
            ttl_dns_cache=10,
            enable_cleanup_closed=False,
            keepalive_timeout=network.idle_seconds,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            trust_env=False,
            skip_auto_headers=("User-Agent",),
            headers={"User-Agent": "mtls-forwarding-agent"},
            response_class=WatchedResponse,
            # One session serves every job: a cookie a partner set answering one job must not
            # go out with the next (another team's, perhaps). A job's own Cookie header goes.
            cookie_jar=aiohttp.DummyCookieJar(),
            max_line_size=MAX_STATUS_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
        )
        checker = RevocationChecker(functools.partial(_fetch, session))
        checker.on_soft_failure = self.on_revocation_unknown
        connector.revocation = checker
        return session

    def use(self, network: Network) -> None:
        """``network`` is the state in force from now on. The sessions of other networks close
        once the requests still running on them (jobs of an earlier state) finish."""
        self._current = network
        for pool in list(self._pools.values()):
            if pool.network is not network:
                self._retire(pool)

    def acquire(self, network: Network) -> _Pool:
        """The session for ``network``, counted in use until ``release``. Sessions are never
        shared between networks; one for a network no longer in force closes after its last
        request."""
        pool = self._pools.get(id(network))
        if pool is None or pool.network is not network:
            pool = _Pool(self._new_session(network), network)
            self._pools[id(network)] = pool
            if self._current is not None and network is not self._current:
                pool.retired = True  # a job of an earlier state, retrying: close when done
        pool.in_flight += 1
        return pool

    def release(self, pool: _Pool) -> None:
        pool.in_flight -= 1
        if pool.retired and pool.in_flight == 0:
            self._close_later(pool)

    @asynccontextmanager
    async def session(self, network: Network | None = None) -> AsyncIterator[aiohttp.ClientSession]:
        pool = self.acquire(network or _DIRECT)
        try:
            yield pool.session
        finally:
            self.release(pool)

    @property
    def idle_connections(self) -> int:
        return sum(pool.connector.idle_count() for pool in self._pools.values())

    def forget(self, contexts: Iterable[ssl.SSLContext]) -> None:
        """An identity no new job will use (rotated material, an evicted inline record): close
        its idle connections now rather than when they time out."""
        wanted = set(contexts)
        for pool in self._pools.values():
            pool.connector.close_idle(wanted)

    def _retire(self, pool: _Pool) -> None:
        if not pool.retired:
            pool.retired = True
        if pool.in_flight == 0:
            self._close_later(pool)

    def _close_later(self, pool: _Pool) -> None:
        if self._pools.get(id(pool.network)) is pool:
            del self._pools[id(pool.network)]
        task = asyncio.get_running_loop().create_task(pool.session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for pool in list(self._pools.values()):
            self._retire(pool)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


_DIRECT = Network()
MAX_REVOCATION_ANSWER = 10 * 1024 * 1024  # a CRL or OCSP answer larger than this is refused
REVOCATION_TIMEOUT = 10.0  # seconds for one CRL or OCSP request


async def _fetch(session: aiohttp.ClientSession, url: str, ocsp_request: bytes | None) -> bytes:
    """A CRL (GET) or an OCSP answer (POST), through the session's resolver and allow-list."""
    timeout = aiohttp.ClientTimeout(total=REVOCATION_TIMEOUT)
    if ocsp_request is None:
        call = session.get(url, timeout=timeout)
    else:
        headers = {"Content-Type": "application/ocsp-request"}
        call = session.post(url, data=ocsp_request, headers=headers, timeout=timeout)
    async with call as resp:
        if resp.status != 200:
            raise ValueError(f"answered HTTP {resp.status}")
        data = await resp.content.read(MAX_REVOCATION_ANSWER + 1)
        if len(data) > MAX_REVOCATION_ANSWER:
            raise ValueError(f"answer over {MAX_REVOCATION_ANSWER // (1024 * 1024)} MiB")
        return data


def tls_details(protocol: object | None, base: TLSInfo) -> TLSInfo:
    """``base`` with what the connection's handshake settled: version, cipher, the server's
    subject and key pin, the address connected to."""
    transport = getattr(protocol, "transport", None)
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    if transport is None or not isinstance(obj, ssl.SSLObject):
        return base
    cipher = obj.cipher()
    peer = transport.get_extra_info("peername")
    address = None
    if isinstance(peer, tuple) and len(peer) >= 2:
        address = f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
    subject, pin = _server(obj.getpeercert(binary_form=True))
    revocation = getattr(protocol, "revocation", None)
    return replace(
        base,
        revocation=revocation or base.revocation,
        version=obj.version(),
        cipher=cipher[0] if cipher else None,
        server_certificate=subject,
        server_pin=pin,
        address=address,
    )


@functools.lru_cache(maxsize=256)  # the same few server certificates
def _server(der: bytes | None) -> tuple[str | None, str | None]:
    """The server certificate's subject and its key's pin."""
    if not der:
        return None, None
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.rfc4514_string(), pin_of(cert)


def proxy_args(proxy: Any) -> dict[str, Any]:
    """aiohttp request arguments for ``mid.proxy.*`` (None: direct)."""
    if proxy is None:
        return {}
    args: dict[str, Any] = {"proxy": f"http://{proxy.host}:{proxy.port}"}
    if proxy.username:
        auth = aiohttp.encode_basic_auth(proxy.username, proxy.password or "")
        args["proxy_headers"] = {"Proxy-Authorization": auth}
    return args
