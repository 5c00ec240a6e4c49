"""Looking for a secret where it must not be: the forms a private key takes, files written."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes


def secret_forms(key: PrivateKeyTypes) -> list[bytes]:
    """Byte strings that would betray the plaintext key in a file."""
    forms = []
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        for enc in (serialization.Encoding.DER, serialization.Encoding.PEM):
            forms.append(key.private_bytes(enc, fmt, serialization.NoEncryption()))
    pem_body = forms[1].split(b"\n")[1]  # a line of the base64 body
    if isinstance(key, ec.EllipticCurvePrivateKey):
        scalar = key.private_numbers().private_value
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        scalar = key.private_numbers().d
    return [*forms, pem_body, scalar.to_bytes((scalar.bit_length() + 7) // 8, "big")]


def snapshot(roots: list[Path]) -> dict[Path, tuple[int, int]]:
    """Every regular file under ``roots``: (mtime_ns, size)."""
    out = {}
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = Path(dirpath) / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if path.is_file() and not path.is_symlink():
                    out[path] = (st.st_mtime_ns, st.st_size)
    return out
