"""Certificate chains: who issued whom, linking leaf → root, and short descriptions.

Shared by ``formats`` (ordering a chain as it loads) and ``inspect`` (reporting on it).
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def public_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def describe(cert: x509.Certificate) -> str:
    return f"'{cert.subject.rfc4514_string()}'"


def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """Does ``parent``'s name and key sign ``child``?"""
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def self_signed(cert: x509.Certificate) -> bool:
    return issued_by(cert, cert)


def link(
    leaf: x509.Certificate, certs: Iterable[x509.Certificate]
) -> tuple[tuple[x509.Certificate, ...], list[x509.Certificate]]:
    """Walk from ``leaf`` up through ``certs``: (the chain leaf → root, the certificates left)."""
    chain = [leaf]
    rest = [c for c in certs if c != leaf]
    while not self_signed(chain[-1]):
        parent = next((c for c in rest if issued_by(chain[-1], c)), None)
        if parent is None:
            break
        chain.append(parent)
        rest.remove(parent)
    return tuple(chain), rest


def find_issuer(
    cert: x509.Certificate, candidates: Iterable[x509.Certificate]
) -> x509.Certificate | None:
    return next((c for c in candidates if issued_by(cert, c)), None)
