"""What a call needs from the runtime state: identities, SNI policy, network, limits.

``CallState`` is built once per configuration (by the engine's assembly) and never changed; the
caller is handed it with each job, so a job runs start to end on the state it began with.
"""

from __future__ import annotations

import ssl
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from agent.config.config import AgentConfig, ProxyConfig
from agent.http.allowlist import AllowList, allow_list
from agent.http.classify import Attempt
from agent.http.transport import Network
from agent.jobs.results import TLSInfo
from agent.tls.identities import Identities

ROUTES_REMEMBERED = 4096  # endpoint routes kept per state before the least recently used go


@dataclass(frozen=True, slots=True)
class Route:
    """Where a job with a given endpoint and SNI setting goes under one identity, and how.

    The same for every job with that endpoint, so it is worked out once per identity
    (``CallState.routes``) instead of once per job.
    """

    url: str
    host: str
    port: int
    server_hostname: str | None  # an SNI override to send instead of the URL's host
    ssl: ssl.SSLContext
    tls: TLSInfo  # the result's tls block before the handshake adds version, cipher, peer
    attempt: Attempt  # also the advice for a failure, and for an answer about the client cert


@dataclass(frozen=True, slots=True)
class CallState:
    identities: Identities
    sni_enabled: bool  # agent.sni.enabled
    proxy: ProxyConfig | None
    network: Network  # agent.resolve and the allow-list's networks, for the transport
    name_allow: AllowList | None  # agent.outbound.allow, checked by name before anything else
    max_response_bytes: int
    retry: tuple[float, float] = (1.0, 60.0)  # agent.retry.base, agent.retry.max_delay
    # (identity key, endpoint, job SNI) → where and how such a job goes: worked out once
    routes: OrderedDict[tuple[object, ...], Route] = field(default_factory=OrderedDict)

    @property
    def resolve(self) -> Mapping[str, str]:
        return self.network.resolve

    def remember(self, key: tuple[object, ...], route: Route) -> None:
        self.routes[key] = route
        if len(self.routes) > ROUTES_REMEMBERED:
            self.routes.popitem(last=False)


def call_state(config: AgentConfig, identities: Identities) -> CallState:
    """The call's part of the runtime state for ``config``."""
    allow = allow_list(tuple(config.outbound_allow)) if config.outbound_allow else None
    return CallState(
        identities=identities,
        sni_enabled=config.sni_enabled,
        proxy=config.proxy,
        network=Network(
            MappingProxyType(dict(config.resolve)),
            address_allow_list(config),
            max_idle=config.max_idle_connections,
            idle_seconds=config.idle_seconds,
        ),
        name_allow=allow,
        max_response_bytes=config.max_response_bytes,
        retry=(config.retry_base, config.retry_max_delay),
    )


def address_allow_list(config: AgentConfig) -> AllowList | None:
    """The list whose networks bound the addresses connected to; None when there is nothing to
    check or a proxy resolves the names (then only the name check applies)."""
    if not config.outbound_allow or config.proxy is not None:
        return None
    allow = allow_list(tuple(config.outbound_allow))
    return allow if allow.networks else None
