"""Vault / OpenBao logins beyond AppRole and a token, against a real OpenBao dev server: TLS
certificate auth (PKCS#12 with a password, PEM with a separate key), JWT (a token signed by a
key made here, the file read again at each login) and Kubernetes (OpenBao's JWT method mounted
at ``kubernetes``: the Kubernetes API cannot run here, and its login request has the same shape,
``role`` + ``jwt``). Also the config.xml contract for choosing a method, and the back-off after a
refused login."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.config.config import AgentConfig, ProfileConfig, load_config
from agent.config.vault import KUBERNETES_TOKEN, VaultConfig
from agent.credentials.vault import Vault
from agent.credentials.vault.timing import RETRY_MAX, retry_delay
from agent.errors import ConfigError, VaultError
from tests.support.cli import arun_agent
from tests.support.configs import write_config
from tests.support.openbao import OpenBao, openbao_fixture, openbao_tls_fixture  # noqa: F401
from tests.support.pki import P12_PASSWORD, PKI

V = "ext.cred.hashicorp.vault"
P = "mid.httpclient.protocol"
READER = 'path "secret/data/agent/*" { capabilities = ["read"] }'
CERT_PASSWORD = "agent-cert-Pass-91"
PARTNER = ProfileConfig("partner", vault_path="agent/partner")


def serve_record(openbao: OpenBao, pki: PKI) -> None:
    """The record the partner profile reads, and the policy that lets a login read it."""
    data = base64.b64encode(pki.client_one.pkcs12(P12_PASSWORD)).decode()
    openbao.put("agent/partner", {"keystore": data, "password": P12_PASSWORD, "type": "pkcs12"})
    openbao.policy("agent-reader", READER)


async def display_name(vault: Vault) -> str:
    """Who the vault thinks the agent's token belongs to (``<mount>-<login name>``)."""
    name = await vault._session.call(
        "looking up the token", lambda c: c.auth.token.lookup_self()["data"]["display_name"]
    )
    return str(name)


class Signer:
    """An EC key that signs JWTs as a workload identity provider would."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_pem(self) -> str:
        return (
            self.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def token(self, sub: str, audience: str = "vault") -> str:
        now = int(time.time())
        claims = {"sub": sub, "aud": audience, "iat": now, "exp": now + 600}
        return jwt.encode(claims, self.key, algorithm="ES256")


# ---------------------------------------------------------------------- TLS certificate


async def test_cert_login_with_a_pkcs12_reads_the_record(
    openbao_tls: OpenBao, pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    serve_record(openbao_tls, pki)
    openbao_tls.cert_auth("agent", pki.ca.cert_pem(), ["agent-reader"])
    p12 = tmp_path / "agent.p12"
    p12.write_bytes(pki.client_two.pkcs12(CERT_PASSWORD))
    config = VaultConfig(
        openbao_tls.address,
        ca=openbao_tls.ca,
        client_cert=p12,
        client_cert_password=CERT_PASSWORD,
        role="agent",
    )
    assert config.login_method == "cert"
    async with Vault(config) as vault:
        material = await vault.load(PARTNER)
        assert await display_name(vault) == "cert-agent"
        assert vault.logins == 1
    assert material.client is not None and material.client.subject == pki.client_one.subject
    assert CERT_PASSWORD not in caplog.text


async def test_cert_login_with_a_pem_certificate_and_key_file(
    openbao_tls: OpenBao, pki: PKI, tmp_path: Path
) -> None:
    serve_record(openbao_tls, pki)
    openbao_tls.cert_auth("agent", pki.ca.cert_pem(), ["agent-reader"])
    cert, key = pki.client_two.write_pem(tmp_path, "agent")
    config = VaultConfig(openbao_tls.address, ca=openbao_tls.ca, client_cert=cert, client_key=key)
    async with Vault(config) as vault:  # no role: the vault tries every certificate entry
        material = await vault.load(PARTNER)
        assert await display_name(vault) == "cert-agent"
    assert material.client is not None


async def test_cert_login_with_a_certificate_the_vault_does_not_trust(
    openbao_tls: OpenBao, pki: PKI, tmp_path: Path
) -> None:
    serve_record(openbao_tls, pki)
    openbao_tls.cert_auth("agent", pki.ca.cert_pem(), ["agent-reader"])
    p12 = tmp_path / "stranger.p12"
    p12.write_bytes(pki.stranger.pkcs12(CERT_PASSWORD))
    config = VaultConfig(
        openbao_tls.address, ca=openbao_tls.ca, client_cert=p12, client_cert_password=CERT_PASSWORD
    )
    async with Vault(config) as vault:
        with pytest.raises(VaultError) as caught:
            await vault.load(PARTNER)
    message = str(caught.value)
    assert "certificate login failed" in message
    assert f"{V}.client_cert" in message and "auth/cert/certs" in message
    assert CERT_PASSWORD not in message


def test_a_client_certificate_that_cannot_be_opened_names_the_parameter(
    pki: PKI, tmp_path: Path
) -> None:
    p12 = tmp_path / "agent.p12"
    p12.write_bytes(pki.client_two.pkcs12(CERT_PASSWORD))
    wrong = VaultConfig("https://127.0.0.1:1", client_cert=p12, client_cert_password="nope-nope")
    with pytest.raises(ConfigError) as caught:
        Vault(wrong)
    assert caught.value.parameter == f"{V}.client_cert" and "password" in str(caught.value)
    assert "nope-nope" not in str(caught.value)
    missing = VaultConfig("https://127.0.0.1:1", client_cert=tmp_path / "absent.p12")
    with pytest.raises(ConfigError, match="cannot read .*absent.p12"):
        Vault(missing)


# ---------------------------------------------------------------------- JWT and Kubernetes


async def test_jwt_login_reads_the_token_file_again_at_each_login(
    openbao: OpenBao, pki: PKI, tmp_path: Path
) -> None:
    """The token's lifetime ends at 4 s; the login after it must read the rotated file."""
    serve_record(openbao, pki)
    signer = Signer()
    openbao.jwt_auth(
        "jwt", signer.public_pem, "agent", ["agent-reader"], token_ttl="3s", token_max_ttl="4s"
    )
    token_file = tmp_path / "token"
    token_file.write_text(signer.token("workload-1") + "\n")
    logins = asyncio.Event()
    config = VaultConfig(openbao.address, jwt_path=token_file, role="agent")
    assert config.login_method == "jwt"
    async with Vault(config, on_auth=lambda e: e == "login" and logins.set()) as vault:
        await vault.load(PARTNER)
        assert await display_name(vault) == "jwt-workload-1"
        token_file.write_text(signer.token("workload-2"))  # the identity provider rotates it
        logins.clear()
        await logins.wait()  # the renewal loop logged in again when max TTL neared
        assert await display_name(vault) == "jwt-workload-2"
        material = await vault.load(PARTNER)
    assert vault.logins >= 2 and material.client is not None


