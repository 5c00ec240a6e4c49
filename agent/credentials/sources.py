"""Where key material comes from: config.xml profiles (files), inline job records, vault records.

Each source reads its bytes and hands them to ``formats``; the result is a ``ProfileMaterial``:
the client identity (or None) and the trusted certificates (or None for the system CAs).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from agent.config.config import ProfileConfig
from agent.credentials.formats import KeyMaterial, load_keystore, load_truststore
from agent.errors import KeystoreError
from agent.jobs.model import InlineProfile

PARAM = "mid.httpclient.protocol"
SHARED_TRUSTSTORES = 64  # distinct truststore files whose parsed certificates profiles share

_truststores: OrderedDict[bytes, tuple[x509.Certificate, ...]] = OrderedDict()


def _shared_truststore(
    data: bytes, origin: str, password: str | None
) -> tuple[x509.Certificate, ...]:
    """``load_truststore``, parsed once for all profiles naming the same file content (many
    partners' profiles trust one CA bundle): the certificates, and the names cryptography
    caches on them, are kept once rather than per profile. Keyed by a digest of the bytes
    and the password; a failure is not kept, so each profile reports its own."""
    secret = hashlib.sha256((password or "").encode()).digest()
    digest = hashlib.sha256(data).digest() + secret  # two digests: no framing to get wrong
    trust = _truststores.get(digest)
    if trust is None:
        trust = load_truststore(data, origin=origin, password=password)
        _truststores[digest] = trust
        if len(_truststores) > SHARED_TRUSTSTORES:
            _truststores.popitem(last=False)
    else:
        _truststores.move_to_end(digest)
    return trust


@dataclass(frozen=True)
class ProfileMaterial:
    """A profile's client identity (None: no client certificate) and trust (None: system CAs)."""

    client: KeyMaterial | None
    trust: tuple[x509.Certificate, ...] | None
    notes: tuple[str, ...] = ()


def load_file_profile(
    profile: ProfileConfig,
    *,
    password: str | None = None,
    keystore: tuple[str, bytes] | None = None,
) -> ProfileMaterial:
    """Read a config.xml profile's keystore, key and truststore files. ``password`` (for the
    keystore) and ``keystore`` (where it came from, its bytes) stand in for ``.password`` and
    ``.path`` when a credential store holds them."""
    name, prefix = profile.name, f"{PARAM}.{profile.name}"
    if profile.vault_path or profile.vault_pki:
        raise KeystoreError(f"profile {name}", "lives in the vault: load it through the vault")
    if profile.key is not None and profile.path is None:
        raise KeystoreError(f"profile {name}", f"{prefix}.key is set but {prefix}.path is not")
    client = trust = None
    notes: list[str] = []
    if profile.path is not None or keystore is not None:
        if keystore is not None:
            origin = f"profile {name} (keystore {keystore[0]})"
            data = keystore[1]
        else:
            assert profile.path is not None
            origin = f"profile {name} (keystore {profile.path})"
            data = _read(profile.path, origin, f"{prefix}.path")
        key_data = None
        if profile.key is not None:
            key_data = _read(profile.key, f"profile {name} (key {profile.key})", f"{prefix}.key")
        with _hint(prefix):
            client = load_keystore(
                data,
                origin=origin,
                password=profile.password if password is None else password,
                key_password=profile.key_password,
                type=profile.type,
                alias=profile.alias,
                key_data=key_data,
            )
    else:
        notes.append(f"no client certificate ({prefix}.path is not set)")
    if profile.truststore is not None:
        origin = f"profile {name} (truststore {profile.truststore})"
        data = _read(profile.truststore, origin, f"{prefix}.truststore")
        with _hint(f"{prefix}.truststore"):
            trust = _shared_truststore(data, origin, profile.truststore_password)
    else:
        notes.append(f"trusts the system CAs ({prefix}.truststore is not set)")
    return ProfileMaterial(client, trust, tuple(notes))


def load_inline(inline: InlineProfile, job_id: str) -> ProfileMaterial:
    """The key material a job carries in ``inline_profile``."""
    origin = f"job {job_id} inline_profile"
    client = load_keystore(
        inline.keystore_data,
        origin=f"{origin}.keystore",
        password=inline.password,
        type=inline.keystore_type,
        alias=inline.alias,
    )
    trust = None
    if inline.truststore_pem is not None:
        trust = load_truststore(
            inline.truststore_pem, origin=f"{origin}.truststore_pem", type="pem"
        )
    return ProfileMaterial(client, trust)


def material_from_record(record: dict[str, object], *, origin: str) -> ProfileMaterial:
    """A vault KV record: ``keystore`` (base64) + ``password`` [+ ``type``, ``alias``], or
    ``certificate`` + ``private_key`` [+ ``ca_chain``] in PEM; ``truststore`` (PEM) with either."""
    trust_pem = _text(record, "truststore", origin)
    trust = None
    if trust_pem is not None:
        trust = load_truststore(trust_pem.encode(), origin=f"{origin} truststore", type="pem")
    keystore = _text(record, "keystore", origin)
    if keystore is not None:
        try:
            data = base64.b64decode(keystore, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise KeystoreError(origin, "field keystore is not valid base64") from exc
        client = load_keystore(
            data,
            origin=origin,
            password=_text(record, "password", origin),
            type=_text(record, "type", origin),
            alias=_text(record, "alias", origin),
        )
        return ProfileMaterial(client, trust)
    cert, key = _text(record, "certificate", origin), _text(record, "private_key", origin)
    if cert is None or key is None:
        fields = ", ".join(sorted(record)) or "none"
        raise KeystoreError(
            origin,
            f"the record has neither keystore nor certificate + private_key (fields: {fields}): "
            "store the keystore base64-encoded, or the certificate and key in PEM",
        )
    chain = cert.strip() + "\n" + "".join(p.strip() + "\n" for p in _chain(record, origin))
    client = load_keystore(
        chain.encode(),
        origin=origin,
        type="pem",
        key_data=key.encode(),
        password=_text(record, "password", origin),
    )
    return ProfileMaterial(client, trust)


def _read(path: Path, origin: str, parameter: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeystoreError(
            origin, f"cannot read the file: {exc.strerror or exc}; check {parameter}"
        ) from exc


@contextmanager
def _hint(prefix: str) -> Iterator[None]:
    """Name the profile's parameters in a load failure."""
    try:
        yield
    except KeystoreError as exc:
        detail = exc.message.removeprefix(f"{exc.origin}: ")
        raise KeystoreError(exc.origin, f"{detail} (parameters {prefix}.*)") from exc


def _text(record: dict[str, object], name: str, origin: str) -> str | None:
    value = record.get(name)
    if value is None or isinstance(value, str):
        return value or None
    raise KeystoreError(origin, f"field {name} must be a string, not {type(value).__name__}")


def _chain(record: dict[str, object], origin: str) -> list[str]:
    value = record.get("ca_chain")
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    raise KeystoreError(origin, "field ca_chain must be a PEM string or a list of PEM strings")
