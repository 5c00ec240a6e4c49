"""Keystore formats, sources and in-memory loading, with stores made by keytool and openssl."""

from __future__ import annotations

import base64
import os
import re
import socket
import ssl
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.commands.demo.pki import CA, Issued
from agent.config.config import ProfileConfig
from agent.credentials import memory
from agent.credentials.chains import public_der
from agent.credentials.formats import REORDERED_NOTE, KeyMaterial, load_keystore, load_truststore
from agent.credentials.memory import load_client_material, trust_pem
from agent.credentials.sources import load_file_profile, load_inline, material_from_record
from agent.errors import KeystoreError
from agent.jobs.model import InlineProfile
from tests.support import keytool as kt
from tests.support.keytool import pem
from tests.support.leaks import secret_forms, snapshot

STOREPASS = "Store-Pass-7731"
KEYPASS = "Key-Pass-9904"


@dataclass(frozen=True)
class Stores:
    dir: Path
    root: CA
    inter: CA
    jks: Path
    jceks: Path
    p12: Path  # keytool PKCS#12
    multi_jks: Path  # aliases one, two
    multi_p12: Path  # keytool PKCS#12, aliases one, two
    imported_jks: Path  # openssl PKCS#12 → keytool -importkeystore, key password differs
    trust_jks: Path  # trusted entries only


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Stores:
    d = tmp_path_factory.mktemp("stores")
    root = CA("KS Root CA")
    inter = root.intermediate("KS Issuing CA")
    paths = {}
    for kind, alg in (("JKS", "RSA"), ("JCEKS", "EC"), ("PKCS12", "EC")):
        path = d / f"client.{kind.lower()}"
        keypass = KEYPASS if kind != "PKCS12" else None  # keytool PKCS#12 has one password
        kt.ca_signed_keystore(
            path, inter, alias="client", cn=f"keytool-{kind.lower()}", storetype=kind,
            storepass=STOREPASS, keypass=keypass, keyalg=alg,
        )  # fmt: skip
        paths[kind] = path
    for kind in ("JKS", "PKCS12"):
        for alias in ("one", "two"):
            kt.genkeypair(d / f"multi.{kind.lower()}", alias, f"multi-{alias}", storetype=kind,
                          storepass=STOREPASS)  # fmt: skip
    issued = inter.issue("openssl-made", client=True)
    crt, key = issued.write_pem(d, "openssl-made")
    kt.openssl_pkcs12(d / "openssl.p12", crt, key, password=STOREPASS, name="partner")
    kt.import_keystore(
        d / "openssl.p12", d / "imported.jks", src_type="PKCS12", src_pass=STOREPASS,
        dest_type="JKS", dest_pass=STOREPASS, src_alias="partner", dest_alias="partner",
        dest_keypass=KEYPASS,
    )  # fmt: skip
    (d / "root.pem").write_bytes(root.cert_pem())
    kt.import_cert(d / "trust.jks", "root", d / "root.pem", storetype="JKS", storepass=STOREPASS)
    return Stores(
        d, root, inter, paths["JKS"], paths["JCEKS"], paths["PKCS12"], d / "multi.jks",
        d / "multi.pkcs12", d / "imported.jks", d / "trust.jks",
    )  # fmt: skip


def subjects(material: KeyMaterial) -> list[str]:
    return [c.subject.rfc4514_string() for c in material.chain]


# -- formats made by keytool -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attr", "declared", "key_password"),
    [
        ("jks", None, KEYPASS),
        ("jks", "JKS", KEYPASS),
        ("jceks", None, KEYPASS),
        ("jceks", "jceks", KEYPASS),
        ("p12", None, None),
        ("p12", "pfx", None),
    ],
)
def test_keytool_made_keystores_load_with_their_ca_chain(
    stores: Stores, attr: str, declared: str | None, key_password: str | None
) -> None:
    path: Path = getattr(stores, attr)
    m = load_keystore(
        path.read_bytes(), origin=f"test {path.name}", password=STOREPASS, type=declared,
        key_password=key_password,
    )  # fmt: skip
    kind = {"jks": "jks", "jceks": "jceks", "p12": "pkcs12"}[attr]
    assert m.subject == f"CN=keytool-{kind}"
    assert subjects(m)[1:] == [
        stores.inter.cert.subject.rfc4514_string(),
        stores.root.cert.subject.rfc4514_string(),
    ]
    assert m.notes == () and not m.reordered
    assert public_der(m.leaf.public_key()) == public_der(m.key.public_key())


