"""Key material: keystore formats, where material comes from, loading it into TLS contexts.

- ``formats``: keystore bytes → ``KeyMaterial`` (client chain + key) or trusted certificates;
  ``readers`` holds the per-format parsing and ``chains`` the certificate-chain logic.
- ``sources``: config.xml profiles, inline job records, vault records → ``ProfileMaterial``.
- ``memory``: ``KeyMaterial`` into an ``ssl.SSLContext`` without a plaintext key on disk.
- ``inspect``: the report behind ``agent validate``.
"""

from __future__ import annotations

from agent.credentials.formats import KeyMaterial, load_keystore, load_truststore
from agent.credentials.memory import load_client_material, trust_pem
from agent.credentials.sources import (
    ProfileMaterial,
    load_file_profile,
    load_inline,
    material_from_record,
)

__all__ = [
    "KeyMaterial",
    "ProfileMaterial",
    "load_client_material",
    "load_file_profile",
    "load_inline",
    "load_keystore",
    "load_truststore",
    "material_from_record",
    "trust_pem",
]
