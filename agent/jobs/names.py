"""Checks on names both config.xml and jobs carry: SNI values, HTTP tokens, numeric IPv4 hosts.

Pure functions below every other layer: they raise ``ValueError`` with a message that says what
to write instead, and each caller turns it into its own error (``ConfigError`` naming the
parameter, ``JobError`` naming the field).
"""

from __future__ import annotations

import ipaddress
import re
import socket

# RFC 9110 section 5.6.2: token = 1*tchar
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 1123 host name label: letters, digits, hyphens; no hyphen at either end; 1-63 characters
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
# C0 controls but HTAB, DEL and C1 controls: never in a header value or a URL
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
# Headers that frame the request on the wire (RFC 9110 section 7.6.1, RFC 9112): the agent's
# HTTP client writes them; a job setting them could make one request read as two. Proxy-* too.
FRAMING_HEADERS = frozenset(
    {"transfer-encoding", "content-length", "connection", "keep-alive", "upgrade", "te"}
    | {"trailer", "host"}
)
FRAMING_LIST = (
    "Transfer-Encoding, Content-Length, Connection, Keep-Alive, Upgrade, TE, Trailer, Proxy-*, Host"
)
SHOWN = 80  # characters of a caller's value shown in a message
MAX_HOST_NAME = 253
# words people write for a boolean; ``no`` and ``off`` are valid DNS labels, but nobody means them
BOOLEAN_WORDS = frozenset({"yes", "no", "on", "off", "0", "1", "y", "n", "enabled", "disabled"})

SNI = bool | str | None


def is_token(text: str) -> bool:
    """Whether ``text`` is an RFC 9110 token (a method or a header field name)."""
    return _TOKEN.fullmatch(text) is not None


def show(value: object) -> str:
    """``repr`` of a value cut short: a message never carries a whole body."""
    text = repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control character other than HTAB (CR, LF, NUL, DEL, C1...)."""
    return _CONTROL.search(text) is not None


def header_name_problem(name: str) -> str | None:
    """Why a request may not carry a header ``name`` (not a token, or framing), or None."""
    if not is_token(name):
        return f"{show(name)} is not a header name (RFC 9110: letters, digits, !#$%&'*+-.^_`|~)"
    low = name.lower()
    if low == "host":
        return (
            f"{name!r} cannot be set: the agent sends the endpoint's host (to reach that name at"
            " another address use agent.resolve; to present another TLS name use sni)"
        )
    if low in FRAMING_HEADERS or low.startswith("proxy-"):
        return (
            f"{name!r} frames the request, and the agent does that itself (a job cannot set"
            f" {FRAMING_LIST})"
        )
    return None


def header_value_problem(value: str) -> str | None:
    if has_control(value):
        return (
            "contains a line break or another control character (CR, LF, NUL...); tabs are allowed"
        )
    return None


def sni_value(value: object) -> SNI:
    """A ``sni`` setting: ``True``/``False`` (bools or the words), or a DNS host name to send.

    ``None`` stays ``None`` (not set). Anything else raises ``ValueError``: the boolean-looking
    words (``yes``, ``off``, ``1``...), IP literals (RFC 6066 forbids them in SNI) and names
    that are not RFC 1123 host names.
    """
    if value is None or isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be true, false or a host name, got {value!r}")
    low = value.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in BOOLEAN_WORDS:
        raise ValueError(f"{value!r} is ambiguous: write true or false")
    problem = host_name_problem(low)
    if problem:
        raise ValueError(f"must be true, false or a host name: {value!r} {problem}")
    return low


def host_name_problem(name: str) -> str | None:
    """Why ``name`` (lower case) is not a DNS host name fit for SNI, or None when it is one."""
    if not name:
        return "is empty"
    if not name.isascii():
        return "is not ASCII (write an internationalised name as its xn-- form)"
    if _is_ip_form(name):
        return "is an IP address, which SNI cannot carry (RFC 6066): write a host name or false"
    if len(name) > MAX_HOST_NAME:
        return f"is longer than {MAX_HOST_NAME} characters"
    bad = next((label for label in name.split(".") if not _LABEL.fullmatch(label)), None)
    if bad is None:
        return None
    where = "is not a host name" if bad == name else f"has label {show(bad)}"
    return f"{where}: labels are 1-63 letters, digits or hyphens, no hyphen at either end"


def _is_ip_form(name: str) -> bool:
    if ":" in name or name.startswith("["):
        return True
    last = name.rstrip(".").rpartition(".")[2]
    return _NUMERIC_LABEL.fullmatch(last) is not None


def numeric_host_problem(host: str) -> str | None:
    """Why a URL's host is a numeric IPv4 form other than the canonical ``a.b.c.d``, or None.

    Resolvers (and the WHATWG URL rules) read ``2130706433``, ``0x7f000001``, ``0177.0.0.1``,
    ``127.1`` and ``127.0.0.01`` as addresses; the allow-list and the TLS name check would see
    something else. A host whose last label is numeric must be written canonically.
    """
    low = host.lower().rstrip(".")
    if not low or ":" in low or _NUMERIC_LABEL.fullmatch(low.rpartition(".")[2]) is None:
        return None
    try:
        if str(ipaddress.IPv4Address(low)) == low:
            return None
    except ValueError:
        pass
    try:
        meant = f" (resolvers read it as {socket.inet_ntoa(socket.inet_aton(low))})"
    except OSError:
        meant = ""
    return f"host {host!r} is not a canonical IPv4 address{meant}: write it as a.b.c.d"