def test_jks_key_password_that_differs_from_the_store_password(stores: Stores) -> None:
    data = stores.imported_jks.read_bytes()
    m = load_keystore(data, origin="imported", password=STOREPASS, key_password=KEYPASS)
    assert m.subject == "CN=openssl-made,O=Agent Test PKI"
    with pytest.raises(KeystoreError) as err:
        load_keystore(data, origin="imported", password=STOREPASS)
    assert "key password of entry 'partner' is wrong" in str(err.value)
    assert STOREPASS not in str(err.value) and KEYPASS not in str(err.value)


@pytest.mark.parametrize("attr", ["multi_jks", "multi_p12"])
def test_alias_selects_the_entry(stores: Stores, attr: str) -> None:
    data = getattr(stores, attr).read_bytes()
    two = load_keystore(data, origin="multi", password=STOREPASS, alias="two")
    one = load_keystore(data, origin="multi", password=STOREPASS, alias="ONE")  # any case
    assert (two.subject, one.subject) == ("CN=multi-two", "CN=multi-one")


@pytest.mark.parametrize("attr", ["multi_jks", "multi_p12"])
@pytest.mark.parametrize("alias", [None, "three"])
def test_ambiguous_or_wrong_alias_lists_the_aliases(
    stores: Stores, attr: str, alias: str | None
) -> None:
    data = getattr(stores, attr).read_bytes()
    with pytest.raises(KeystoreError) as err:
        load_keystore(data, origin="profile multi", password=STOREPASS, alias=alias)
    message = str(err.value)
    assert message.startswith("profile multi: ")
    assert "'one'" in message and "'two'" in message
    assert ("alias 'three'" in message) if alias else ("set the alias" in message)


@pytest.mark.parametrize("attr", ["jks", "jceks", "p12", "multi_p12"])
def test_wrong_store_password_says_so_without_the_password(stores: Stores, attr: str) -> None:
    wrong = "Not-The-Password-55"
    with pytest.raises(KeystoreError) as err:
        load_keystore(getattr(stores, attr).read_bytes(), origin="p", password=wrong)
    assert "password is wrong" in str(err.value)
    assert wrong not in str(err.value) and STOREPASS not in str(err.value)
    assert err.value.kind == "keystore"


def test_declared_type_that_does_not_fit_says_what_the_file_looks_like(stores: Stores) -> None:
    with pytest.raises(KeystoreError, match="cannot be read as jks .it looks like pkcs12"):
        load_keystore(stores.p12.read_bytes(), origin="p", password=STOREPASS, type="jks")
    with pytest.raises(KeystoreError, match="cannot be read as pkcs12 .it looks like jks"):
        load_keystore(stores.jks.read_bytes(), origin="p", password=STOREPASS, type="p12")
    with pytest.raises(KeystoreError, match="unknown keystore type 'bks'"):
        load_keystore(stores.p12.read_bytes(), origin="p", password=STOREPASS, type="bks")


def test_a_truststore_given_as_keystore_is_named_as_such(stores: Stores) -> None:
    with pytest.raises(KeystoreError, match=r"no private key entry \(entries: root\)"):
        load_keystore(stores.trust_jks.read_bytes(), origin="p", password=STOREPASS)


# -- formats made by openssl -------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
def test_openssl_pkcs12_with_chain_in_either_order(
    stores: Stores, tmp_path: Path, legacy: bool
) -> None:
    issued = stores.inter.issue("p12-client", client=True)
    crt, key = issued.write_pem(tmp_path, "c")
    (tmp_path / "leaf.pem").write_bytes(issued.cert_pem())
    (tmp_path / "up.pem").write_bytes(pem(stores.inter.cert, stores.root.cert))
    (tmp_path / "down.pem").write_bytes(pem(stores.root.cert, stores.inter.cert))
    results = {}
    for order in ("up", "down"):
        data = kt.openssl_pkcs12(
            tmp_path / f"{order}.p12", tmp_path / "leaf.pem", key, password=STOREPASS,
            name="partner", chain_file=tmp_path / f"{order}.pem", legacy=legacy,
        )  # fmt: skip
        results[order] = load_keystore(data, origin="p12", password=STOREPASS, alias="partner")
    expected = [issued.subject, *(c.subject.rfc4514_string() for c in stores.inter.chain)]
    assert subjects(results["up"]) == subjects(results["down"]) == expected
    assert results["up"].notes == () and not results["up"].reordered
    assert results["down"].notes == (REORDERED_NOTE,) and results["down"].reordered


