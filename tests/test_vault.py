"""Key material from a real OpenBao dev server: KV v2 records (PKCS#12 and PEM), token and AppRole
auth with renewal and re-login, PKI-issued certificates and their renewal, TLS to the vault,
namespaces, outages with and without cached material, and mTLS calls made with vault material."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from agent.commands.demo.demoserver import DemoServer
from agent.commands.demo.pki import CA
from agent.config.config import AgentConfig, ProfileConfig
from agent.config.vault import VaultConfig
from agent.credentials.sources import ProfileMaterial
from agent.credentials.vault import Vault, parse_pki
from agent.engine.engine import Engine
from agent.errors import VaultError
from agent.jobs.results import Result
from agent.tls.identities import Identities
from tests.support.configs import write_config
from tests.support.jobs import make_job
from tests.support.openbao import OpenBao, openbao_fixture, openbao_tls_fixture  # noqa: F401
from tests.support.pki import P12_PASSWORD, PKI

P = "mid.httpclient.protocol"
V = "ext.cred.hashicorp.vault"
READER = 'path "secret/data/agent/*" { capabilities = ["read"] }'


def p12_record(pki: PKI, **extra: str) -> dict[str, str]:
    data = base64.b64encode(pki.client_one.pkcs12(P12_PASSWORD)).decode()
    return {"keystore": data, "password": P12_PASSWORD, "type": "pkcs12"} | extra


def kv(name: str, path: str) -> ProfileConfig:
    return ProfileConfig(name, vault_path=path)


def pki_profile(name: str, target: str, cn: str) -> ProfileConfig:
    return ProfileConfig(name, vault_pki=target, vault_pki_common_name=cn)


class Events:
    """Collects a Vault's auth events and lets a test await the n-th of one kind."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, event: str) -> None:
        self.seen.append(event)
        self._changed.set()

    async def wait(self, event: str, count: int) -> None:
        while self.seen.count(event) < count:
            self._changed.clear()
            await self._changed.wait()


# ---------------------------------------------------------------------- KV v2 records


async def test_kv_pkcs12_record_loads(openbao: OpenBao, pki: PKI) -> None:
    openbao.put("agent/partner", p12_record(pki, truststore=pki.ca.cert_pem().decode()))
    async with Vault(VaultConfig(openbao.address, token=openbao.root_token)) as vault:
        material = await vault.load(kv("partner", "agent/partner"))
    assert material.client is not None
    assert material.client.subject == pki.client_one.subject
    assert material.trust is not None and material.trust[0].subject == pki.ca.cert.subject


async def test_kv_pem_record_with_chain_loads(openbao: OpenBao) -> None:
    root = CA("Vault Test Root")
    issuing = root.intermediate("Vault Test Issuing")
    leaf = issuing.issue("pem-client", client=True)
    openbao.put(
        "agent/pem",
        {
            "certificate": leaf.cert_pem().decode(),
            "private_key": leaf.key_pem().decode(),
            "ca_chain": issuing.cert_pem().decode(),
        },
    )
    async with Vault(VaultConfig(openbao.address, token=openbao.root_token)) as vault:
        material = await vault.load(kv("pem", "/agent/pem"))
    assert material.client is not None
    assert [c.subject for c in material.client.chain] == [leaf.cert.subject, issuing.cert.subject]
    assert material.trust is None  # no truststore anywhere: the system CAs


async def test_kv_record_in_a_namespace_and_custom_mount(openbao: OpenBao, pki: PKI) -> None:
    openbao.root.adapter.post("/v1/sys/namespaces/team", json={})
    team = openbao.client("team")
    team.sys.enable_secrets_engine("kv", path="keys", options={"version": "2"})
    openbao.put("agent/partner", p12_record(pki), mount="keys", namespace="team")
    config = VaultConfig(openbao.address, token=openbao.root_token, kv_mount="keys")
    async with Vault(config) as vault:  # without the namespace the mount is not there
        with pytest.raises(VaultError, match="keys/agent/partner"):
            await vault.load(kv("partner", "agent/partner"))
    config = VaultConfig(
        openbao.address, token=openbao.root_token, kv_mount="keys/", namespace="team"
    )
    async with Vault(config) as vault:
        material = await vault.load(kv("partner", "agent/partner"))
    assert material.client is not None and material.client.subject == pki.client_one.subject


