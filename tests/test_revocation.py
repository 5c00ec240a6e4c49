"""Revocation of the partner's server certificate, against a CA run here: a CRL served by nginx
on 127.0.0.1 (the certificate's distribution point), ``openssl ocsp`` answering from the CA's
index (its AIA), and CRL files; ``.revocation`` soft and hard."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.commands.demo.demoserver import DemoServer
from agent.commands.demo.pki import CA, Issued
from agent.config.config import load_config
from agent.engine.engine import Engine
from agent.jobs.results import Result
from agent.tls.revocation import RevocationChecker, RevocationPolicy
from tests.support.configs import P, profile_config
from tests.support.engines import running_engine
from tests.support.jobs import make_job
from tests.support.pki import PKI
from tests.support.revocation import OcspResponder, Revocations, StaticNginx, server_cert

pytestmark = pytest.mark.timeout(60)


@dataclass
class CAWorld:
    revocations: Revocations
    nginx: StaticNginx
    ocsp: OcspResponder
    good: Issued  # alpha.test
    revoked: Issued  # beta.test


@pytest.fixture
def world(tmp_path: Path, pki: PKI) -> Iterator[CAWorld]:
    revocations = Revocations(pki.ca, tmp_path / "ca")
    nginx = StaticNginx(tmp_path / "nginx", revocations.directory)
    ocsp = OcspResponder(tmp_path / "ocsp", revocations)
    urls = {"crl_url": f"{nginx.url}/ca.crl", "ocsp_url": ocsp.url}
    good = server_cert(pki.ca, "alpha.test", **urls)
    revoked = server_cert(pki.ca, "beta.test", **urls)
    revocations.add(good, revoked)
    revocations.revoke(revoked)
    with nginx, ocsp:
        yield CAWorld(revocations, nginx, ocsp, good, revoked)


@pytest.fixture
async def partner(pki: PKI, world: CAWorld) -> AsyncIterator[DemoServer]:
    async with DemoServer(pki.ca, {"alpha.test": world.good, "beta.test": world.revoked}) as s:
        yield s


async def engine_for(tmp_path: Path, pki: PKI, port: int, **profile: str) -> Engine:
    params = {f"{P}.partner.{k}": v for k, v in profile.items()}
    return Engine(load_config(profile_config(tmp_path, pki, port, **params), env={}))


async def both(engine: Engine, port: int) -> tuple[Result, Result]:
    good = await engine.run(make_job("good", port, host="alpha.test"))
    revoked = await engine.run(make_job("revoked", port, host="beta.test"))
    return good, revoked


def kind(result: Result) -> str | None:
    return result.error.kind if result.error else None


async def test_ocsp_says_good_and_revoked(
    tmp_path: Path, pki: PKI, world: CAWorld, partner: DemoServer
) -> None:
    config = load_config(
        profile_config(tmp_path, pki, partner.port, **{f"{P}.partner.revocation": "hard"}), env={}
    )
    async with running_engine(config) as engine:
        good, revoked = await both(engine, partner.port)
    assert good.status == 200, good
    assert good.tls.revocation == f"hard: good (ocsp {world.ocsp.url})"
    assert kind(revoked) == "certificate_revoked", revoked
    assert revoked.error is not None and f"ocsp {world.ocsp.url}" in revoked.error.message
    assert f"serial {world.revoked.cert.serial_number:x}" in revoked.error.message
    assert not any(r["sni"] == "beta.test" for r in partner.requests)  # nothing was sent


async def test_without_ocsp_the_crl_at_the_distribution_point_answers(
    tmp_path: Path, pki: PKI, world: CAWorld, partner: DemoServer
) -> None:
    world.ocsp.stop()
    config = load_config(
        profile_config(tmp_path, pki, partner.port, **{f"{P}.partner.revocation": "hard"}), env={}
    )
    async with running_engine(config) as engine:
        good, revoked = await both(engine, partner.port)
    assert good.status == 200 and good.tls.revocation == (
        f"hard: good (crl {world.nginx.url}/ca.crl)"
    )
    assert kind(revoked) == "certificate_revoked"


async def test_a_crl_file_answers_first(
    tmp_path: Path, pki: PKI, world: CAWorld, partner: DemoServer
) -> None:
    world.ocsp.stop()
    world.nginx.stop()  # only the file is left
    crl = str(world.revocations.crl_path)
    params = {f"{P}.partner.revocation": "hard", f"{P}.partner.crl": crl}
    config = load_config(profile_config(tmp_path, pki, partner.port, **params), env={})
    async with running_engine(config) as engine:
        good, revoked = await both(engine, partner.port)
    assert good.status == 200 and good.tls.revocation == f"hard: good (crl file {crl})"
    assert kind(revoked) == "certificate_revoked"


@pytest.mark.parametrize("mode", ["hard", "soft"])
async def test_no_answer_fails_hard_and_goes_on_soft(
    tmp_path: Path, pki: PKI, world: CAWorld, partner: DemoServer, mode: str
) -> None:
    world.ocsp.stop()
    world.nginx.stop()
    config = load_config(
        profile_config(tmp_path, pki, partner.port, **{f"{P}.partner.revocation": mode}), env={}
    )
    blind: list[None] = []
    async with running_engine(config) as engine:
        engine.transport.on_revocation_unknown.append(lambda: blind.append(None))
        result = await engine.run(make_job("unknown", partner.port, host="alpha.test"))
    if mode == "hard":
        assert kind(result) == "revocation_unknown", result
        assert result.error is not None
        assert f"ocsp {world.ocsp.url}" in result.error.message
        assert f"crl {world.nginx.url}/ca.crl" in result.error.message
        assert f"{P}.partner.revocation=hard" in result.error.message and blind == []
    else:
        assert result.status == 200 and result.tls.revocation.startswith("soft: unknown (")
        assert blind == [None]


def test_a_crl_file_is_read_again_when_it_changes(pki: PKI, tmp_path: Path) -> None:
    import asyncio

    revocations = Revocations(pki.ca, tmp_path / "ca")
    cert = server_cert(pki.ca, "alpha.test", crl_url=None, ocsp_url=None)
    revocations.add(cert)
    revocations.write()

    async def no_fetch(url: str, body: bytes | None) -> bytes:
        raise AssertionError("nothing to fetch")

    checker = RevocationChecker(no_fetch)
    policy = RevocationPolicy("hard", (revocations.crl_path,), "p")
    check = lambda: asyncio.run(checker.check(cert.cert, pki.ca.cert, policy))  # noqa: E731
    assert check().status == "good"
    revocations.revoke(cert)
    os.utime(revocations.crl_path, (1, 1))  # a new mtime whatever the clock's resolution
    assert check().status == "revoked"
    forged = Revocations(CA("Forger CA"), tmp_path / "forged")
    forged.write()
    fake = RevocationPolicy("hard", (forged.crl_path,), "p")
    outcome = asyncio.run(checker.check(cert.cert, pki.ca.cert, fake))
    assert outcome.status == "unknown" and "not the certificate's issuer" in outcome.source
