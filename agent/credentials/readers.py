"""Format readers: JKS/JCEKS (pyjks), PKCS#12 (cryptography, plus a small DER walk for the
key bags of multi-entry stores), PEM and DER. Each turns bytes into key entries or certificates
and raises ``KeystoreError`` naming the origin; ``formats`` picks the entry and checks it.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import (
    load_der_private_key,
    load_pem_private_key,
    pkcs12,
)

from agent.errors import KeystoreError

if TYPE_CHECKING:
    import jks

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)
_PARSE_ERRORS = (ValueError, TypeError, IndexError, KeyError, EOFError, struct.error)
# PKCS#12 object identifiers, DER-encoded: data content, shrouded key bag, friendlyName.
_OID_DATA = bytes.fromhex("06092a864886f70d010701")
_OID_SHROUDED = bytes.fromhex("060b2a864886f70d010c0a0102")
_OID_FRIENDLY = bytes.fromhex("06092a864886f70d010914")


@dataclass(frozen=True)
class Entry:
    """A key entry: its alias, how to decrypt its key (on demand), the certificates given."""

    alias: str | None
    load_key: Callable[[], PrivateKeyTypes]
    certs: tuple[x509.Certificate, ...]  # as given: this entry's chain, or the whole file's


def sniff(data: bytes) -> str | None:
    if data[:4] == b"\xfe\xed\xfe\xed":
        return "jks"
    if data[:4] == b"\xce\xce\xce\xce":
        return "jceks"
    if b"-----BEGIN " in data:
        return "pem"
    if data[:1] != b"\x30":
        return None
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        return "pkcs12"
    return "der"


def _misread(kind: str, data: bytes) -> str:
    seen = sniff(data)
    hint = f"it looks like {seen}" if seen and seen != kind else "the file may be damaged"
    return f"cannot be read as {kind} ({hint}); check the keystore type setting"


# -- JKS / JCEKS ------------------------------------------------------------------------------


def jks_open(data: bytes, kind: str, origin: str, password: str | None) -> jks.KeyStore:
    import jks  # imported when a Java keystore is read: pyjks and its parts cost ~6 MiB

    try:
        return jks.KeyStore.loads(data, password, try_decrypt_keys=False)
    except jks.util.KeystoreSignatureException as exc:
        raise KeystoreError(
            origin, "the keystore password is wrong: check its password setting"
        ) from exc
    except (jks.util.KeystoreException, *_PARSE_ERRORS) as exc:
        raise KeystoreError(origin, _misread(kind, data)) from exc


def jks_entries(
    data: bytes, kind: str, origin: str, password: str | None, key_password: str | None
) -> list[Entry]:
    if password is None:
        raise KeystoreError(origin, f"a {kind.upper()} keystore needs its password: set it")
    store = jks_open(data, kind, origin, password)

    def loader(name: str, entry: jks.PrivateKeyEntry) -> Callable[[], PrivateKeyTypes]:
        def load() -> PrivateKeyTypes:
            import jks

            try:
                entry.decrypt(key_password or password)
                return load_der_private_key(entry.pkey_pkcs8, None)
            except jks.util.DecryptionFailureException as exc:
                raise KeystoreError(
                    origin,
                    f"the key password of entry {name!r} is wrong: when it differs from the "
                    "keystore's, set the profile's .key_password",
                ) from exc
            except (jks.util.KeystoreException, UnsupportedAlgorithm, *_PARSE_ERRORS) as exc:
                raise KeystoreError(origin, f"cannot read the key of entry {name!r}") from exc

        return load

    entries = []
    for name, entry in store.private_keys.items():
        certs = tuple(der_cert(der, origin) for _, der in entry.cert_chain)
        entries.append(Entry(name, loader(name, entry), certs))
    others = sorted(store.certs) + sorted(store.secret_keys)
    if not entries:
        listed = ", ".join(others) or "none"
        raise KeystoreError(
            origin, f"holds no private key entry (entries: {listed}): it looks like a truststore"
        )
    return entries


# -- PKCS#12 -----------------------------------------------------------------------------------


def p12_open(
    data: bytes, origin: str, password: str | None
) -> tuple[pkcs12.PKCS12KeyAndCertificates, list[x509.Certificate]]:
    try:
        parsed = pkcs12.load_pkcs12(data, password.encode() if password is not None else None)
    except (ValueError, UnsupportedAlgorithm) as exc:
        if b"\x02\x01\x03" not in data[2:8]:  # a PFX starts SEQUENCE { INTEGER 3, ... }
            raise KeystoreError(origin, _misread("pkcs12", data)) from exc
        what = "needs a password: set it" if not password else "password is wrong: check it"
        raise KeystoreError(origin, f"the PKCS#12 keystore {what}") from exc
    pairs = ([parsed.cert] if parsed.cert else []) + list(parsed.additional_certs)
    return parsed, [p.certificate for p in pairs]


def _tlv(buf: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """One DER element at ``pos``: (tag, contents, position after it)."""
    tag, size = buf[pos], buf[pos + 1]
    pos += 2
    if size & 0x80:
        width = size & 0x7F
        if not 0 < width <= 4:
            raise ValueError("unsupported DER length")
        size, pos = int.from_bytes(buf[pos : pos + width], "big"), pos + width
    if pos + size > len(buf):
        raise ValueError("truncated DER")
    return tag, buf[pos : pos + size], pos + size


def _items(buf: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(buf):
        tag, value, pos = _tlv(buf, pos)
        out.append((tag, value))
    return out


def _raw(buf: bytes) -> list[bytes]:
    """The DER elements of a constructed value, each whole (tag and length included)."""
    out, pos = [], 0
    while pos < len(buf):
        start = pos
        pos = _tlv(buf, pos)[2]
        out.append(buf[start:pos])
    return out


def p12_key_bags(data: bytes) -> list[tuple[str | None, bytes]] | None:
    """The shrouded key bags (friendlyName, EncryptedPrivateKeyInfo DER) of a PKCS#12 file.

    cryptography returns only the first key of a PKCS#12; keytool stores one per alias. The bags
    sit in plain ``data`` content, so they are found without the password. None: not PKCS#12.
    """
    try:
        pfx = _items(_tlv(data)[1])
        content = _items(pfx[1][1])  # authSafe ContentInfo: (contentType, [0] content)
        safes = _items(_tlv(_tlv(content[1][1])[1])[1])
        bags: list[tuple[str | None, bytes]] = []
        for _, info in safes:
            oid, *rest = _raw(info)
            if oid != _OID_DATA or not rest:
                continue
            for _, bag in _items(_tlv(_tlv(_tlv(rest[0])[1])[1])[1]):
                parts = _raw(bag)
                if parts[0] == _OID_SHROUDED:
                    bags.append((_friendly_name(parts[2:]), _tlv(parts[1])[1]))
        return bags
    except (ValueError, IndexError):
        return None


def _friendly_name(attributes: list[bytes]) -> str | None:
    for _, attr in _items(_tlv(attributes[0])[1]) if attributes else []:
        oid, values = _raw(attr)
        if oid == _OID_FRIENDLY:
            return _tlv(_tlv(values)[1])[1].decode("utf-16-be")
    return None


def p12_entries(data: bytes, origin: str, password: str | None) -> list[Entry]:
    parsed, certs = p12_open(data, origin, password)
    bags = p12_key_bags(data) or []
    first = parsed.cert.friendly_name if parsed.cert else None
    if parsed.key is not None and len(bags) <= 1:
        name = bags[0][0] if bags and bags[0][0] else (first.decode() if first else None)
        key = parsed.key
        return [Entry(name, lambda: key, tuple(certs))]

    def loader(name: str | None, der: bytes) -> Callable[[], PrivateKeyTypes]:
        def load() -> PrivateKeyTypes:
            try:
                return load_der_private_key(der, None if password is None else password.encode())
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                raise KeystoreError(origin, f"cannot decrypt the key of entry {name!r}") from exc

        return load

    entries = [Entry(name, loader(name, der), tuple(certs)) for name, der in bags]
    if not entries:
        raise KeystoreError(origin, "holds no private key: it looks like a truststore")
    return entries


# -- PEM / DER ---------------------------------------------------------------------------------


def der_cert(der: bytes, origin: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise KeystoreError(
            origin, "holds a certificate that cannot be read (damaged DER)"
        ) from exc


def pem_certs(data: bytes, origin: str) -> list[x509.Certificate]:
    certs = []
    for n, block in enumerate(_blocks(data, b"CERTIFICATE"), 1):
        try:
            certs.append(x509.load_pem_x509_certificate(block))
        except ValueError as exc:
            raise KeystoreError(origin, f"PEM certificate #{n} cannot be read") from exc
    return certs


def _blocks(data: bytes, label: bytes) -> list[bytes]:
    return [m.group(0) for m in _PEM_BLOCK.finditer(data) if m.group(1) == label]


def _pem_keys(data: bytes) -> list[bytes]:
    return [m.group(0) for m in _PEM_BLOCK.finditer(data) if m.group(1).endswith(b"PRIVATE KEY")]


def _read_key(blob: bytes, origin: str, password: str | None) -> PrivateKeyTypes:
    pem = blob.lstrip().startswith(b"-----")
    loader = load_pem_private_key if pem else load_der_private_key
    encrypted = b"ENCRYPTED" in blob[:200] if pem else True
    try:
        try:
            return loader(blob, password.encode() if password else None)
        except TypeError:  # a password for a plain key, or none for an encrypted one
            if password:
                return loader(blob, None)
            raise KeystoreError(origin, "the private key is encrypted: set its password") from None
    except ValueError as exc:
        if password and encrypted:
            raise KeystoreError(origin, "the private key password is wrong: check it") from exc
        raise KeystoreError(
            origin, "the private key cannot be read (expected PEM or DER: PKCS#1, PKCS#8 or EC)"
        ) from exc
    except UnsupportedAlgorithm as exc:
        raise KeystoreError(origin, "the private key uses an unsupported algorithm") from exc


def pem_der_entries(
    data: bytes, kind: str, origin: str, key_data: bytes | None, password: str | None
) -> list[Entry]:
    certs = pem_certs(data, origin) if kind == "pem" else [der_cert(data, origin)]
    blobs = _pem_keys(data) if kind == "pem" else []
    if key_data is not None:
        blobs += _pem_keys(key_data) if b"-----BEGIN " in key_data else [key_data]
    if not certs:
        raise KeystoreError(origin, "holds no certificate: give the certificate chain in PEM")
    if not blobs:
        raise KeystoreError(
            origin, "holds certificates but no private key: add the key or name its file (.key)"
        )
    if len(blobs) > 1:
        raise KeystoreError(origin, f"holds {len(blobs)} private keys: keep only the client's")
    keys = [_read_key(b, origin, password) for b in blobs]
    return [Entry(None, lambda: keys[0], tuple(certs))]