async def test_missing_record_names_address_and_path(openbao: OpenBao) -> None:
    async with Vault(VaultConfig(openbao.address, token=openbao.root_token)) as vault:
        with pytest.raises(VaultError) as caught:
            await vault.load(kv("partner", "agent/nowhere"))
    assert caught.value.kind == "vault"
    message = str(caught.value)
    assert openbao.address in message and "secret/agent/nowhere" in message
    assert "profile partner" in message and "404" in message
    assert openbao.root_token not in message


# ---------------------------------------------------------------------- TLS to the vault


async def test_tls_to_the_vault_trusts_exactly_the_configured_ca(
    openbao_tls: OpenBao, pki: PKI
) -> None:
    openbao_tls.put("agent/partner", p12_record(pki))
    assert openbao_tls.ca is not None
    config = VaultConfig(openbao_tls.address, token=openbao_tls.root_token, ca=openbao_tls.ca)
    async with Vault(config) as vault:
        material = await vault.load(kv("partner", "agent/partner"))
    assert material.client is not None and material.client.subject == pki.client_one.subject
    untrusted = VaultConfig(openbao_tls.address, token=openbao_tls.root_token)
    async with Vault(untrusted) as vault:
        with pytest.raises(VaultError, match=f"TLS to the vault failed.*{V}.ca"):
            await vault.load(kv("partner", "agent/partner"))


async def test_a_rotated_kv_record_is_read_again_and_handed_over(
    openbao: OpenBao, pki: PKI
) -> None:
    openbao.put("agent/partner", p12_record(pki))
    rotated: asyncio.Queue[tuple[str, ProfileMaterial]] = asyncio.Queue()
    config = VaultConfig(openbao.address, token=openbao.root_token, kv_refresh_seconds=0.2)
    on_renew = lambda name, material: rotated.put_nowait((name, material))  # noqa: E731
    async with Vault(config, on_renew=on_renew) as vault:
        first = await vault.load(kv("partner", "agent/partner"))
        assert await vault.load(kv("partner", "agent/partner")) is first  # held, not re-read
        two = base64.b64encode(pki.client_two.pkcs12(P12_PASSWORD)).decode()
        openbao.put("agent/partner", {"keystore": two, "password": P12_PASSWORD})
        name, material = await rotated.get()
        assert name == "partner" and material.client is not None
        assert material.client.subject == pki.client_two.subject
        assert (await vault.load(kv("partner", "agent/partner"))) is material
    assert rotated.empty()  # unchanged re-reads hand nothing over


async def test_a_failed_re_read_keeps_the_record_read_before(openbao: OpenBao, pki: PKI) -> None:
    openbao.put("agent/partner", p12_record(pki))
    kept = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "keeps the record read before" in record.getMessage():
                kept.set()

    watch = Watch()
    logging.getLogger("agent.vault").addHandler(watch)
    config = VaultConfig(openbao.address, token=openbao.root_token, kv_refresh_seconds=0.2)
    try:
        async with Vault(config) as vault:
            first = await vault.load(kv("partner", "agent/partner"))
            openbao.stop()
            await kept.wait()  # the background re-read failed and said so
            assert await vault.load(kv("partner", "agent/partner")) is first
    finally:
        logging.getLogger("agent.vault").removeHandler(watch)


# ---------------------------------------------------------------------- tokens and AppRole


