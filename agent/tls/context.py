"""TLS contexts and the SNI policy.

A context is built once per credential identity and never changed afterwards (rotation builds a
new one). SNI has three modes:

- send the URL host (the default): aiohttp passes it as ``server_hostname``;
- send another name: the request's ``server_hostname`` is the override, verified as such;
- send nothing: the context is a ``NoSNIContext``, which drops ``server_hostname`` when wrapping
  the socket (so no server_name extension goes out) and checks the server certificate's names
  against the URL host itself right after the handshake. Turning SNI off never turns off
  verification.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, overload

from cryptography import x509

from agent.credentials.formats import KeyMaterial
from agent.credentials.memory import load_client_material, trust_pem
from agent.tls.systemtrust import system_trust

SNI = bool | str | None


@functools.lru_cache(maxsize=1024)  # asked for every job, of the same few hosts
def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class SNIChoice:
    """What to send and what to verify against, for one request."""

    send: str | None  # the server_name extension, or None for none
    verify_name: str  # the name the server certificate must carry
    source: str  # which setting decided: "job", "profile", "global"


def choose_sni(host: str, *, job: SNI, profile: SNI, global_enabled: bool) -> SNIChoice:
    """Most specific wins: the job's ``sni``, the profile's ``.sni``, the global setting."""
    setting: SNI
    if job is not None:
        setting, source = job, "job"
    elif profile is not None:
        setting, source = profile, "profile"
    else:
        setting, source = global_enabled, "global"
    if isinstance(setting, str):  # a name to send instead, also for an address in the URL
        return SNIChoice(send=setting, verify_name=setting, source=source)
    if is_ip_literal(host):  # an address is never sent as SNI
        return SNIChoice(send=None, verify_name=host, source=source)
    if setting is True:
        return SNIChoice(send=host, verify_name=host, source=source)
    return SNIChoice(send=None, verify_name=host, source=source)


def _dns_match(pattern: str, name: str) -> bool:
    """RFC 6125 matching: exact, or a wildcard that is the whole left-most label."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern == name:
        return True
    if not pattern.startswith("*."):
        return False
    head, _, rest = name.partition(".")
    return bool(head) and rest == pattern[2:] and "." in rest


def certificate_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = list(san.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def name_matches(cert: x509.Certificate, name: str) -> bool:
    """Does the certificate's SAN carry ``name``? No CN fallback."""
    if is_ip_literal(name):
        target = ipaddress.ip_address(name.strip("[]"))
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        return target in san.get_values_for_type(x509.IPAddress)
    return any(_dns_match(p, name) for p in certificate_names(cert) if not is_ip_literal(p))


PEER_CERTS_KEPT = 256  # distinct server certificates whose decoded form is shared
_peer_certs: OrderedDict[bytes, dict[str, Any]] = OrderedDict()


class ClientSSLObject(ssl.SSLObject):
    """The agent's client side of a TLS connection.

    ``getpeercert()`` (the decoded form) gives one dict per distinct server certificate: the
    event loop asks for it after every handshake and keeps it with the connection, about
    2.7 KiB each, which counts with a thousand connections kept to one partner's server. The
    agent itself reads the DER form. Only a verified certificate's dict is shared: an
    unverified one decodes to ``{}``, as always.
    """

    @overload
    def getpeercert(self, binary_form: Literal[False] = False) -> dict[str, Any] | None: ...
    @overload
    def getpeercert(self, binary_form: Literal[True]) -> bytes | None: ...
    @overload
    def getpeercert(self, binary_form: bool) -> dict[str, Any] | bytes | None: ...

    def getpeercert(self, binary_form: bool = False) -> dict[str, Any] | bytes | None:
        der = super().getpeercert(binary_form=True)
        if binary_form or der is None:
            return der
        if self.context.verify_mode == ssl.CERT_NONE:
            return super().getpeercert()  # not verified: {} whatever was seen before
        shared = _peer_certs.get(der)
        if shared is not None:
            _peer_certs.move_to_end(der)
            return shared
        decoded = super().getpeercert()
        if decoded:
            _peer_certs[der] = decoded
            if len(_peer_certs) > PEER_CERTS_KEPT:
                _peer_certs.popitem(last=False)
        return decoded


class ClientContext(ssl.SSLContext):
    """A client context whose connections are ``ClientSSLObject``s."""

    sslobject_class = ClientSSLObject


class _NameCheckingSSLObject(ClientSSLObject):
    """An SSLObject that sent no SNI and checks the peer's names after the handshake."""

    expected_name: str | None = None

    def do_handshake(self) -> None:
        super().do_handshake()
        if self.expected_name is None:
            return
        der = self.getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der) if der else None
        if cert is None or not name_matches(cert, self.expected_name):
            names = ", ".join(certificate_names(cert)) if cert else "none"
            err = ssl.SSLCertVerificationError(
                1,
                f"hostname mismatch, certificate is not valid for '{self.expected_name}' "
                f"(certificate names: {names})",
            )
            err.verify_code = 62  # X509_V_ERR_HOSTNAME_MISMATCH
            err.verify_message = "Hostname mismatch"
            raise err


class NoSNIContext(ClientContext):
    """A client context that never sends SNI but still verifies the server's name."""

    sslobject_class = _NameCheckingSSLObject

    def wrap_bio(  # type: ignore[override]
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        obj = super().wrap_bio(incoming, outgoing, server_side, None, session)
        if not server_side:
            assert isinstance(obj, _NameCheckingSSLObject)
            obj.expected_name = server_hostname
        return obj

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        raise NotImplementedError("NoSNIContext is for asyncio connections only")


def build_context(
    client: KeyMaterial | None,
    trust: tuple[x509.Certificate, ...] | None,
    *,
    send_sni: bool = True,
) -> ssl.SSLContext:
    """A client context presenting ``client`` and trusting exactly ``trust`` (system CAs if None).

    ``send_sni=False`` gives a ``NoSNIContext``. The context is not to be changed afterwards.
    """
    cls = ClientContext if send_sni else NoSNIContext
    ctx = cls(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = send_sni
    if trust is None:
        system_trust().load(ctx)  # the hashed CA directory, read on demand, where it can be
    else:
        ctx.load_verify_locations(cadata=trust_pem(trust))
    if client is not None:
        load_client_material(ctx, client)
    return ctx


_PINS = "agent_pins"  # the attribute a pinned context carries


def with_pins(ctx: ssl.SSLContext, pins: tuple[str, ...], parameter: str) -> ssl.SSLContext:
    """Mark ``ctx``: its connections are checked against ``pins`` (``parameter`` names them)
    after the handshake and before the request (``http/aiohttp_adapter.py``)."""
    setattr(ctx, _PINS, (frozenset(pins), parameter))
    return ctx


def pins_of(ctx: object) -> tuple[frozenset[str], str] | None:
    """The pins a context's connections must match, and the parameter that set them."""
    pinned: tuple[frozenset[str], str] | None = getattr(ctx, _PINS, None)
    return pinned
