"""``agent.outbound.allow``: which destinations jobs may reach. Pure logic, no I/O.

Entries are host globs (``api.example.com``, ``*.partner.example``; ``*`` matches any run of
characters, dots included, and matching ignores case) and networks in CIDR form
(``10.0.0.0/8``, ``127.0.0.1/32``, ``2001:db8::/32``; a bare address means that one address).

The rule, in two steps:

1. **Name check**, before anything else happens for the job (no keystore load, no connection):
   an IP-literal endpoint must lie inside a network entry; a host name must match a host entry.
   When the list holds network entries only, a host name passes this step and step 2 decides;
   through a proxy it does not (the agent cannot see where the proxy connects, so a name must
   be allowed by name).
2. **Address check**, inside the resolver the connections use, so it applies to the address
   actually connected to (``agent.resolve`` entries included): when the list holds network
   entries, resolved addresses outside all of them are dropped, and a name left without any
   address is denied. A name allowed by step 1 therefore cannot lead to another network by
   DNS tricks. With host entries only there is no address check: add the partners' networks
   to get one.

An empty list allows everything. A denied job ends with ``destination_denied`` and a message
naming the host or address and ``agent.outbound.allow``.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from agent.config.networks import Network, address_of, network_of
from agent.errors import ConfigError, DestinationDenied

PARAMETER = "agent.outbound.allow"


def _network(entry: str) -> Network | None:
    try:
        return network_of(entry)
    except ValueError as exc:
        raise ConfigError(str(exc), parameter=PARAMETER) from None


@dataclass(frozen=True)
class AllowList:
    hosts: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        hosts: list[str] = []
        networks: list[Network] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            net = _network(entry)
            if net is None:
                hosts.append(entry.rstrip("."))
            else:
                networks.append(net)
        return cls(tuple(hosts), tuple(networks))

    @property
    def empty(self) -> bool:
        return not self.hosts and not self.networks

    def host_matches(self, host: str) -> bool:
        name = host.lower().rstrip(".")
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.hosts)

    def address_allowed(self, address: str) -> bool:
        """Whether a connection may go to ``address`` (always, without network entries)."""
        if not self.networks:
            return True
        addr = address_of(address)
        if addr is None:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr.version == net.version and addr in net for net in self.networks)

    def check_name(self, host: str, *, proxied: bool = False) -> None:
        """Step 1: raise ``DestinationDenied`` unless ``host`` may be called at all."""
        if self.empty:
            return
        if address_of(host) is not None:
            if self.networks and self.address_allowed(host):
                return
            raise DestinationDenied(
                f"destination {host} is not allowed: the address lies in none of the networks "
                f"of {PARAMETER} ({self.describe()})"
            )
        if self.host_matches(host) or (not self.hosts and not proxied):
            return
        why = "names must match a host entry when a proxy is used" if proxied else ""
        raise DestinationDenied(
            f"destination {host!r} is not allowed: it matches no host entry of {PARAMETER} "
            f"({self.describe()}){'; ' + why if why and not self.hosts else ''}"
        )

    def check_addresses(self, host: str, addresses: list[str]) -> list[str]:
        """Step 2: the addresses of ``host`` a connection may use; none left is denied."""
        if not self.networks:
            return addresses
        kept = [a for a in addresses if self.address_allowed(a)]
        if kept:
            return kept
        shown = ", ".join(addresses) or "no address"
        raise DestinationDenied(
            f"destination {host!r} resolves to {shown}, outside the networks of {PARAMETER} "
            f"({self.describe()}); no connection was made"
        )

    def describe(self) -> str:
        return ", ".join([*self.hosts, *(str(n) for n in self.networks)])


@functools.lru_cache(maxsize=8)
def allow_list(entries: tuple[str, ...]) -> AllowList:
    """The parsed list for ``config.outbound_allow`` (cached: parsed once per configuration)."""
    return AllowList.parse(entries)
