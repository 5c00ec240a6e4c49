"""Keystore bytes → one immutable ``KeyMaterial`` (a client identity) or trusted certificates.

Formats: PKCS#12 (openssl, openssl -legacy, keytool), JKS and JCEKS (keytool, read with pyjks),
PEM (chain and key in one file or apart; PKCS#1, PKCS#8, SEC1 EC, encrypted) and DER. Pure: bytes
in, values out. Every failure is a ``KeystoreError`` naming the origin and what to change; no
message carries a password or key bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import NameOID

from agent.credentials import readers
from agent.credentials.chains import describe, link, public_der, self_signed
from agent.credentials.readers import Entry
from agent.errors import KeystoreError

TYPES = {
    "jks": "jks",
    "jceks": "jceks",
    "pkcs12": "pkcs12",
    "p12": "pkcs12",
    "pfx": "pkcs12",
    "pem": "pem",
    "der": "der",
}
REORDERED_NOTE = "certificate chain was given out of order; reordered leaf → root"
_SIGNING_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """A client certificate chain (leaf first, then up towards the root) and its private key.

    Held as PEM text, not as parsed objects: an identity keeps its material while it is in use
    (for a context built later, the status page, a renewal check), and parsed certificates and
    key cost about 8 KiB an identity against under 3 as text, which counts at thousands of
    identities. Each read of ``chain``, ``leaf`` or ``key`` parses again; nothing on a job's
    path reads them. Build one with ``KeyMaterial.of``.
    """

    chain_pem: bytes
    key_pem: bytes = field(repr=False)  # PKCS#8, unencrypted: only ever in memory
    origin: str
    notes: tuple[str, ...] = ()
    reordered: bool = False  # the chain was given out of order (see ``notes``)

    @classmethod
    def of(
        cls,
        chain: Sequence[x509.Certificate],
        key: PrivateKeyTypes,
        origin: str,
        notes: tuple[str, ...] = (),
        reordered: bool = False,
    ) -> KeyMaterial:
        chain_pem = b"".join(c.public_bytes(Encoding.PEM) for c in chain)
        key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        return cls(chain_pem, key_pem, origin, notes, reordered)

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return tuple(x509.load_pem_x509_certificates(self.chain_pem))

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.chain_pem)  # the first of the chain

    @property
    def key(self) -> PrivateKeyTypes:
        return load_pem_private_key(self.key_pem, password=None)

    @property
    def subject(self) -> str:
        return self.leaf.subject.rfc4514_string()


def load_keystore(
    data: bytes,
    *,
    origin: str,
    password: str | None = None,
    type: str | None = None,  # shadows the builtin: the contract's name
    alias: str | None = None,
    key_data: bytes | None = None,
    key_password: str | None = None,
) -> KeyMaterial:
    """Parse a keystore and pick its key entry (by ``alias`` when it holds several)."""
    kind = keystore_kind(data, type, origin)
    notes: list[str] = []
    if kind in ("pem", "der"):
        entries = readers.pem_der_entries(data, kind, origin, key_data, key_password or password)
        if alias:
            notes.append(f"alias {alias!r} ignored: {kind.upper()} files have no aliases")
            alias = None
    elif key_data is not None:
        raise KeystoreError(
            origin, f"a separate key file goes only with a PEM or DER certificate, not {kind}"
        )
    elif kind == "pkcs12":
        entries = readers.p12_entries(data, origin, password)
    else:
        entries = readers.jks_entries(data, kind, origin, password, key_password)
    entry = _select(entries, alias, origin)
    return _material(entry, origin, shared_pool=kind == "pkcs12" and len(entries) > 1, notes=notes)


def load_truststore(
    data: bytes,
    *,
    origin: str,
    password: str | None = None,
    type: str | None = None,
) -> tuple[x509.Certificate, ...]:
    """Trusted certificates from a PEM bundle, DER, JKS/JCEKS trusted entries or PKCS#12."""
    kind = keystore_kind(data, type, origin)
    if kind in ("jks", "jceks"):
        store = readers.jks_open(data, kind, origin, password)
        certs = [readers.der_cert(e.cert, origin) for e in store.certs.values()]
    elif kind == "pkcs12":
        certs = list(readers.p12_open(data, origin, password)[1])
    else:
        certs = (
            readers.pem_certs(data, origin) if kind == "pem" else [readers.der_cert(data, origin)]
        )
    if not certs:
        raise KeystoreError(origin, f"the {kind} truststore holds no trusted certificates")
    return tuple(dict.fromkeys(certs))


