"""Build keystores with the real ``keytool`` and ``openssl`` command-line tools, at test time.

Passwords appear on these command lines: they are throwaway test values.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.commands.demo.pki import CA


def run(*args: str | Path, stdin: bytes | None = None) -> bytes:
    """Run a tool; fail the test with its output when it fails."""
    proc = subprocess.run(
        [str(a) for a in args], input=stdin, capture_output=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} failed ({proc.returncode}):\n"
            + proc.stderr.decode(errors="replace")
            + proc.stdout.decode(errors="replace")
        )
    return proc.stdout


def _store(path: Path, storetype: str, storepass: str) -> list[str]:
    return ["-keystore", str(path), "-storetype", storetype, "-storepass", storepass]


def genkeypair(
    path: Path,
    alias: str,
    cn: str,
    *,
    storetype: str = "PKCS12",
    storepass: str,
    keypass: str | None = None,
    keyalg: str = "EC",
    days: int = 365,
    startdate: str | None = None,
) -> None:
    """``keytool -genkeypair``: a key entry with a self-signed certificate."""
    args = ["keytool", "-genkeypair", *_store(path, storetype, storepass), "-alias", alias]
    args += ["-dname", f"CN={cn}", "-validity", str(days), "-keyalg", keyalg]
    args += ["-groupname", "secp256r1"] if keyalg == "EC" else ["-keysize", "2048"]
    if keypass is not None:
        args += ["-keypass", keypass]
    if startdate is not None:
        args += ["-startdate", startdate]
    run(*args)


def certreq(
    path: Path, alias: str, *, storetype: str, storepass: str, keypass: str | None = None
) -> x509.CertificateSigningRequest:
    args = ["keytool", "-certreq", *_store(path, storetype, storepass), "-alias", alias]
    if keypass is not None:
        args += ["-keypass", keypass]
    return x509.load_pem_x509_csr(run(*args))


def sign_csr(ca: CA, csr: x509.CertificateSigningRequest, days: int = 365) -> x509.Certificate:
    """The CA signs a keytool CSR as a client certificate."""
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca.cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def import_cert(
    path: Path,
    alias: str,
    cert_file: Path,
    *,
    storetype: str,
    storepass: str,
    keypass: str | None = None,
) -> None:
    """``keytool -importcert``: a trusted entry, or a CA reply onto an existing key entry."""
    args = ["keytool", "-importcert", "-noprompt", *_store(path, storetype, storepass)]
    args += ["-alias", alias, "-file", str(cert_file)]
    if keypass is not None:
        args += ["-keypass", keypass]
    run(*args)


def ca_signed_keystore(
    path: Path,
    issuer: CA,
    *,
    alias: str,
    cn: str,
    storetype: str,
    storepass: str,
    keypass: str | None = None,
    keyalg: str = "EC",
) -> x509.Certificate:
    """keytool makes the key, ``-certreq``; ``issuer`` signs; the chain is imported back.

    The root goes in first as a trusted entry (``root-ca``) so keytool accepts the reply.
    Returns the signed leaf.
    """
    genkeypair(
        path, alias, cn, storetype=storetype, storepass=storepass, keypass=keypass, keyalg=keyalg
    )
    csr = certreq(path, alias, storetype=storetype, storepass=storepass, keypass=keypass)
    leaf = sign_csr(issuer, csr)
    root = issuer.chain[-1]
    (path.parent / f"{path.stem}-root.pem").write_bytes(pem(root))
    import_cert(
        path,
        "root-ca",
        path.parent / f"{path.stem}-root.pem",
        storetype=storetype,
        storepass=storepass,
    )
    reply = path.parent / f"{path.stem}-reply.pem"
    reply.write_bytes(pem(leaf, *issuer.chain))
    import_cert(path, alias, reply, storetype=storetype, storepass=storepass, keypass=keypass)
    return leaf


def import_keystore(
    src: Path,
    dest: Path,
    *,
    src_type: str,
    src_pass: str,
    dest_type: str,
    dest_pass: str,
    src_alias: str | None = None,
    dest_alias: str | None = None,
    dest_keypass: str | None = None,
) -> None:
    """``keytool -importkeystore`` (e.g. an openssl PKCS#12 into JKS)."""
    args = ["keytool", "-importkeystore", "-noprompt", "-srckeystore", str(src)]
    args += ["-srcstoretype", src_type, "-srcstorepass", src_pass, "-destkeystore", str(dest)]
    args += ["-deststoretype", dest_type, "-deststorepass", dest_pass]
    if src_alias is not None:
        args += ["-srcalias", src_alias, "-srckeypass", src_pass]
    if dest_alias is not None:
        args += ["-destalias", dest_alias]
    if dest_keypass is not None:
        args += ["-destkeypass", dest_keypass]
    run(*args)


def openssl_pkcs12(
    out: Path,
    cert_file: Path,
    key_file: Path,
    *,
    password: str,
    name: str,
    chain_file: Path | None = None,
    legacy: bool = False,
) -> bytes:
    """``openssl pkcs12 -export`` (``-legacy``: RC2/3DES as older tools wrote)."""
    args = ["openssl", "pkcs12", "-export", "-in", str(cert_file), "-inkey", str(key_file)]
    args += ["-name", name, "-passout", f"pass:{password}", "-out", str(out)]
    if chain_file is not None:
        args += ["-certfile", str(chain_file)]
    if legacy:
        args.append("-legacy")
    run(*args)
    return out.read_bytes()


def openssl_key(out: Path, form: str, *, password: str | None = None) -> Path:
    """A private key made by openssl: ``rsa-pkcs1``, ``rsa-pkcs8``, ``ec`` (SEC1),
    ``rsa-pkcs8-encrypted`` or ``rsa-pkcs1-encrypted`` (legacy DEK-Info)."""
    if form == "ec":
        run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", out)
        return out
    raw = out.with_suffix(".raw.pem")
    run("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", raw)
    if form == "rsa-pkcs8":
        raw.rename(out)
    elif form == "rsa-pkcs1":
        run("openssl", "pkey", "-in", raw, "-traditional", "-out", out)
    elif form == "rsa-pkcs8-encrypted":
        run("openssl", "pkey", "-in", raw, "-aes256", "-passout", f"pass:{password}", "-out", out)
    elif form == "rsa-pkcs1-encrypted":
        run("openssl", "rsa", "-in", raw, "-traditional", "-aes256", "-passout",
            f"pass:{password}", "-out", out)  # fmt: skip
    else:
        raise ValueError(f"unknown key form {form!r}")
    raw.unlink(missing_ok=True)
    return out


def cert_for_key(ca: CA, key_file: Path, cn: str, password: str | None = None) -> x509.Certificate:
    """The CA certifies the public key of an openssl-made key file (as a CA's portal would)."""
    key = load_pem_private_key(key_file.read_bytes(), password.encode() if password else None)
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    csr = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    return sign_csr(ca, csr)


def openssl_s_server(
    cert_file: Path, key_file: Path, ca_file: Path
) -> tuple[subprocess.Popen[str], int]:
    """``openssl s_server -Verify 4 -verify_return_error -www`` on a free loopback port.

    It requires a client certificate from ``ca_file`` and answers each request with a page
    showing the certificate it got."""
    proc = subprocess.Popen(
        ["openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", str(cert_file), "-key",
         str(key_file), "-Verify", "4", "-verify_return_error", "-CAfile", str(ca_file), "-www"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:  # blocks until the server says where it listens
        if line.startswith("ACCEPT "):
            return proc, int(line.rsplit(":", 1)[1])
    proc.wait()
    raise AssertionError("openssl s_server exited before listening")