async def test_a_refused_jwt_is_not_tried_again_before_the_back_off(
    openbao: OpenBao, pki: PKI, tmp_path: Path
) -> None:
    serve_record(openbao, pki)
    openbao.jwt_auth("jwt", Signer().public_pem, "agent", ["agent-reader"])
    forged = Signer().token("workload-1")  # signed by a key the vault does not know
    token_file = tmp_path / "token"
    token_file.write_text(forged)
    async with Vault(VaultConfig(openbao.address, jwt_path=token_file, role="agent")) as vault:
        with pytest.raises(VaultError) as first:
            await vault.load(PARTNER)
        with pytest.raises(VaultError) as second:
            await vault.load(PARTNER)
        assert vault._session.attempts == 1  # the second load did not ask the vault
    assert "JWT login failed" in str(first.value) and f"{V}.jwt_path" in str(first.value)
    assert "next attempt in" in str(second.value)
    for caught in (first, second):
        assert forged not in str(caught.value) and forged.split(".")[2] not in str(caught.value)


async def test_a_missing_token_file_is_named(openbao: OpenBao, tmp_path: Path) -> None:
    openbao.jwt_auth("jwt", Signer().public_pem, "agent", ["default"])
    config = VaultConfig(openbao.address, jwt_path=tmp_path / "absent", role="agent")
    async with Vault(config) as vault:
        with pytest.raises(VaultError, match=r"cannot read .*jwt_path .*absent"):
            await vault.load(PARTNER)


async def test_kubernetes_login_from_config_xml(openbao: OpenBao, pki: PKI, tmp_path: Path) -> None:
    """The method named in config.xml, mounted at its default path ``kubernetes``."""
    serve_record(openbao, pki)
    signer = Signer()
    openbao.jwt_auth("kubernetes", signer.public_pem, "agent", ["agent-reader"])
    token_file = tmp_path / "sa-token"
    token_file.write_text(signer.token("system:serviceaccount:edge:agent"))
    path = write_config(
        tmp_path,
        {
            f"{V}.address": openbao.address,
            f"{V}.auth_method": "kubernetes",
            f"{V}.role": "agent",
            f"{V}.jwt_path": "sa-token",
        },
    )
    config = load_config(path, env={}).vault
    assert config.token_file == token_file and config.mount == "kubernetes"
    async with Vault(config) as vault:
        material = await vault.load(PARTNER)
        assert await display_name(vault) == "kubernetes-system:serviceaccount:edge:agent"
    assert material.client is not None


