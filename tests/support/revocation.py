"""A CA that revokes: server certificates naming their CRL and OCSP responder, the CRL itself
(served by nginx on 127.0.0.1) and ``openssl ocsp`` answering from an index of the same facts.

- :func:`server_cert` issues under the shared test CA with a CRL distribution point and/or an
  OCSP URL on 127.0.0.1 ports.
- :class:`Revocations` keeps which serials are revoked and writes ``ca.crl`` (PEM) and the
  responder's ``index.txt`` from it.
- :class:`StaticNginx` serves a directory over plain HTTP; :class:`OcspResponder` runs
  ``openssl ocsp -index``, signing with the CA's key.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import AuthorityInformationAccessOID

from agent.commands.demo.pki import CA, Issued
from tests.support.servers import _Process, accepts, free_port, nginx_temp_paths


def server_cert(ca: CA, name: str, *, crl_url: str | None, ocsp_url: str | None) -> Issued:
    extensions: list[x509.ExtensionType] = []
    if crl_url:
        uri = x509.UniformResourceIdentifier(crl_url)
        point = x509.DistributionPoint([uri], None, None, None)
        extensions.append(x509.CRLDistributionPoints([point]))
    if ocsp_url:
        access = x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
        )
        extensions.append(x509.AuthorityInformationAccess([access]))
    return ca.issue(name, extensions=tuple(extensions))


class Revocations:
    """What the CA says: the certificates it issued and which of them it revoked."""

    def __init__(self, ca: CA, directory: Path) -> None:
        self.ca = ca
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.issued: list[x509.Certificate] = []
        self.revoked: dict[int, dt.datetime] = {}

    @property
    def crl_path(self) -> Path:
        return self.directory / "ca.crl"

    def add(self, *certs: Issued) -> None:
        self.issued += [c.cert for c in certs]

    def revoke(self, cert: Issued) -> None:
        self.revoked[cert.cert.serial_number] = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        self.write()

    def write(self) -> None:
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ca.cert.subject)
            .last_update(now - dt.timedelta(minutes=1))
            .next_update(now + dt.timedelta(hours=1))
        )
        for serial, when in self.revoked.items():
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
            builder = builder.add_revoked_certificate(entry.build())
        crl = builder.sign(self.ca.key, hashes.SHA256())  # type: ignore[arg-type]
        self.crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        lines = []
        for cert in self.issued:
            expires = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
            serial = f"{cert.serial_number:X}"
            serial = serial if len(serial) % 2 == 0 else "0" + serial
            subject = "/" + "/".join(a.rfc4514_string() for a in reversed(cert.subject.rdns))
            when = self.revoked.get(cert.serial_number)
            if when is None:
                lines.append(f"V\t{expires}\t\t{serial}\tunknown\t{subject}")
            else:
                lines.append(f"R\t{expires}\t{when:%y%m%d%H%M%SZ}\t{serial}\tunknown\t{subject}")
        (self.directory / "index.txt").write_text("\n".join(lines) + "\n")
        (self.directory / "index.txt.attr").write_text("unique_subject = no\n")


class StaticNginx(_Process):
    """nginx serving ``root`` over plain HTTP on 127.0.0.1 (a CRL distribution point)."""

    name = "nginx-static"

    def __init__(self, directory: Path, root: Path) -> None:
        super().__init__(directory)
        self.root = root
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        d = self.directory
        temp = nginx_temp_paths(d)
        conf = d / "nginx.conf"
        conf.write_text(
            f"""daemon off;
master_process off;
worker_processes 1;
error_log {d / "error.log"} info;
pid {d / "nginx.pid"};
events {{ worker_connections 64; }}
http {{
  access_log {d / "access.log"};
{temp}
  server {{ listen 127.0.0.1:{self.port}; root {self.root}; }}
}}
"""
        )
        return ["nginx", "-e", str(d / "error.log"), "-p", str(d), "-c", str(conf)]

    def _ready(self) -> bool:
        return accepts(self.port)


class OcspResponder(_Process):
    """``openssl ocsp`` answering for the CA from ``Revocations``' index. Its ``-port`` takes
    no address (it listens on every interface); the agent reaches it on 127.0.0.1."""

    name = "ocsp"

    def __init__(self, directory: Path, revocations: Revocations) -> None:
        super().__init__(directory)
        self.revocations = revocations
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        ca = self.revocations.ca
        cert, key = self.directory / "ca.pem", self.directory / "ca.key"
        cert.write_bytes(ca.cert_pem())
        key.write_bytes(
            ca.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        index = self.revocations.directory / "index.txt"
        return [
            "openssl", "ocsp", "-index", str(index), "-port", str(self.port),
            "-rsigner", str(cert), "-rkey", str(key), "-CA", str(cert), "-ndays", "1",
            "-ignore_err",
        ]  # fmt: skip

    def _ready(self) -> bool:
        # Not by connecting: the responder serves one connection at a time, and would wait for
        # a request on the probe's before answering anyone else.
        logs = self.stdout_path.read_bytes() + self.stderr_path.read_bytes()
        return b"waiting for ocsp client connections" in logs.lower()
