"""A throwaway PKI: a CA, server and client certificates, written where asked.

Used by ``agent demo`` and by the tests. Keys are EC P-256 (fast to make); nothing here is meant
for production material.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key and the chain above it (leaf excluded, root last)."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def chain_pem(self) -> bytes:
        """Leaf followed by its chain, PEM."""
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self.cert, *self.chain)
        )

    def key_pem(self, password: str | None = None, *, pkcs8: bool = True) -> bytes:
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password.encode())
            if password
            else serialization.NoEncryption()
        )
        fmt = (
            serialization.PrivateFormat.PKCS8
            if pkcs8
            else serialization.PrivateFormat.TraditionalOpenSSL
        )
        return self.key.private_bytes(serialization.Encoding.PEM, fmt, enc)

    def pkcs12(self, password: str, name: str = "client") -> bytes:
        return pkcs12.serialize_key_and_certificates(
            name.encode(),
            self.key,
            self.cert,
            list(self.chain) or None,
            serialization.BestAvailableEncryption(password.encode()),
        )

    def write_pem(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``stem.crt`` (leaf + chain) and ``stem.key`` (unencrypted); return their paths."""
        crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        crt.write_bytes(self.chain_pem())
        key.write_bytes(self.key_pem())
        key.chmod(0o600)
        return crt, key


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Agent Test PKI"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _new_key(kind: str) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


class CA:
    """A certificate authority that issues intermediates, servers and clients."""

    def __init__(self, cn: str = "Agent Test Root CA", *, parent: CA | None = None) -> None:
        self.key: PrivateKey = _new_key("ec")
        self.parent = parent
        self.cert: x509.Certificate
        now = dt.datetime.now(dt.UTC)
        issuer_name = parent.cert.subject if parent else _name(cn)
        signer: CertificateIssuerPrivateKeyTypes = parent.key if parent else self.key
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(issuer_name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
        )
        self.cert = builder.sign(signer, hashes.SHA256())

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """This CA and its parents, nearest first."""
        return (self.cert, *(self.parent.chain if self.parent else ()))

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def intermediate(self, cn: str) -> CA:
        return CA(cn, parent=self)

    def issue(
        self,
        cn: str,
        *,
        names: tuple[str, ...] = (),
        client: bool = False,
        days: float = 365,
        not_before_days: float = -1 / 24,
        key_type: str = "ec",
        extensions: tuple[x509.ExtensionType, ...] = (),
    ) -> Issued:
        """Issue a leaf for ``cn``; ``names`` become SANs (servers default to ``cn``);
        ``extensions`` are added as they are (say, where its CRL and OCSP responder are)."""
        key = _new_key(key_type)
        now = dt.datetime.now(dt.UTC)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=not_before_days))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        san_names = names or (() if client else (cn,))
        if san_names:
            builder = builder.add_extension(_san(san_names), critical=False)
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        chain = tuple(c for c in self.chain if c.subject != c.issuer)  # the root stays out
        return Issued(cert=cert, key=key, chain=chain)
