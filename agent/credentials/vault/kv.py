"""KV v2 keystore records → ``ProfileMaterial``.

``<kv_mount>/<vault_path>`` holds a record in the contract's format (``keystore`` base64 +
``password`` [+ ``type``, ``alias``], or ``certificate`` + ``private_key`` [+ ``ca_chain``]).
Trust: the record's ``truststore`` (PEM), else the profile's ``.truststore`` file, else the
system CAs (``build`` applies this to PKI answers too).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from cryptography import x509

from agent.config.config import ProfileConfig
from agent.config.parameters import VAULT_PREFIX
from agent.credentials.formats import load_truststore
from agent.credentials.sources import PARAM, ProfileMaterial, material_from_record
from agent.credentials.vault.login import Session
from agent.errors import KeystoreError, VaultError


async def read_kv(session: Session, profile: ProfileConfig, vault_path: str) -> ProfileMaterial:
    """The profile's material from its KV v2 record."""
    address = session.client.address
    mount, path = session.client.config.kv_mount.strip("/"), vault_path.strip("/")
    where = f"{mount}/{path}"
    response = await session.call(
        f"reading KV v2 record {where} for profile {profile.name}",
        lambda client: client.secrets.kv.v2.read_secret_version(
            path=path, mount_point=mount, raise_on_deleted_version=True
        ),
    )
    record = ((response or {}).get("data") or {}).get("data")
    if not isinstance(record, dict):
        raise VaultError(
            f"vault {address}: {where} (profile {profile.name}) is not a KV v2 record: "
            f"check {VAULT_PREFIX}kv_mount"
        )
    origin = f"profile {profile.name} (vault record {where})"
    return await asyncio.to_thread(build, record, origin, profile)


def build(record: dict[str, Any], origin: str, profile: ProfileConfig) -> ProfileMaterial:
    """Material from a record; the profile's ``.truststore`` file when the record has none."""
    material = material_from_record(record, origin=origin)
    if material.trust is not None or profile.truststore is None:
        return material
    return ProfileMaterial(
        material.client, _trust_file(profile, profile.truststore), material.notes
    )


def _trust_file(profile: ProfileConfig, path: Path) -> tuple[x509.Certificate, ...]:
    origin = f"profile {profile.name} (truststore {path})"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeystoreError(
            origin,
            f"cannot read the file: {exc.strerror or exc}; check {PARAM}.{profile.name}.truststore",
        ) from exc
    return load_truststore(data, origin=origin, password=profile.truststore_password)
