"""PKI-issued client certificates: where ``.vault_pki`` points, asking for one, when to renew.

``.vault_pki`` is ``<mount>/issue/<role>`` (the vault makes the key) or ``<mount>/sign/<role>``
(the key is made here in memory and only a CSR leaves); a bare role name means
``pki/issue/<role>``. The certificate is for ``.vault_pki.common_name`` and is renewed at about
two thirds of its lifetime.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.config.config import ProfileConfig
from agent.credentials.sources import PARAM, ProfileMaterial
from agent.credentials.vault.client import field
from agent.credentials.vault.kv import build
from agent.credentials.vault.login import Session
from agent.credentials.vault.timing import RENEW_FRACTION
from agent.errors import KeystoreError


@dataclass(frozen=True)
class PkiTarget:
    """Where ``.vault_pki`` points: ``<mount>/<verb>/<role>``."""

    mount: str
    verb: str  # "issue": the vault generates the key; "sign": the key never leaves the agent
    role: str

    @property
    def path(self) -> str:
        return f"{self.mount}/{self.verb}/{self.role}"


def parse_pki(value: str, profile: str) -> PkiTarget:
    """``<mount>/issue/<role>``, ``<mount>/sign/<role>``, or a bare role (``pki/issue/<role>``)."""
    parts = value.strip().strip("/").split("/")
    if len(parts) == 1 and parts[0]:
        return PkiTarget("pki", "issue", parts[0])
    if len(parts) >= 3 and parts[-2] in ("issue", "sign") and all(parts):
        return PkiTarget("/".join(parts[:-2]), parts[-2], parts[-1])
    raise KeystoreError(
        f"profile {profile}",
        f"{PARAM}.{profile}.vault_pki must be <mount>/issue/<role>, <mount>/sign/<role> or a "
        f"role name, got {value!r}",
    )


async def issue(session: Session, profile: ProfileConfig, vault_pki: str) -> ProfileMaterial:
    """A new certificate (and key) for the profile from the vault's PKI."""
    target = parse_pki(vault_pki, profile.name)
    cn = profile.vault_pki_common_name
    if not cn:
        raise KeystoreError(
            f"profile {profile.name}", f"set {PARAM}.{profile.name}.vault_pki.common_name"
        )
    what = f"requesting a certificate for {cn} from {target.path} for profile {profile.name}"
    data, key_pem = await _request(session, target, cn, what)
    record = {
        "certificate": field(data, "certificate", what),
        "private_key": key_pem,
        "ca_chain": data.get("ca_chain") or data.get("issuing_ca") or [],
    }
    origin = f"profile {profile.name} (vault {target.path}, CN {cn})"
    return await asyncio.to_thread(build, record, origin, profile)


async def _request(
    session: Session, target: PkiTarget, cn: str, what: str
) -> tuple[dict[str, Any], str]:
    """pki/issue (the answer holds the key) or pki/sign (a CSR for a key made here)."""
    if target.verb == "issue":
        response = await session.call(
            what,
            lambda client: client.secrets.pki.generate_certificate(
                name=target.role, common_name=cn, mount_point=target.mount
            ),
        )
        data = session.client.answer(response, what)
        return data, field(data, "private_key", what)
    key_pem, csr_pem = await asyncio.to_thread(_key_and_csr, cn)
    response = await session.call(
        what,
        lambda client: client.secrets.pki.sign_certificate(
            name=target.role, csr=csr_pem, common_name=cn, mount_point=target.mount
        ),
    )
    return session.client.answer(response, what), key_pem


def _key_and_csr(cn: str) -> tuple[str, str]:
    """A fresh EC P-256 key (PEM, kept in memory) and a CSR for ``cn``."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem.decode(), csr.public_bytes(serialization.Encoding.PEM).decode()


def renew_time(material: ProfileMaterial) -> float | None:
    """Two thirds into the certificate's remaining lifetime, counted from now or its start."""
    client = material.client
    if client is None:
        return None
    start = max(time.time(), client.leaf.not_valid_before_utc.timestamp())
    end = client.leaf.not_valid_after_utc.timestamp()
    return start + max(0.0, end - start) * RENEW_FRACTION
