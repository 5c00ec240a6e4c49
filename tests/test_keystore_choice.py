"""Keystores as they come, end to end against the mTLS server: a JKS/JCEKS key whose password
differs from the store's (``.key_password``), and a keystore with several keys picked by the
certificate's SHA-256 fingerprint (``.alias = sha256:<hex>``) or subject, and PKCS#12 stores
with the legacy RC2/3DES algorithms (``openssl pkcs12 -export -legacy``, and keytool's Java 8
style). The stores are made by Java's ``keytool`` and ``openssl``."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.hashes import SHA256

from agent.commands.demo.demoserver import DemoServer
from agent.config.config import load_config
from tests.support import keytool as kt
from tests.support.configs import P, write_config
from tests.support.engines import running_engine
from tests.support.jobs import make_job
from tests.support.pki import PKI

STOREPASS = "store-Pass-41"
KEYPASS = "key-Pass-77"


def config_for(tmp_path: Path, pki: PKI, port: int, **profile: str) -> Path:
    params = {
        "url": f"sqlite:///{tmp_path / 'queue.db'}",
        "agent.resolve": "alpha.test:127.0.0.1",
        f"{P}.partner.truststore": str(pki.write_ca(tmp_path)),
        f"{P}.partner.port": str(port),
    }
    params |= {f"{P}.partner.{k}": v for k, v in profile.items() if "password" not in k}
    secure = {f"{P}.partner.{k}": v for k, v in profile.items() if "password" in k}
    return write_config(tmp_path, params, secure)


@pytest.mark.parametrize("storetype", ["JKS", "JCEKS"])
async def test_a_key_password_of_its_own_is_given_by_key_password(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer, storetype: str
) -> None:
    store = tmp_path / f"client.{storetype.lower()}"
    kt.ca_signed_keystore(
        store,
        pki.ca,
        alias="client",
        cn="client-own-keypass",
        storetype=storetype,
        storepass=STOREPASS,
        keypass=KEYPASS,
    )
    given = {"path": str(store), "password": STOREPASS}
    with_key = config_for(tmp_path, pki, mtls_server.port, **given, key_password=KEYPASS)
    async with running_engine(load_config(with_key, env={})) as engine:
        result = await engine.run(make_job("own-keypass", mtls_server.port))
    assert result.status == 200, result
    assert "client-own-keypass" in (result.tls.client_certificate or "")
    without = config_for(tmp_path, pki, mtls_server.port, **given)
    async with running_engine(load_config(without, env={})) as engine:
        refused = await engine.run(make_job("no-keypass", mtls_server.port))
    assert refused.error is not None and refused.error.kind == "keystore", refused
    assert ".key_password" in refused.error.message
    assert STOREPASS not in refused.error.message and KEYPASS not in refused.error.message


@pytest.fixture
def two_keys(tmp_path: Path, pki: PKI) -> tuple[Path, list[str]]:
    """A PKCS#12 made by keytool holding two CA-signed key entries; their fingerprints."""
    store = tmp_path / "two.p12"
    prints = []
    for alias, cn in (("first", "client-first"), ("second", "client-second")):
        single = tmp_path / f"{alias}.p12"
        leaf = kt.ca_signed_keystore(
            single, pki.ca, alias=alias, cn=cn, storetype="PKCS12", storepass=STOREPASS
        )
        kt.import_keystore(
            single,
            store,
            src_type="PKCS12",
            src_pass=STOREPASS,
            dest_type="PKCS12",
            dest_pass=STOREPASS,
            src_alias=alias,
        )
        prints.append(leaf.fingerprint(SHA256()).hex())
    return store, prints