async def test_approle_login_reads_records_its_policy_allows(openbao: OpenBao, pki: PKI) -> None:
    openbao.put("agent/partner", p12_record(pki))
    openbao.put("other/secret", p12_record(pki))
    openbao.policy("agent-reader", READER)
    role_id, secret_id = openbao.approle("agent", ["agent-reader"])
    config = VaultConfig(openbao.address, role_id=role_id, secret_id=secret_id)
    async with Vault(config) as vault:
        material = await vault.load(kv("partner", "agent/partner"))
        assert material.client is not None
        assert material.client.subject == pki.client_one.subject
        with pytest.raises(VaultError, match="permission denied") as caught:
            await vault.load(kv("other", "other/secret"))
        assert secret_id not in str(caught.value)
        await vault.check()
        assert vault.logins >= 1


async def test_wrong_secret_id_says_what_to_check_without_the_secret(openbao: OpenBao) -> None:
    role_id, _ = openbao.approle("agent", ["default"])
    wrong = "00000000-1111-2222-3333-444444444444"
    async with Vault(VaultConfig(openbao.address, role_id=role_id, secret_id=wrong)) as vault:
        with pytest.raises(VaultError) as caught:
            await vault.load(kv("partner", "agent/partner"))
    message = str(caught.value)
    assert "AppRole login failed" in message and f"{V}.secret_id" in message
    assert wrong not in message and f"{V}.role_id" in message


async def test_approle_logs_in_again_when_its_token_is_revoked(openbao: OpenBao, pki: PKI) -> None:
    openbao.put("agent/partner", p12_record(pki))
    openbao.policy("agent-reader", READER)
    role_id, secret_id = openbao.approle("agent", ["agent-reader"])
    config = VaultConfig(
        openbao.address, role_id=role_id, secret_id=secret_id, kv_refresh_seconds=0
    )  # refresh 0: every load asks the vault
    async with Vault(config) as vault:
        await vault.load(kv("partner", "agent/partner"))
        assert vault.logins == 1
        assert openbao.revoke_all_but_root() >= 1
        material = await vault.load(kv("partner", "agent/partner"))
        assert vault.logins == 2
    assert material.client is not None and material.client.subject == pki.client_one.subject


async def test_revoked_token_gives_a_vault_error_naming_the_parameter(openbao: OpenBao) -> None:
    openbao.policy("agent-reader", READER)
    token = openbao.root.auth.token.create(policies=["agent-reader"], ttl="1h")["auth"][
        "client_token"
    ]
    openbao.root.auth.token.revoke(token)
    async with Vault(VaultConfig(openbao.address, token=token)) as vault:
        with pytest.raises(VaultError) as caught:
            await vault.load(kv("partner", "agent/partner"))
        with pytest.raises(VaultError):
            await vault.check()
    message = str(caught.value)
    assert "token lookup failed" in message and f"{V}.token" in message
    assert token not in message


async def test_short_lived_token_is_renewed_before_it_expires(openbao: OpenBao, pki: PKI) -> None:
    """A 3 s token outlives its first TTL only because the agent renews it."""
    openbao.put("agent/partner", p12_record(pki))
    openbao.policy("agent-reader", READER)
    created = openbao.root.auth.token.create(
        policies=["agent-reader"], ttl="3s", explicit_max_ttl="1h", renewable=True
    )
    token = created["auth"]["client_token"]
    events = Events()
    async with Vault(VaultConfig(openbao.address, token=token), on_auth=events) as vault:
        await vault.check()  # learns the TTL, which schedules the renewal
        await events.wait("renew", 2)  # two renewals: well past the original 3 s
        material = await vault.load(kv("partner", "agent/partner"))
        assert vault.renewals >= 2
    assert material.client is not None


async def test_approle_logs_in_again_when_renewal_reaches_max_ttl(
    openbao: OpenBao, pki: PKI
) -> None:
    openbao.put("agent/partner", p12_record(pki))
    openbao.policy("agent-reader", READER)
    role_id, secret_id = openbao.approle(
        "agent", ["agent-reader"], token_ttl="3s", token_max_ttl="4s"
    )
    events = Events()
    config = VaultConfig(openbao.address, role_id=role_id, secret_id=secret_id)
    async with Vault(config, on_auth=events) as vault:
        await vault.check()
        await events.wait("login", 2)  # the renewal loop logged in again by itself
        material = await vault.load(kv("partner", "agent/partner"))
    assert vault.logins >= 2
    assert material.client is not None


