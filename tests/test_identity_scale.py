"""Many identities at once, against the harness nginx: each keeps its kept-alive connection
(credentials never cross), and the inline identities kept are bounded by a parameter."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.config.config import load_config
from agent.engine.engine import Engine
from agent.errors import ConfigError
from agent.jobs.model import Job
from agent.jobs.results import Result
from agent.tls import filestamps
from agent.tls import identities as identity_module
from tests.support.configs import RESOLVE, P, tls_config, write_config
from tests.support.engines import running_engine
from tests.support.results import echo
from tests.support.servers import NginxPorts, PemFiles, ServerPKI

IDENTITIES = 300  # more than the 256 connections the pool used to keep


async def run_all(engine: Engine, jobs: list[Job], lanes: int = 8) -> list[Result]:
    results: dict[str, Result] = {}
    pending = iter(jobs)

    async def lane() -> None:
        for job in pending:
            results[job.id] = await engine.run(job)

    await asyncio.gather(*(lane() for _ in range(lanes)))
    return [results[job.id] for job in jobs]


async def test_three_hundred_identities_keep_their_connections_and_never_share_one(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    """300 profiles, each its own client certificate, called round-robin twice: a handshake
    each in the first round, none in the second, and every answer saw its own certificate."""
    params = {"agent.resolve": RESOLVE}
    for i in range(IDENTITIES):
        crt, key = server_pki.root.issue(f"scale-{i}", client=True).write_pem(tmp_path, f"c{i}")
        params |= {
            f"{P}.c{i}.path": str(crt),
            f"{P}.c{i}.key": str(key),
            f"{P}.c{i}.truststore": str(server_pki.ca_pem),
        }
    config = load_config(write_config(tmp_path, params), env={})
    url = f"https://alpha.test:{nginx_ports.plain}/echo"
    async with running_engine(config) as engine:
        handshakes: list[bool] = []
        engine.transport.on_connection.append(handshakes.append)
        for round_ in range(2):
            jobs = [
                Job.from_dict(
                    {
                        "id": f"r{round_}-{i}",
                        "topic": "RESTProbe",
                        "endpoint": url,
                        "protocol_profile": f"c{i}",
                    }
                )
                for i in range(IDENTITIES)
            ]
            results = await run_all(engine, jobs)
            for i, result in enumerate(results):
                assert echo(result)["client_dn"].startswith(f"CN=scale-{i},"), result.to_dict()
            new = sum(handshakes)
            assert new == IDENTITIES, f"round {round_ + 1}: {new} handshakes"
        assert len(handshakes) == 2 * IDENTITIES
        assert engine.transport.idle_connections == IDENTITIES


def record(files: PemFiles) -> dict[str, Any]:
    pem = files.crt.read_bytes() + files.key.read_bytes()
    return {"keystore": {"type": "pem", "data_base64": base64.b64encode(pem).decode()}}


async def inline_run(
    tmp_path: Path, pki: ServerPKI, port: int, keep: int
) -> tuple[int, list[bool], list[str]]:
    """Records of client-one, client-two, client-chained, then client-one again, with
    ``agent.inline.max_identities=keep``: contexts built, handshakes, client DNs seen."""
    params = {"agent.resolve": RESOLVE, "agent.inline.max_identities": str(keep)}
    config = load_config(write_config(tmp_path, params), env={})
    order = [pki.client_one, pki.client_two, pki.client_chained, pki.client_one]
    trust = pki.ca_pem.read_text()
    async with running_engine(config) as engine:
        handshakes: list[bool] = []
        engine.transport.on_connection.append(handshakes.append)
        seen = []
        for i, files in enumerate(order):
            inline = record(files) | {"truststore_pem": trust}
            job = {
                "id": f"i{i}",
                "topic": "RESTProbe",
                "inline_profile": inline,
                "endpoint": f"https://alpha.test:{port}/echo",
            }
            seen.append(echo(await engine.run(Job.from_dict(job)))["client_dn"])
        return engine.state.identities.context_builds, handshakes, seen


async def test_inline_identities_beyond_the_bound_are_built_again(
    tmp_path: Path, server_pki: ServerPKI, nginx_ports: NginxPorts
) -> None:
    (tmp_path / "two").mkdir()
    (tmp_path / "three").mkdir()
    builds, handshakes, seen = await inline_run(tmp_path / "two", server_pki, nginx_ports.plain, 2)
    assert builds == 4 and handshakes == [True, True, True, True]  # client-one was let go
    assert [s.split(",")[0] for s in seen] == [
        "CN=client-one",
        "CN=client-two",
        "CN=client-chained",
        "CN=client-one",
    ]
    builds, handshakes, _ = await inline_run(tmp_path / "three", server_pki, nginx_ports.plain, 3)
    assert builds == 3 and handshakes == [True, True, True, False]  # kept, and its connection


def test_the_inline_bound_is_a_parameter_with_a_default(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path, {}), env={}).max_inline_identities == 256
    assert identity_module.INLINE_CACHE_SIZE == 256  # Identities built without a config
    bad = write_config(tmp_path, {"agent.inline.max_identities": "0"})
    with pytest.raises(ConfigError) as caught:
        load_config(bad, env={})
    assert "agent.inline.max_identities" in str(caught.value)


async def test_the_profiles_files_are_looked_at_together_once_per_interval(
    tmp_path: Path, server_pki: ServerPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four profiles whose file checks are due look at their files in one thread hop, and a
    changed file is still noticed (its profile is loaded again)."""
    config = tls_config(tmp_path, server_pki)
    async with running_engine(config) as engine:
        await files_looked_at_together(engine, server_pki, monkeypatch)


