"""Addresses and networks as config.xml writes them (``agent.outbound.allow``). Pure parsing."""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_of(text: str) -> Address | None:
    """The address written in ``text`` (brackets and a zone allowed), None when it is a name."""
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def network_of(entry: str) -> Network | None:
    """The entry as a network, None when it is a host glob; ValueError for a malformed CIDR.

    config.xml's ``agent.outbound.allow`` is checked with this when it is read, naming the line;
    the allow-list (``agent.http.allowlist``) is built from the same entries."""
    if "/" not in entry and address_of(entry) is None:
        return None
    try:
        return ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        raise ValueError(
            f"{entry!r} is neither a host name pattern nor a network such as 10.0.0.0/8"
        ) from None