def keystore_kind(data: bytes, declared: str | None, origin: str) -> str:
    """The declared type (normalised), or the one the bytes look like."""
    if declared:
        kind = TYPES.get(declared.strip().lower())
        if kind is None:
            raise KeystoreError(
                origin, f"unknown keystore type {declared!r}: use jks, jceks, pkcs12, pem or der"
            )
        return kind
    kind = readers.sniff(data)
    if kind is None:
        raise KeystoreError(
            origin, "is not a keystore the agent reads (JKS, JCEKS, PKCS#12, PEM or DER)"
        )
    return kind


# -- choosing and checking the entry -----------------------------------------------------------


def _select(entries: Sequence[Entry], alias: str | None, origin: str) -> Entry:
    """The entry ``alias`` names: by its alias (friendly name), by its certificate's SHA-256
    fingerprint (``sha256:<hex>``, colons allowed), or by its certificate's subject (the whole
    RFC 4514 string, or the common name)."""
    names = ", ".join(repr(e.alias) if e.alias else "(no alias)" for e in entries)
    if alias:
        for entry in entries:
            if entry.alias is not None and entry.alias.lower() == alias.lower():
                return entry
        found = [e for e in entries if _certificate_named(e, alias)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise KeystoreError(origin, f"{len(found)} key entries match {alias!r}: be precise")
        leaves = "; ".join(_leaf_label(e) for e in entries)
        raise KeystoreError(
            origin,
            f"has no key entry with alias {alias!r} (key entries: {names}; certificates: "
            f"{leaves}): fix the alias, or give sha256:<fingerprint> or the subject",
        )
    if len(entries) > 1:
        raise KeystoreError(
            origin, f"holds {len(entries)} key entries ({names}): set the alias to choose one"
        )
    return entries[0]


def _leaf(entry: Entry) -> x509.Certificate | None:
    """The entry's own certificate: the one whose key is the entry's."""
    try:
        mine = public_der(entry.load_key().public_key())
    except KeystoreError:
        return None
    return next((c for c in entry.certs if public_der(c.public_key()) == mine), None)


def _certificate_named(entry: Entry, alias: str) -> bool:
    leaf = _leaf(entry)
    if leaf is None:
        return False
    wanted = alias.strip()
    if wanted.lower().startswith("sha256:"):
        hexed = wanted[7:].replace(":", "").lower()
        return leaf.fingerprint(hashes.SHA256()).hex() == hexed
    subject = leaf.subject
    common = [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return subject.rfc4514_string().lower() == wanted.lower() or wanted in common


def _leaf_label(entry: Entry) -> str:
    leaf = _leaf(entry)
    if leaf is None:
        return "(unreadable)"
    return f"{leaf.subject.rfc4514_string()} sha256:{leaf.fingerprint(hashes.SHA256()).hex()}"


def _material(entry: Entry, origin: str, *, shared_pool: bool, notes: list[str]) -> KeyMaterial:
    key = entry.load_key()
    if not isinstance(key, _SIGNING_KEYS):
        raise KeystoreError(origin, f"the private key ({type(key).__name__}) cannot sign for TLS")
    certs = tuple(dict.fromkeys(entry.certs))
    mine = public_der(key.public_key())
    matching = [c for c in certs if public_der(c.public_key()) == mine]
    if not matching:
        lowest = next((c for c in certs if not any(o.issuer == c.subject for o in certs)), None)
        what = f"the certificate {describe(lowest)}" if lowest else "any certificate in the file"
        raise KeystoreError(
            origin,
            f"the private key does not match {what}: export the key together with its "
            "certificate, or point the key setting at the matching key file",
        )
    chain, rest = link(matching[0], certs)
    if rest and not shared_pool and not self_signed(chain[-1]):
        raise KeystoreError(
            origin,
            f"the certificate chain does not link: '{chain[-1].issuer.rfc4514_string()}' (the "
            f"issuer of {describe(chain[-1])}) is missing; the file also holds "
            f"{', '.join(describe(c) for c in rest)}: add the missing intermediate certificate",
        )
    if rest and not shared_pool:
        notes.append(
            f"ignored {len(rest)} certificate(s) not in the chain: "
            + ", ".join(describe(c) for c in rest)
        )
    given = [c for c in certs if c in chain]
    reordered = given != list(chain)
    if reordered:
        notes.append(REORDERED_NOTE)
    return KeyMaterial.of(chain, key, origin, tuple(notes), reordered)