# ---------------------------------------------------------------------- PKI engine


def test_pki_targets_are_parsed_as_documented() -> None:
    assert parse_pki("client", "p").path == "pki/issue/client"
    assert parse_pki("pki_int/issue/client", "p").path == "pki_int/issue/client"
    sign = parse_pki("/team/pki/sign/agents/", "p")
    assert (sign.mount, sign.verb, sign.role) == ("team/pki", "sign", "agents")
    with pytest.raises(Exception, match=r"vault_pki must be <mount>/issue/<role>"):
        parse_pki("pki/roles/client", "p")


async def test_pki_issues_and_signs_certificates_for_the_common_name(
    openbao: OpenBao, pki: PKI
) -> None:
    openbao.pki(pki.ca, "agents", ttl="1h")
    async with Vault(VaultConfig(openbao.address, token=openbao.root_token)) as vault:
        issued = await vault.load(pki_profile("issued", "pki/issue/agents", "agent-issued"))
        signed = await vault.load(pki_profile("signed", "pki/sign/agents", "agent-signed"))
        bare = await vault.load(pki_profile("bare", "agents", "agent-bare"))
        again = await vault.load(pki_profile("issued", "pki/issue/agents", "agent-issued"))
        days = vault.days_left()
    for material, cn in ((issued, "agent-issued"), (signed, "agent-signed"), (bare, "agent-bare")):
        assert material.client is not None
        assert material.client.subject == f"CN={cn}"
        assert material.client.leaf.issuer == pki.ca.cert.subject
    assert again is issued  # not due for renewal: no second certificate
    assert set(days) == {"issued", "signed", "bare"} and 0 < days["issued"] < 1 / 24 + 0.001


# ---------------------------------------------------------------------- outages