KEY_FORMS = [
    ("rsa-pkcs1", b"BEGIN RSA PRIVATE KEY", None),
    ("rsa-pkcs8", b"BEGIN PRIVATE KEY", None),
    ("ec", b"BEGIN EC PRIVATE KEY", None),
    ("rsa-pkcs8-encrypted", b"BEGIN ENCRYPTED PRIVATE KEY", "Pem-Pass-123"),
    ("rsa-pkcs1-encrypted", b"DEK-Info", "Pem-Pass-123"),
]


@pytest.mark.parametrize(("form", "marker", "password"), KEY_FORMS)
def test_pem_key_forms_apart_and_together(
    stores: Stores, tmp_path: Path, form: str, marker: bytes, password: str | None
) -> None:
    key_file = kt.openssl_key(tmp_path / "k.pem", form, password=password)
    assert marker in key_file.read_bytes()
    cert = kt.cert_for_key(stores.inter, key_file, f"pem-{form}", password)
    chain = pem(cert, stores.inter.cert)
    apart = load_keystore(chain, origin="pem", key_data=key_file.read_bytes(), password=password)
    together = load_keystore(key_file.read_bytes() + chain, origin="pem", password=password)
    assert apart.subject == together.subject == f"CN=pem-{form}"
    assert len(apart.chain) == 2
    if password:
        with pytest.raises(KeystoreError, match="private key password is wrong") as err:
            load_keystore(chain, origin="pem", key_data=key_file.read_bytes(), password="nope-x")
        assert "nope-x" not in str(err.value)
        with pytest.raises(KeystoreError, match="private key is encrypted: set its password"):
            load_keystore(chain, origin="pem", key_data=key_file.read_bytes())


def test_der_certificate_with_a_der_key(stores: Stores) -> None:
    issued = stores.root.issue("der-client", client=True)
    der_key = issued.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    m = load_keystore(issued.cert.public_bytes(serialization.Encoding.DER), origin="der",
                      key_data=der_key)  # fmt: skip
    assert m.subject == issued.subject and len(m.chain) == 1


def test_key_that_does_not_match_the_certificate(stores: Stores) -> None:
    mine, other = stores.inter.issue("mine", client=True), stores.inter.issue("other", client=True)
    with pytest.raises(KeystoreError) as err:
        load_keystore(mine.chain_pem(), origin="profile x", key_data=other.key_pem())
    assert f"private key does not match the certificate '{mine.subject}'" in str(err.value)


def test_chain_out_of_order_is_reordered_with_a_note(stores: Stores) -> None:
    issued = stores.inter.issue("shuffled", client=True)
    data = pem(stores.root.cert, issued.cert, stores.inter.cert) + issued.key_pem()
    m = load_keystore(data, origin="pem")
    assert subjects(m) == [
        issued.subject,
        stores.inter.cert.subject.rfc4514_string(),
        stores.root.cert.subject.rfc4514_string(),
    ]
    assert m.reordered and REORDERED_NOTE in m.notes


def test_missing_intermediate_names_the_missing_issuer(stores: Stores) -> None:
    issued = stores.inter.issue("gap", client=True)
    data = pem(issued.cert, stores.root.cert) + issued.key_pem()
    with pytest.raises(KeystoreError) as err:
        load_keystore(data, origin="pem")
    message = str(err.value)
    assert "chain does not link" in message
    assert f"'{stores.inter.cert.subject.rfc4514_string()}' (the issuer of " in message
    assert "is missing" in message


def test_key_material_repr_hides_the_key(stores: Stores) -> None:
    issued = stores.root.issue("repr", client=True)
    m = load_keystore(issued.chain_pem() + issued.key_pem(), origin="pem")
    assert "key=" not in repr(m) and "PRIVATE" not in repr(m)


