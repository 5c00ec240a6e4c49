"""HTTP transport: one aiohttp session per credential identity, a resolver honouring
``agent.resolve``, retirement of sessions whose material was rotated, bounds on an answer's head,
and a watch on whether a failed request's answer had started.

Keeping a connector per identity means a kept-alive connection opened with one client
certificate and trust store can only ever serve jobs of that identity (the pool key inside a
connector also holds the SSL context and the SNI name, so SNI variants stay apart too). A retired
identity's session is never handed out again and is closed once its last request finishes.

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
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
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

log = logging.getLogger("agent.transport")

# Identities (profiles, inline records) with a session and kept-alive connections at once. Each
# costs some 60 KiB (OpenSSL and buffers); beyond this many in rotation, the least recently used
# idle ones are closed and reconnect when next used.
MAX_SESSIONS = 256

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


class _Entry:
    def __init__(self, session: aiohttp.ClientSession, network: Network) -> None:
        self.session = session
        self.network = network
        self.in_flight = 0
        self.retired = False


class Transport:
    """Sessions keyed by identity; ``retire(key)`` stops handing one out and closes it when idle.

    It keeps no configuration: each ``acquire`` names the network its session must use, and a
    session built for another network is never handed out for it.
    """

    def __init__(self) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self.max_sessions = MAX_SESSIONS
        self._closing: set[asyncio.Task[None]] = set()
        self.on_connection: list[Callable[[bool], None]] = []  # called with new=True/False
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
            limit=0,
            resolver=AllowingResolver(StaticResolver(network.resolve), network.allow),
            ttl_dns_cache=10,
            enable_cleanup_closed=False,
            keepalive_timeout=30,
        )
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            trust_env=False,
            skip_auto_headers=("User-Agent",),
            headers={"User-Agent": "mtls-forwarding-agent"},
            response_class=WatchedResponse,
            max_line_size=MAX_STATUS_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
        )

    def acquire(self, key: str, network: Network) -> _Entry:
        """The session for ``key`` on ``network``, counted in use until ``release``: a retired
        one is closed only after its last request."""
        entry = self._entries.get(key)
        if entry is not None and entry.network is not network:
            self.retire(key)  # built under another state's network: never reused for this one
            entry = None
        if entry is None or entry.retired:
            entry = _Entry(self._new_session(network), network)
            self._entries[key] = entry
            if len(self._entries) > self.max_sessions:
                self._evict_idle()
        else:
            self._entries.move_to_end(key)
        entry.in_flight += 1
        return entry

    def release(self, entry: _Entry) -> None:
        entry.in_flight -= 1
        if entry.retired and entry.in_flight == 0:
            self._close_later(entry)

    @asynccontextmanager
    async def session(
        self, key: str, network: Network | None = None
    ) -> AsyncIterator[aiohttp.ClientSession]:
        entry = self.acquire(key, network or _DIRECT)
        try:
            yield entry.session
        finally:
            self.release(entry)

    @property
    def identities(self) -> list[str]:
        """Keys with a session, least recently used first."""
        return list(self._entries)

    def _evict_idle(self) -> None:
        """Over ``max_sessions``: close the least recently used idle sessions (and their kept-
        alive connections), so memory stays bounded however many identities are in use."""
        excess = len(self._entries) - self.max_sessions
        for key in [k for k, e in self._entries.items() if e.in_flight == 0][:excess]:
            self.retire(key)

    def retire(self, key: str) -> None:
        """Never hand out ``key``'s session again; close it once its requests finish."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        entry.retired = True
        if entry.in_flight == 0:
            self._close_later(entry)

    def retire_all(self) -> None:
        for key in list(self._entries):
            self.retire(key)

    def _close_later(self, entry: _Entry) -> None:
        task = asyncio.get_running_loop().create_task(entry.session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        self.retire_all()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


_DIRECT = Network()


def tls_details(protocol: object | None, base: TLSInfo) -> TLSInfo:
    """``base`` with what the connection's handshake settled: version, cipher, server subject."""
    transport = getattr(protocol, "transport", None)
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(obj, ssl.SSLObject):
        return base
    cipher = obj.cipher()
    return replace(
        base,
        version=obj.version(),
        cipher=cipher[0] if cipher else None,
        server_certificate=_subject(obj.getpeercert(binary_form=True)),
    )


@functools.lru_cache(maxsize=256)  # the same few server certificates
def _subject(der: bytes | None) -> str | None:
    if not der:
        return None
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def proxy_args(proxy: Any) -> dict[str, Any]:
    """aiohttp request arguments for ``mid.proxy.*`` (None: direct)."""
    if proxy is None:
        return {}
    args: dict[str, Any] = {"proxy": f"http://{proxy.host}:{proxy.port}"}
    if proxy.username:
        auth = aiohttp.encode_basic_auth(proxy.username, proxy.password or "")
        args["proxy_headers"] = {"Proxy-Authorization": auth}
    return args
