"""Key material into an ``ssl.SSLContext`` without a plaintext key on disk.

``load_cert_chain`` reads only files. The key goes into an anonymous in-memory file
(``memfd_create``) read through ``/proc/self/fd/N`` and closed right after loading. Where that
is unavailable, the key is written encrypted under a random one-time password to a 0600 temp
file, loaded and deleted at once: the disk then only ever holds ciphertext nobody can open.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
)

from agent.credentials.formats import KeyMaterial
from agent.errors import KeystoreError


def trust_pem(certs: Iterable[x509.Certificate]) -> str:
    """PEM text for ``ctx.load_verify_locations(cadata=...)``."""
    return "".join(c.public_bytes(Encoding.PEM).decode("ascii") for c in certs)


def load_client_material(ctx: ssl.SSLContext, material: KeyMaterial) -> None:
    """Present ``material`` (chain and key) as the context's client certificate."""
    try:
        if not _load_via_memfd(ctx, material):
            _load_via_encrypted_file(ctx, material)
    except ssl.SSLError as exc:
        raise KeystoreError(
            material.origin, f"OpenSSL refused the certificate or key ({exc.reason or exc})"
        ) from exc


def _load_via_memfd(ctx: ssl.SSLContext, material: KeyMaterial) -> bool:
    """Load through an anonymous in-memory file; False when the system has none."""
    if not hasattr(os, "memfd_create") or not Path("/proc/self/fd").is_dir():
        return False
    try:
        fd = os.memfd_create("agent-client-key", os.MFD_CLOEXEC)
    except OSError:
        return False
    try:
        view = memoryview(material.chain_pem + material.key_pem)
        while view:
            view = view[os.write(fd, view) :]
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return True


def _load_via_encrypted_file(ctx: ssl.SSLContext, material: KeyMaterial) -> None:
    """Load through a 0600 temp file holding the key encrypted under a one-time password."""
    password = secrets.token_urlsafe(32)
    key = material.key.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(password.encode())
    )
    fd, name = tempfile.mkstemp(prefix="agent-key-", suffix=".pem")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(material.chain_pem + key)
        ctx.load_cert_chain(name, password=password)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
