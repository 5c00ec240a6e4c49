"""Certificate chains: who issued whom, linking leaf → root, and short descriptions.

Shared by ``formats`` (ordering a chain as it loads) and ``inspect`` (reporting on it).
"""

from __future__ import annotations

import datetime as dt
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


def whole_days(not_after: dt.datetime, now: dt.datetime) -> int:
    """Whole days between ``now`` and ``not_after``, negative once expired: the floor of the
    exact time either way, so a certificate that expired 36 hours ago is -1, not -2."""
    seconds = (not_after - now).total_seconds()
    days = int(abs(seconds) // 86400)
    return days if seconds >= 0 else -days


def days_phrase(not_after: dt.datetime, now: dt.datetime) -> str:
    """``12 days left``, ``1 day left``, ``expired 1 day ago``, ``expired less than a day ago``."""
    days = whole_days(not_after, now)
    if not_after >= now:
        return f"{days} day{'' if days == 1 else 's'} left"
    if days == 0:
        return "expired less than a day ago"
    return f"expired {-days} day{'' if days == -1 else 's'} ago"