def test_key_material_holds_text_not_parsed_objects(stores: Stores) -> None:
    """An identity keeps its material while in use: as PEM text (under 3 KiB), not as parsed
    certificates and key (about 8 KiB), which count at thousands of identities. Each read
    parses again and gives the same certificates and key."""
    m = load_keystore(stores.jks.read_bytes(), origin="jks", password=STOREPASS,
                      key_password=KEYPASS)  # fmt: skip
    held = [getattr(m, name) for name in KeyMaterial.__slots__]
    assert all(isinstance(value, bytes | str | tuple | bool) for value in held), held
    assert not [v for v in m.notes if not isinstance(v, str)]
    assert len(m.chain_pem) + len(m.key_pem) < 4096
    assert subjects(m) == ["CN=keytool-jks", *subjects(m)[1:]] and len(m.chain) == 3
    assert m.leaf == m.chain[0]
    assert public_der(m.key.public_key()) == public_der(m.leaf.public_key())


# -- truststores -------------------------------------------------------------------------------


def test_truststores_pem_der_jks_pkcs12(stores: Stores, tmp_path: Path) -> None:
    root, inter = stores.root.cert, stores.inter.cert
    assert load_truststore(pem(root, inter, root), origin="pem") == (root, inter)
    assert load_truststore(root.public_bytes(serialization.Encoding.DER), origin="der") == (root,)
    jks_data = stores.trust_jks.read_bytes()
    assert load_truststore(jks_data, origin="jks", password=STOREPASS) == (root,)
    assert load_truststore(jks_data, origin="jks", password=None) == (root,)  # no integrity check
    with pytest.raises(KeystoreError, match="password is wrong"):
        load_truststore(jks_data, origin="jks", password="wrong-pass")
    p12 = tmp_path / "trust.p12"
    kt.import_cert(p12, "root", stores.dir / "root.pem", storetype="PKCS12", storepass=STOREPASS)
    assert root in load_truststore(p12.read_bytes(), origin="p12", password=STOREPASS)
    with pytest.raises(KeystoreError, match="holds no trusted certificates"):
        load_truststore(b"-----BEGIN NOTHING-----\n-----END NOTHING-----\n", origin="pem")


# -- sources -----------------------------------------------------------------------------------


def test_file_profile_reads_keystore_and_truststore(stores: Stores) -> None:
    profile = ProfileConfig(
        name="partner", path=stores.jks, password=STOREPASS, type="jks",
        truststore=stores.trust_jks, truststore_password=STOREPASS,
    )  # fmt: skip
    with pytest.raises(KeystoreError, match="key password of entry 'client' is wrong"):
        load_file_profile(profile)  # the JKS key has its own password, config.xml has one
    material = load_file_profile(
        ProfileConfig(name="partner", path=stores.p12, password=STOREPASS,
                      truststore=stores.trust_jks, truststore_password=STOREPASS)
    )  # fmt: skip
    assert material.client is not None and material.client.subject == "CN=keytool-pkcs12"
    assert material.trust == (stores.root.cert,)
    assert material.client.origin == f"profile partner (keystore {stores.p12})"


def test_profiles_naming_one_truststore_share_its_parsed_certificates(
    stores: Stores, tmp_path: Path
) -> None:
    """Many partners' profiles trust one CA bundle: it is parsed once, not once per profile
    (with 1,000 such profiles, 2.6 MiB less), and a change of content is a new parse."""
    bundle = tmp_path / "copy.pem"
    bundle.write_bytes(stores.root.cert_pem())
    other = tmp_path / "other.pem"
    other.write_bytes(stores.inter.cert_pem())

    def trust(name: str, path: Path, password: str | None = None) -> object:
        profile = ProfileConfig(name=name, truststore=path, truststore_password=password)
        return load_file_profile(profile).trust

    first = trust("a", stores.dir / "root.pem")
    assert trust("b", bundle) is first  # another file, the same bytes
    assert trust("c", other) == (stores.inter.cert,)
    bundle.write_bytes(pem(stores.root.cert, stores.inter.cert))
    assert trust("d", bundle) == (stores.root.cert, stores.inter.cert)
    assert trust("e", stores.trust_jks, STOREPASS) == (stores.root.cert,)
    with pytest.raises(KeystoreError, match="profile f"):  # each profile has its own failure
        trust("f", stores.trust_jks, "wrong-pass")


def test_file_profile_pem_with_key_file_and_missing_files(stores: Stores, tmp_path: Path) -> None:
    issued = stores.inter.issue("pem-profile", client=True)
    crt, key = issued.write_pem(tmp_path, "c")
    material = load_file_profile(ProfileConfig(name="p", path=crt, key=key))
    assert material.client is not None and material.client.subject == issued.subject
    assert material.trust is None and any("system CAs" in n for n in material.notes)
    missing = tmp_path / "gone.p12"
    with pytest.raises(KeystoreError) as err:
        load_file_profile(ProfileConfig(name="p", path=missing, password="x"))
    assert str(err.value).startswith(f"profile p (keystore {missing}): cannot read the file")
    assert "mid.httpclient.protocol.p.path" in str(err.value)