@pytest.mark.parametrize(
    ("choose", "expected"),
    [
        (lambda prints: f"sha256:{prints[1]}", "client-second"),
        (
            lambda prints: (
                "sha256:" + ":".join(prints[0][i : i + 2] for i in range(0, 64, 2)).upper()
            ),
            "client-first",
        ),
        (lambda prints: "client-second", "client-second"),  # the alias (friendly name)... or CN
        (lambda prints: "CN=client-first", "client-first"),
    ],
)
async def test_one_of_several_keys_is_picked_by_fingerprint_or_subject(
    tmp_path: Path,
    pki: PKI,
    mtls_server: DemoServer,
    two_keys: tuple[Path, list[str]],
    choose: object,
    expected: str,
) -> None:
    store, prints = two_keys
    alias = choose(prints)  # type: ignore[operator]
    config = config_for(
        tmp_path, pki, mtls_server.port, path=str(store), password=STOREPASS, alias=alias
    )
    async with running_engine(load_config(config, env={})) as engine:
        result = await engine.run(make_job("picked", mtls_server.port))
    assert result.status == 200, result
    assert expected in (result.tls.client_certificate or "")


async def test_an_alias_nothing_matches_lists_the_entries_to_choose_from(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer, two_keys: tuple[Path, list[str]]
) -> None:
    store, prints = two_keys
    config = config_for(
        tmp_path,
        pki,
        mtls_server.port,
        path=str(store),
        password=STOREPASS,
        alias="sha256:" + "0" * 64,
    )
    async with running_engine(load_config(config, env={})) as engine:
        result = await engine.run(make_job("unmatched", mtls_server.port))
    assert result.error is not None and result.error.kind == "keystore", result
    message = result.error.message
    assert all(f"sha256:{p}" in message for p in prints)
    assert "CN=client-first" in message and "CN=client-second" in message


def openssl_legacy_p12(tmp_path: Path, pki: PKI) -> Path:
    """client-one as ``openssl pkcs12 -export -legacy`` writes it: RC2-40 for the certificates,
    3DES for the key, a SHA-1 MAC: what OpenSSL 3 itself no longer reads by default."""
    crt, key = pki.client_one.write_pem(tmp_path, "legacy")
    store = tmp_path / "legacy.p12"
    kt.run(
        "openssl", "pkcs12", "-export", "-legacy", "-in", crt, "-inkey", key,
        "-out", store, "-passout", f"pass:{STOREPASS}",
    )  # fmt: skip
    return store


def java8_p12(tmp_path: Path, pki: PKI) -> Path:
    """A keytool PKCS#12 converted with ``-J-Dkeystore.pkcs12.legacy``: Java 8's algorithms
    (3DES key bag, RC2 certificate bag, SHA-1 MAC)."""
    modern = tmp_path / "modern.p12"
    kt.ca_signed_keystore(
        modern, pki.ca, alias="client", cn="client-java8", storetype="PKCS12", storepass=STOREPASS
    )
    store = tmp_path / "java8.p12"
    kt.run(
        "keytool", "-J-Dkeystore.pkcs12.legacy", "-importkeystore", "-noprompt",
        "-srckeystore", modern, "-srcstoretype", "PKCS12", "-srcstorepass", STOREPASS,
        "-destkeystore", store, "-deststoretype", "PKCS12", "-deststorepass", STOREPASS,
    )  # fmt: skip
    return store


@pytest.mark.parametrize(
    ("make", "subject", "algorithm"),
    [
        (openssl_legacy_p12, "client-one", b"pbeWithSHA1And40BitRC2-CBC"),
        (java8_p12, "client-java8", b"pbeWithSHA1And3-KeyTripleDES-CBC"),
    ],
)
async def test_legacy_pkcs12_stores_are_read_without_openssls_legacy_provider(
    tmp_path: Path, pki: PKI, mtls_server: DemoServer, make: Any, subject: str, algorithm: bytes
) -> None:
    store = make(tmp_path, pki)
    info = subprocess.run(
        ["openssl", "pkcs12", "-info", "-noout", "-in", store, "-passin", f"pass:{STOREPASS}"],
        capture_output=True,
    )
    assert algorithm in info.stdout + info.stderr  # the store really is of the old kind
    config = config_for(tmp_path, pki, mtls_server.port, path=str(store), password=STOREPASS)
    async with running_engine(load_config(config, env={})) as engine:
        result = await engine.run(make_job("legacy", mtls_server.port))
    assert result.status == 200, result
    assert subject in (result.tls.client_certificate or "")