async def test_vault_down_uses_cached_material_and_fails_without_it(
    openbao: OpenBao, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    openbao.put("agent/partner", p12_record(pki))
    config = VaultConfig(openbao.address, token=openbao.root_token, kv_refresh_seconds=0)
    async with Vault(config) as vault:  # refresh 0: every load asks the vault
        first = await vault.load(kv("partner", "agent/partner"))
        openbao.stop()
        with caplog.at_level(logging.WARNING, logger="agent.vault"):
            again = await vault.load(kv("partner", "agent/partner"))
        assert again is first
        warned = [r.getMessage() for r in caplog.records if r.name == "agent.vault"]
        assert any("cached material" in m and "profile partner" in m for m in warned), warned
        with pytest.raises(VaultError) as caught:
            await vault.load(kv("fresh", "agent/fresh"))
        with pytest.raises(VaultError, match="cannot connect"):
            await vault.check()
    assert caught.value.kind == "vault"
    message = str(caught.value)
    assert openbao.address in message and "secret/agent/fresh" in message
    assert "cannot connect" in message
    assert all(openbao.root_token not in m for m in (message, *warned))


# ---------------------------------------------------------------------- end to end


@asynccontextmanager
async def engine(
    tmp: Path, params: dict[str, str], on_renew: Callable[[str, ProfileMaterial], None] | None
) -> AsyncIterator[tuple[Engine, Identities]]:
    """config.xml → the Engine the daemon runs, and its state's identities."""
    config = AgentConfig.from_xml(write_config(tmp, params).read_bytes(), base_dir=tmp)
    eng = Engine(config)
    if on_renew is not None:
        eng.on_vault_renew.append(on_renew)
    try:
        yield eng, eng.state.identities
    finally:
        await eng.close()


def seen_client(result: Result) -> str:
    assert result.state == "processed" and result.status == 200, result.error
    assert result.body is not None
    client: str = json.loads(result.body)["client"]
    return client


async def test_mtls_call_with_a_keystore_from_the_vault(
    tmp_path: Path, openbao: OpenBao, pki: PKI, mtls_server: DemoServer
) -> None:
    openbao.put("agent/partner", p12_record(pki, truststore=pki.ca.cert_pem().decode()))
    params = {
        "agent.resolve": "alpha.test:127.0.0.1",
        f"{P}.vaulted.vault_path": "agent/partner",
        f"{P}.later.vault_path": "agent/later",
        f"{V}.address": openbao.address,
        f"{V}.token": openbao.root_token,
    }
    async with engine(tmp_path, params, None) as (caller, _):
        result = await caller.run(make_job("vault-kv-1", mtls_server.port, profile="vaulted"))
        # a job names profiles only: there is no way to hand it a vault path of its own
        stray = await caller.run(make_job("vault-kv-2", mtls_server.port, profile="agent/other"))
        openbao.stop()
        down = await caller.run(make_job("vault-kv-3", mtls_server.port, profile="later"))
        still = await caller.run(make_job("vault-kv-4", mtls_server.port, profile="vaulted"))
    assert seen_client(result) == pki.client_one.subject
    assert result.tls.client_certificate == pki.client_one.subject
    assert mtls_server.requests[0]["client"] == pki.client_one.subject
    assert stray.error is not None and stray.error.kind == "unknown_profile"
    assert down.error is not None and down.error.kind == "vault", down
    assert "secret/agent/later" in down.error.message
    assert openbao.root_token not in down.error.message
    assert seen_client(still) == pki.client_one.subject  # loaded material keeps working


async def test_pki_certificate_is_accepted_and_renewed_into_new_connections(
    tmp_path: Path, openbao: OpenBao, pki: PKI, mtls_server: DemoServer
) -> None:
    """The vault issues under the CA the server trusts; a renewal swaps the identity in."""
    openbao.pki(pki.ca, "agents", ttl="6s")
    ca_file = pki.write_ca(tmp_path)
    params = {
        "agent.resolve": "alpha.test:127.0.0.1",
        f"{P}.issued.vault_pki": "pki/issue/agents",
        f"{P}.issued.vault_pki.common_name": "agent-from-vault",
        f"{P}.issued.truststore": str(ca_file),
        f"{V}.address": openbao.address,
        f"{V}.token": openbao.root_token,
    }
    renewed: asyncio.Queue[ProfileMaterial] = asyncio.Queue()

    def on_renew(name: str, material: ProfileMaterial) -> None:
        renewed.put_nowait(material)

    async with engine(tmp_path, params, on_renew) as (caller, credentials):
        first = await caller.run(make_job("vault-pki-1", mtls_server.port, profile="issued"))
        assert seen_client(first) == "CN=agent-from-vault"
        old = await credentials.for_profile(credentials.profiles["issued"])
        new_material = await renewed.get()
        new = await credentials.for_profile(credentials.profiles["issued"])
        second = await caller.run(make_job("vault-pki-2", mtls_server.port, profile="issued"))
    assert seen_client(second) == "CN=agent-from-vault"
    assert old.material.client is not None and new_material.client is not None
    assert new.key != old.key and new.material is new_material
    assert new_material.client.leaf.serial_number != old.material.client.leaf.serial_number
    assert [r["client"] for r in mtls_server.requests[-2:]] == ["CN=agent-from-vault"] * 2


async def test_an_unreachable_vault_is_not_blamed_on_the_token() -> None:
    from tests.support.servers import free_port

    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with Vault(VaultConfig(address, token="s.never-shown")) as vault:
        with pytest.raises(VaultError) as caught:
            await vault.load(kv("partner", "agent/partner"))
    message = str(caught.value)
    assert "cannot connect" in message and address in message
    assert "token is expired" not in message and "s.never-shown" not in message
