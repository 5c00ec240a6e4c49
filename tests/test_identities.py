"""Identities are built once: concurrent jobs carrying the same inline record share one build, and
a failed build is never shared."""

from __future__ import annotations

import asyncio
import base64

from agent.jobs.model import Job
from agent.tls.identities import Identities
from tests.support.pki import PKI


def inline_job(job_id: str, p12: bytes, password: str) -> Job:
    return Job.from_dict(
        {
            "id": job_id,
            "topic": "RESTProbe",
            "endpoint": "https://alpha.test:443/echo",
            "inline_profile": {
                "keystore": {
                    "type": "pkcs12",
                    "data_base64": base64.b64encode(p12).decode(),
                    "password": password,
                }
            },
        }
    )


async def test_jobs_carrying_the_same_record_at_once_share_one_build(pki: PKI) -> None:
    p12 = pki.client_one.pkcs12("pass-1")
    identities = Identities({})
    found = await asyncio.gather(
        *(identities.for_job(inline_job(f"same-{i}", p12, "pass-1")) for i in range(8))
    )
    assert identities.context_builds == 1
    assert all(identity is found[0] for identity in found)
    other = await identities.for_job(inline_job("other", pki.client_two.pkcs12("p"), "p"))
    assert other is not found[0] and identities.context_builds == 2


async def test_a_failed_build_names_each_job_and_only_its_own(pki: PKI) -> None:
    p12 = pki.client_one.pkcs12("right")
    identities = Identities({})
    outcomes = await asyncio.gather(
        *(identities.for_job(inline_job(f"wrong-{i}", p12, "wrong")) for i in range(3)),
        return_exceptions=True,
    )
    for i, outcome in enumerate(outcomes):
        assert isinstance(outcome, Exception)
        assert f"job wrong-{i} " in str(outcome)
        assert all(f"wrong-{j} " not in str(outcome) for j in range(3) if j != i)
