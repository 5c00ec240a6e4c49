"""``inspect_profile``: what ``agent validate`` reports for real keystores."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from agent.commands.demo.pki import CA, Issued
from agent.credentials.formats import KeyMaterial, load_keystore, load_truststore
from agent.credentials.inspect import inspect_profile, report_error
from agent.credentials.sources import ProfileMaterial
from agent.errors import KeystoreError
from tests.support import keytool as kt
from tests.support.keytool import pem

PASS = "Inspect-Pass-42"


@pytest.fixture(scope="module")
def root() -> CA:
    return CA("Inspect Root CA")


@pytest.fixture(scope="module")
def inter(root: CA) -> CA:
    return root.intermediate("Inspect Issuing CA")


def material(issued: Issued, *extra: bytes) -> KeyMaterial:
    return load_keystore(b"".join(extra) or issued.chain_pem() + issued.key_pem(), origin="t")


def test_good_profile_reports_names_dates_chain_and_trust(root: CA, inter: CA) -> None:
    issued = inter.issue("good-client", names=("good.example", "10.0.0.7"), client=True, days=200)
    report = inspect_profile(
        "partner", ProfileMaterial(material(issued), (root.cert,)), warn_days=30
    )
    assert report.ok and report.loaded and report.problems == () and report.warnings == ()
    assert report.subject == issued.subject
    assert report.issuer == inter.cert.subject.rfc4514_string()
    assert report.sans == ("DNS:good.example", "IP:10.0.0.7")
    assert report.days_left in (199, 200)
    assert report.key_matches and report.chain_ordered and report.chain_complete and report.trusted
    # the keystore holds leaf and intermediate; the root comes from the truststore
    assert report.chain == (issued.subject, inter.cert.subject.rfc4514_string())
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["ok"] is True and as_json["not_after"].startswith(
        f"{issued.cert.not_valid_after_utc:%Y-%m-%d}"
    )
    text = report.format_text()
    assert text.startswith("profile partner: OK") and issued.subject in text
    assert "verified by truststore (1 certificate)" in text


def test_expired_keytool_certificate_is_a_problem(tmp_path: Path) -> None:
    store = tmp_path / "old.p12"
    kt.genkeypair(store, "old", "expired-client", storepass=PASS, days=1, startdate="-10d")
    m = load_keystore(store.read_bytes(), origin="t", password=PASS)
    report = inspect_profile("old", ProfileMaterial(m, (m.leaf,)), warn_days=30)
    assert not report.ok
    assert [p for p in report.problems if "the client certificate expired on" in p]
    assert report.days_left is not None and report.days_left < 0
    assert report.trusted  # expiry is reported on its own, not as a trust failure
    assert "PROBLEM:   the client certificate expired" in report.format_text()


def test_expiring_soon_is_a_warning_and_now_can_be_given(root: CA) -> None:
    issued = root.issue("soon", client=True, days=10)
    report = inspect_profile("soon", ProfileMaterial(material(issued), (root.cert,)), warn_days=30)
    assert report.ok and len(report.warnings) == 1
    assert "expires in 9 days" in report.warnings[0] or "expires in 10 days" in report.warnings[0]
    assert "mid.cert.expiry.warn_days=30" in report.warnings[0]
    quiet = inspect_profile("soon", ProfileMaterial(material(issued), (root.cert,)), warn_days=5)
    assert quiet.warnings == ()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=11)
    expired = inspect_profile(
        "soon", ProfileMaterial(material(issued), (root.cert,)), warn_days=5, now=later
    )
    assert any("expired on" in p for p in expired.problems)


def test_not_yet_valid_is_a_problem(root: CA) -> None:
    issued = root.issue("future", client=True, not_before_days=3, days=30)
    report = inspect_profile("f", ProfileMaterial(material(issued), (root.cert,)), warn_days=30)
    assert any("is not valid yet" in p for p in report.problems)


def test_reordered_chain_is_a_warning(root: CA, inter: CA) -> None:
    issued = inter.issue("shuffled", client=True)
    m = material(issued, pem(root.cert, inter.cert, issued.cert), issued.key_pem())
    report = inspect_profile("s", ProfileMaterial(m, (root.cert,)), warn_days=30)
    assert report.ok and report.chain_ordered is False
    assert any("given out of order" in w for w in report.warnings)
    assert any("reordered leaf → root" in n for n in report.notes)


def test_missing_issuer_is_named_and_left_to_the_partner(root: CA, inter: CA) -> None:
    """Leaf only, its issuer nowhere here: the partner may hold it, so a warning naming it."""
    issued = inter.issue("leaf-only", client=True)
    m = material(issued, issued.cert_pem(), issued.key_pem())  # leaf only
    report = inspect_profile("gap", ProfileMaterial(m, (root.cert,)), warn_days=30)
    assert report.chain_complete is False and report.trusted is False
    assert report.ok and report.problems == ()
    [warning] = report.warnings
    issuer = f"'{inter.cert.subject.rfc4514_string()}'"
    assert f"the issuer {issuer} of the client certificate" in warning
    assert "is in neither the keystore nor the truststore" in warning
    assert f"The partner must trust {issuer}" in warning
    assert "intermediate" not in warning  # the agent cannot tell what the missing one is


def test_missing_root_above_a_shipped_intermediate(root: CA, inter: CA) -> None:
    """Leaf + intermediate in the keystore, the root only at the partner: "intermediate" names
    the CA certificate that is present, "the issuer" the one that is not."""
    issued = inter.issue("with-intermediate", client=True)
    server_ca = CA("Server Side CA")
    report = inspect_profile(
        "i", ProfileMaterial(material(issued), (server_ca.cert,)), warn_days=30
    )
    assert report.ok and report.chain_complete is False
    [warning] = report.warnings
    assert f"of the intermediate '{inter.cert.subject.rfc4514_string()}'" in warning
    assert f"The partner must trust '{root.cert.subject.rfc4514_string()}'" in warning


def test_chain_not_reaching_the_truststore_is_the_partners_to_trust(root: CA) -> None:
    """The partner issued the client certificate; the truststore holds the server's CA."""
    issued = root.issue("trusted-elsewhere", client=True)
    other = CA("Some Other CA")
    report = inspect_profile("u", ProfileMaterial(material(issued), (other.cert,)), warn_days=30)
    assert report.trusted is False and report.ok
    assert report.chain_complete is False  # the issuer is nowhere to be found
    with_root = material(issued, issued.chain_pem(), root.cert_pem(), issued.key_pem())
    report = inspect_profile("u", ProfileMaterial(with_root, (other.cert,)), warn_days=30)
    assert report.chain_complete is True and report.trusted is False and report.ok
    [warning] = report.warnings
    assert "does not verify the client chain: it ends at the root" in warning
    assert f"the partner must trust '{root.cert.subject.rfc4514_string()}'" in warning