async def files_looked_at_together(
    engine: Engine, server_pki: ServerPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    identities = engine.state.identities
    names = ["one", "two", "stranger", "foreign"]
    for name in names:
        await identities.for_profile(identities.profiles[name])
    looks: list[int] = []
    real = filestamps._stat_all

    def counted(paths: tuple[Path, ...]) -> dict[Path, float]:
        looks.append(len(paths))
        return real(paths)

    monkeypatch.setattr(filestamps, "_stat_all", counted)

    def due() -> None:  # as if a second had passed since every profile's last check
        for cached in identities._profiles.values():
            cached.checked -= filestamps.STAT_INTERVAL
        identities.stamps.stale()

    due()
    before = identities.context_builds
    await asyncio.gather(*(identities.for_profile(identities.profiles[n]) for n in names))
    assert len(looks) == 1 and looks[0] >= 4  # one look, at every loaded profile's files
    assert identities.context_builds == before  # nothing changed, nothing loaded again
    key = server_pki.client_two.key
    original = key.stat().st_mtime
    os.utime(key, (original + 5, original + 5))
    try:
        due()
        await asyncio.gather(*(identities.for_profile(identities.profiles[n]) for n in names))
    finally:
        os.utime(key, (original, original))
    assert len(looks) == 2
    assert identities.context_builds == before + 1  # profile two, whose key file changed


def test_the_daemon_raises_its_open_files_limit_and_says_when_the_hard_one_is_too_low() -> None:
    """Run in a child whose limits are lowered first (256 soft, 512 hard)."""
    script = """
import logging, resource, sys
logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s")
from agent.service.tuning import raise_open_files
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512))
print(raise_open_files(300))
print(resource.getrlimit(resource.RLIMIT_NOFILE))
print(raise_open_files(2000))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "(512, 512)" and out[1] == "(512, 512)"  # raised to the hard limit
    assert out[2].startswith("WARNING the open-files limit is 512, below the 2000")
    assert "agent.http.max_idle_connections" in out[2] and "LimitNOFILE" in out[2]
    assert out[3] == "(512, 512)"


@pytest.mark.parametrize("listen", [False, True])
def test_the_web_server_is_loaded_only_where_health_is_served(tmp_path: Path, listen: bool) -> None:
    """aiohttp's web server (about 2 MiB) is imported by a daemon with agent.health.listen
    only: a burst run over an empty queue, in a child, reports what it loaded."""
    params = {"url": f"sqlite:///{tmp_path / 'queue.db'}"}
    if listen:
        params["agent.health.listen"] = "127.0.0.1:0"
    config = write_config(tmp_path, params)
    script = f"""
import sys
from agent.commands.cli import main
code = main(["-c", {str(config)!r}, "run", "--burst"])
print(code, "aiohttp.web" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out[-2:] == ["0", str(listen)]


async def test_a_context_is_built_off_the_loop_once_however_many_jobs_wait_for_it(
    tmp_path: Path,
    server_pki: ServerPKI,
    nginx_ports: NginxPorts,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Five jobs at once on a profile's first use without SNI: one build of that context, in
    a thread; all five answered with the profile's certificate."""
    builds: list[tuple[bool, bool]] = []  # (send_sni, built on the loop's thread)
    real = identity_module.build_context
    loop_thread = threading.get_ident()

    def counted(*args: Any, send_sni: bool = True) -> Any:
        builds.append((send_sni, threading.get_ident() == loop_thread))
        return real(*args, send_sni=send_sni)

    monkeypatch.setattr(identity_module, "build_context", counted)
    async with running_engine(tls_config(tmp_path, server_pki)) as engine:
        url = f"https://alpha.test:{nginx_ports.plain}/echo"
        jobs = [
            Job.from_dict(
                {
                    "id": f"n{i}",
                    "topic": "RESTProbe",
                    "endpoint": url,
                    "protocol_profile": "one",
                    "sni": False,
                }
            )
            for i in range(5)
        ]
        results = await asyncio.gather(*(engine.run(job) for job in jobs))
    for result in results:
        assert echo(result)["client_dn"].startswith("CN=client-one")
    assert builds == [(True, False), (False, False)]  # the profile's load, then no-SNI once


async def test_a_look_under_way_without_a_profiles_files_is_not_taken_for_a_change(
    tmp_path: Path,
) -> None:
    """A profile loaded while a look (started without its files) is under way gets its files'
    real times, not "missing", which would reload it as changed."""
    a, b = tmp_path / "a.pem", tmp_path / "b.pem"
    a.write_text("a")
    b.write_text("b")
    stamps = filestamps.FileStamps(lambda: [a])
    first = asyncio.ensure_future(stamps.of((a,)))
    await asyncio.sleep(0)  # one turn of the loop: the first look is now under way
    assert stamps._looking is not None
    assert await stamps.of((b,)) == (b.stat().st_mtime,)
    assert await first == (a.stat().st_mtime,)
