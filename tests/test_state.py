"""One frozen runtime state per configuration; a job runs to its end on the state it began on."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from agent.commands.demo.demoserver import DemoServer
from agent.config.config import load_config
from agent.engine.engine import Engine
from agent.engine.state import assemble
from agent.jobs.model import Job
from agent.tls.identities import stage
from tests.support.configs import profile_config
from tests.support.pki import PKI

PAD = "x" * 4000  # echoed back: the answer is over 4 KiB


class HeldServer(DemoServer):
    """The demo server, whose ``/slow`` answers only when the test says so."""

    def __init__(self, pki: PKI) -> None:
        super().__init__(pki.ca, {"alpha.test": pki.alpha})
        self.release = asyncio.Event()

    async def _slow(self, request: web.Request) -> web.Response:
        seen = self._record(request, await request.read())
        self.started.set()
        await self.release.wait()
        return web.json_response(seen)


@pytest.fixture
async def held(pki: PKI) -> AsyncIterator[HeldServer]:
    async with HeldServer(pki) as server:
        yield server


def padded_job(job_id: str, port: int, path: str) -> Job:
    return Job.from_dict(
        {
            "id": job_id,
            "topic": "RESTProbe",
            "endpoint": f"https://alpha.test:{port}{path}",
            "protocol_profile": "partner",
            "headers": {"X-Pad": PAD},
        }
    )


async def test_a_job_runs_to_its_end_on_the_state_it_began_with(
    tmp_path: Path, pki: PKI, held: HeldServer
) -> None:
    engine = Engine(load_config(profile_config(tmp_path, pki, held.port), env={}))
    try:
        first_state = engine.state
        running = asyncio.create_task(engine.run(padded_job("before", held.port, "/slow")))
        await held.started.wait()  # the request is at the server: the job is mid-call
        narrow = load_config(
            profile_config(tmp_path, pki, held.port, **{"agent.max_response_bytes": "1024"}),
            env={},
        )
        new_state = engine.swap(narrow)
        assert engine.state is new_state and new_state.number > first_state.number
        held.release.set()
        before = await running
        assert (before.state, before.status, before.error) == ("processed", 200, None)
        assert before.body is not None and PAD in before.body  # the old 8 MiB bound held
        after = await engine.run(padded_job("after", held.port, "/echo"))
        assert after.error is not None and after.error.kind == "response_too_large"
        assert "1024" in after.error.message
    finally:
        await engine.close()


async def test_the_state_is_frozen_and_assembled_from_one_configuration(
    tmp_path: Path, pki: PKI
) -> None:
    config = load_config(profile_config(tmp_path, pki, 443), env={})
    state = assemble(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.config = config  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.call.max_response_bytes = 1  # type: ignore[misc]
    assert state.call.sni_enabled is config.sni_enabled
    assert dict(state.call.resolve) == {"alpha.test": "127.0.0.1", "beta.test": "127.0.0.1"}
    assert set(state.identities.profiles) == {"partner", "two"}
    other = load_config(profile_config(tmp_path, pki, 443), env={})
    with pytest.raises(ValueError, match="another configuration"):
        assemble(other, staged=await stage(config))


async def test_a_staged_profile_is_in_force_in_the_new_state_without_loading_again(
    tmp_path: Path, pki: PKI
) -> None:
    config = load_config(profile_config(tmp_path, pki, 443), env={})
    staged = await stage(config)
    assert not staged.problems
    state = assemble(config, staged=staged)
    (tmp_path / "one.p12").unlink()  # a load now would fail
    identity = await state.identities.for_profile(config.profiles["partner"])
    assert identity is staged.loaded["partner"].identity