def test_file_profile_errors_name_the_parameters(stores: Stores) -> None:
    with pytest.raises(KeystoreError) as err:
        load_file_profile(ProfileConfig(name="multi", path=stores.multi_jks, password=STOREPASS))
    assert "set the alias" in str(err.value)
    assert "mid.httpclient.protocol.multi.*" in str(err.value)


def test_inline_profile(stores: Stores) -> None:
    inline = InlineProfile(
        keystore_data=stores.multi_p12.read_bytes(), keystore_type="pkcs12",
        password=STOREPASS, alias="two", truststore_pem=stores.root.cert_pem(),
    )  # fmt: skip
    material = load_inline(inline, "job-7")
    assert material.client is not None and material.client.subject == "CN=multi-two"
    assert material.trust == (stores.root.cert,)
    bad = InlineProfile(keystore_data=inline.keystore_data, password="wrong-pass-1")
    with pytest.raises(KeystoreError) as err:
        load_inline(bad, "job-8")
    assert str(err.value).startswith("job job-8 inline_profile.keystore: ")
    assert "wrong-pass-1" not in str(err.value)


def test_vault_record_keystore_form(stores: Stores) -> None:
    record: dict[str, object] = {
        "keystore": base64.b64encode(stores.jceks.read_bytes()).decode(),
        "password": STOREPASS,
        "alias": "client",
        "truststore": stores.root.cert_pem().decode(),
    }
    with pytest.raises(KeystoreError, match="key password of entry 'client' is wrong"):
        material_from_record(record, origin="vault secret/partner")
    record["keystore"] = base64.b64encode(stores.p12.read_bytes()).decode()
    material = material_from_record(record, origin="vault secret/partner")
    assert material.client is not None and material.client.subject == "CN=keytool-pkcs12"
    assert material.trust == (stores.root.cert,)
    with pytest.raises(KeystoreError, match="field keystore is not valid base64"):
        material_from_record({"keystore": "%%%", "password": "x"}, origin="vault")


@pytest.mark.parametrize("as_list", [False, True])
def test_vault_record_pem_form(stores: Stores, as_list: bool) -> None:
    issued = stores.inter.issue("vault-pem", client=True)
    ca_chain: object = (
        [stores.inter.cert_pem().decode(), stores.root.cert_pem().decode()]
        if as_list
        else pem(stores.inter.cert, stores.root.cert).decode()
    )
    record: dict[str, object] = {
        "certificate": issued.cert_pem().decode(),
        "private_key": issued.key_pem().decode(),
        "ca_chain": ca_chain,
    }
    material = material_from_record(record, origin="vault secret/pem")
    assert material.client is not None and len(material.client.chain) == 3
    assert material.trust is None
    with pytest.raises(KeystoreError) as err:
        material_from_record({"private_key": "x", "token": "t"}, origin="vault secret/pem")
    assert "fields: private_key, token" in str(err.value)


# -- into an SSLContext, key in memory only ----------------------------------------------------


@dataclass
class Server:
    port: int
    ca_file: Path