def source_note(report: dict[str, Any]) -> str:
    return next(str(n) for n in report["notes"] if n.startswith("material from"))


async def test_agent_validate_logs_in_and_reports_where_material_comes_from(
    openbao: OpenBao, pki: PKI, tmp_path: Path
) -> None:
    serve_record(openbao, pki)
    signer = Signer()
    openbao.jwt_auth("jwt", signer.public_pem, "agent", ["agent-reader"])
    forged = Signer().token("workload-1")
    (tmp_path / "token").write_text(signer.token("workload-1"))
    (tmp_path / "one.p12").write_bytes(pki.client_one.pkcs12(P12_PASSWORD))
    params = {
        "url": f"sqlite:///{tmp_path / 'queue.db'}",
        f"{V}.address": openbao.address,
        f"{V}.jwt_path": "token",
        f"{V}.role": "agent",
        f"{P}.partner.vault_path": "agent/partner",
        f"{P}.local.path": "one.p12",
    }
    config = write_config(tmp_path, params, {f"{P}.local.password": P12_PASSWORD})
    ran = await arun_agent("-c", str(config), "validate", "--json")
    assert ran.returncode == 0, ran
    notes = {p["name"]: source_note(p) for p in json.loads(ran.stdout)["profiles"]}
    assert notes == {
        "partner": f"material from the vault at {openbao.address} (KV secret/agent/partner, "
        "jwt login)",
        "local": f"material from files ({tmp_path / 'one.p12'})",
    }
    (tmp_path / "token").write_text(forged)  # the vault refuses it: validate says so, and fails
    refused = await arun_agent("-c", str(config), "validate", "--json")
    assert refused.returncode == 1
    assert "JWT login failed" in refused.stdout and forged not in refused.stdout + refused.stderr


# ---------------------------------------------------------------------- config.xml contract


def vault_of(tmp_path: Path, **params: str) -> AgentConfig:
    path = write_config(tmp_path, {f"{V}.{k}": v for k, v in params.items()})
    return load_config(path, env={})


def test_the_login_method_is_named_or_inferred_from_what_is_set(tmp_path: Path) -> None:
    def method(**params: str) -> str | None:
        return vault_of(tmp_path, address="http://127.0.0.1:8200", **params).vault.login_method

    assert method(token="t") == "token"
    assert method(token="t", role_id="r", secret_id="s") == "approle"
    assert method(token="t", client_cert="agent.p12") == "cert"
    assert method(jwt_path="jwt", role="agent") == "jwt"
    assert method(token="t", auth_method="token", client_cert="agent.p12") == "token"
    assert method() is None
    k8s = vault_of(tmp_path, auth_method="kubernetes", role="agent").vault
    assert k8s.token_file == KUBERNETES_TOKEN and k8s.mount == "kubernetes"
    mounted = vault_of(tmp_path, auth_method="jwt", role="a", jwt_path="j", auth_mount="/oidc/")
    assert mounted.vault.mount == "oidc"


def test_a_bad_login_method_names_the_parameter_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        vault_of(tmp_path, address="http://127.0.0.1:8200", auth_method="ldap")
    assert caught.value.parameter == f"{V}.auth_method" and caught.value.line == 3
    assert "token, approle, cert, jwt, kubernetes" in str(caught.value)
    with pytest.raises(ConfigError) as missing:
        vault_of(tmp_path, auth_method="jwt", role="agent")
    assert f"needs {V}.jwt_path" in str(missing.value)
    with pytest.raises(ConfigError, match=f"needs {V}.client_cert"):
        vault_of(tmp_path, auth_method="cert")


def test_the_client_certificate_password_is_a_secret(tmp_path: Path) -> None:
    config = vault_of(tmp_path, client_cert="agent.p12", **{"client_cert.password": "pw-s3cret"})
    assert config.vault.client_cert_password == "pw-s3cret"
    assert "pw-s3cret" not in repr(config)
    assert config.vault.client_cert == tmp_path / "agent.p12"


# ---------------------------------------------------------------------- back-off


def test_retry_delay_backs_off_to_a_cap_with_jitter() -> None:
    most = [retry_delay(None, n, rand=lambda: 1.0) for n in range(1, 9)]
    assert most == [1.0, 2.0, 4.0, 8.0, 16.0, RETRY_MAX, RETRY_MAX, RETRY_MAX]
    least = [retry_delay(None, n, rand=lambda: 0.0) for n in range(1, 9)]
    assert least == [d / 2 for d in most]
    soon = time.time() + 8  # expiry in 8 s: never wait past a quarter of what is left
    assert retry_delay(soon, 6, rand=lambda: 1.0) <= 2.0