def test_chain_reaching_the_truststore_but_failing_is_a_problem(root: CA) -> None:
    """The truststore holds the client's root, yet the chain does not verify: broken for
    anyone, so a problem (here: a "CA" the root issued without CA rights)."""
    not_a_ca = root.issue("not-a-ca", client=True)
    signer = CA.__new__(CA)  # a "CA" whose certificate has basicConstraints CA=false
    signer.key, signer.cert, signer.parent = not_a_ca.key, not_a_ca.cert, root
    m = material(signer.issue("below-not-a-ca", client=True))
    report = inspect_profile("b", ProfileMaterial(m, (root.cert,)), warn_days=30)
    assert report.trusted is False and not report.ok
    assert any("does not verify the client chain" in p for p in report.problems)


def test_expiry_days_are_whole_days_elapsed(root: CA) -> None:
    issued = root.issue("yesterday", client=True, days=10)
    end = issued.cert.not_valid_after_utc
    m = ProfileMaterial(material(issued), (root.cert,))
    expired = inspect_profile("y", m, warn_days=30, now=end + dt.timedelta(hours=36))
    assert expired.days_left == -1
    assert "(expired 1 day ago)" in expired.format_text()
    assert any("(expired 1 day ago): renew it" in p for p in expired.problems)
    soon = inspect_profile("y", m, warn_days=30, now=end - dt.timedelta(hours=36))
    assert soon.days_left == 1 and "(1 day left)" in soon.format_text()
    assert any("expires in 1 day (on" in w for w in soon.warnings)


def test_system_cas_not_verifying_a_private_ca_is_only_a_warning(root: CA) -> None:
    issued = root.issue("private", client=True)
    m = material(issued, issued.chain_pem(), root.cert_pem(), issued.key_pem())
    report = inspect_profile("sys", ProfileMaterial(m, None), warn_days=30)
    assert report.trust_source == "system CAs" and report.trusted is False
    assert report.ok and any("system CAs does not verify" in w for w in report.warnings)


def test_keytool_jks_truststore_verifies_a_keytool_keystore(tmp_path: Path, inter: CA) -> None:
    ks = tmp_path / "client.jks"
    kt.ca_signed_keystore(ks, inter, alias="me", cn="jks-client", storetype="JKS", storepass=PASS)
    m = load_keystore(ks.read_bytes(), origin="t", password=PASS)
    (tmp_path / "root.pem").write_bytes(pem(inter.chain[-1]))
    kt.import_cert(tmp_path / "trust.jks", "root", tmp_path / "root.pem", storetype="JKS",
                   storepass=PASS)  # fmt: skip
    trust = load_truststore((tmp_path / "trust.jks").read_bytes(), origin="t", password=PASS)
    report = inspect_profile("jks", ProfileMaterial(m, trust), warn_days=30)
    assert report.ok and report.trusted and report.chain_complete
    assert report.subject == "CN=jks-client"


def test_profile_without_client_certificate(root: CA) -> None:
    report = inspect_profile(
        "plain", ProfileMaterial(None, (root.cert,), ("no client certificate",)), warn_days=30
    )
    assert report.ok and report.subject is None and report.trusted is None
    assert report.format_text() == "profile plain: OK\n  note:      no client certificate"


def test_report_error_carries_the_message_not_the_password(tmp_path: Path) -> None:
    store = tmp_path / "k.p12"
    kt.genkeypair(store, "k", "k", storepass=PASS)
    with pytest.raises(KeystoreError) as err:
        load_keystore(store.read_bytes(), origin="profile k (keystore k.p12)", password="wrong-1")
    report = report_error("k", err.value)
    assert not report.ok and not report.loaded
    assert report.problems == ("profile k (keystore k.p12): the PKCS#12 keystore password is "
                               "wrong: check it",)  # fmt: skip
    dumped = json.dumps(report.to_dict())
    assert "wrong-1" not in dumped and PASS not in dumped
    assert report.format_text().startswith("profile k: FAIL\n  PROBLEM:   profile k")