@pytest.fixture
def s_server(stores: Stores, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """openssl s_server requiring a client certificate issued under ``stores.root``."""
    d = tmp_path_factory.mktemp("server")
    crt, key = stores.root.issue("localhost").write_pem(d, "server")
    (d / "ca.pem").write_bytes(stores.root.cert_pem())
    proc, port = kt.openssl_s_server(crt, key, d / "ca.pem")
    try:
        yield Server(port, d / "ca.pem")
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def handshake(ctx: ssl.SSLContext, port: int) -> str:
    """Connect, ask the s_server page, return it (it shows the client certificate it got)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=20) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    page = b"".join(chunks).decode(errors="replace")
    assert "Verify return code: 0 (ok)" in page
    return page


def client_subject(page: str) -> str:
    """The subject line of the client certificate the s_server page shows."""
    found = re.search(r"^\s*Subject: (.*)$", page, re.MULTILINE)
    assert found, page
    return found.group(1).strip()


def client_context(stores: Stores) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=trust_pem([stores.root.cert]))
    return ctx


@pytest.mark.timeout(60)
@pytest.mark.parametrize("attr", ["jks", "jceks", "p12"])
def test_mutual_tls_with_keytool_material_loaded_in_memory(
    stores: Stores, s_server: Server, attr: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path: Path = getattr(stores, attr)
    material = load_keystore(path.read_bytes(), origin=attr, password=STOREPASS,
                             key_password=KEYPASS)  # fmt: skip
    roots = [Path(tempfile.gettempdir()), Path.cwd()]
    ctx = client_context(stores)
    fds_before = set(os.listdir("/proc/self/fd"))
    before, started = snapshot(roots), time.time_ns()
    load_client_material(ctx, material)
    after = snapshot(roots)
    # the memfd is closed again (an fd of an earlier test closed meanwhile does not matter)
    assert set(os.listdir("/proc/self/fd")) - fds_before == set()
    changed = [p for p, stat in after.items() if before.get(p) != stat or stat[0] >= started]
    secrets = secret_forms(material.key)
    for changed_file in changed:
        try:
            content = changed_file.read_bytes()
        except OSError:  # another process's file, gone again
            continue
        assert not any(secret in content for secret in secrets), changed_file
    kind = {"p12": "pkcs12"}.get(attr, attr)
    assert client_subject(handshake(ctx, s_server.port)) == f"CN=keytool-{kind}"


def test_the_file_scan_catches_a_plaintext_key(tmp_path: Path) -> None:
    """The check above is only worth something if it sees a key written the ordinary way."""
    issued = CA("Scan").issue("scan", client=True)
    before = snapshot([tmp_path])
    issued.write_pem(tmp_path, "leaky")
    changed = [p for p, stat in snapshot([tmp_path]).items() if before.get(p) != stat]
    leaks = [p for p in changed if any(s in p.read_bytes() for s in secret_forms(issued.key))]
    assert leaks == [tmp_path / "leaky.key"]


@pytest.mark.timeout(60)
def test_encrypted_temp_file_fallback_holds_no_plaintext_and_is_gone(
    stores: Stores, s_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued: Issued = stores.inter.issue("fallback-client", client=True)
    material = load_keystore(issued.chain_pem() + issued.key_pem(), origin="pem")
    monkeypatch.setattr(memory, "_load_via_memfd", lambda ctx, m: False)
    seen: list[tuple[str, bytes, int]] = []

    class Spy(ssl.SSLContext):
        def load_cert_chain(self, certfile: object, *args: object, **kwargs: object) -> None:
            path = Path(str(certfile))
            seen.append((str(path), path.read_bytes(), path.stat().st_mode & 0o777))
            super().load_cert_chain(certfile, *args, **kwargs)  # type: ignore[arg-type]

    ctx = Spy(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=trust_pem([stores.root.cert]))
    load_client_material(ctx, material)
    [(name, content, mode)] = seen
    assert mode == 0o600 and b"BEGIN ENCRYPTED PRIVATE KEY" in content
    assert not any(secret in content for secret in secret_forms(material.key))
    assert not Path(name).exists()
    page = handshake(ctx, s_server.port)
    assert client_subject(page) == "O=Agent Test PKI, CN=fallback-client"


@pytest.mark.timeout(60)
def test_memfd_path_is_used_and_reads_no_file(
    stores: Stores, s_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = stores.inter.issue("memfd-client", client=True)
    material = load_keystore(issued.chain_pem() + issued.key_pem(), origin="pem")
    seen: list[str] = []

    class Spy(ssl.SSLContext):
        def load_cert_chain(self, certfile: object, *args: object, **kwargs: object) -> None:
            seen.append(str(certfile))
            super().load_cert_chain(certfile, *args, **kwargs)  # type: ignore[arg-type]

    ctx = Spy(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=trust_pem([stores.root.cert]))
    load_client_material(ctx, material)
    [name] = seen
    assert name.startswith("/proc/self/fd/")
    assert not Path(name).exists()  # closed right after loading
    page = handshake(ctx, s_server.port)
    assert client_subject(page) == "O=Agent Test PKI, CN=memfd-client"


@pytest.mark.timeout(60)
def test_server_rejects_material_from_another_ca(stores: Stores, s_server: Server) -> None:
    stranger = CA("Stranger").issue("stranger", client=True)
    ctx = client_context(stores)
    load_client_material(ctx, load_keystore(stranger.chain_pem() + stranger.key_pem(), origin="s"))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        handshake(ctx, s_server.port)
