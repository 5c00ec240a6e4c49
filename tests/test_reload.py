"""SIGHUP is all or nothing: a new config.xml whose profile cannot be loaded is refused whole.

The daemon runs as ``python -m agent run``; its client keystores are made by ``keytool`` and
signed by the harness root CA, and its jobs go to the harness nginx (mutual TLS, /echo shows the
client certificate it got). ``agent validate`` must report the same profile and problem.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import arun_agent, start_daemon
from tests.support.configs import RESOLVE, P, write_config
from tests.support.keytool import ca_signed_keystore
from tests.support.servers import NginxPorts, ServerPKI

pytestmark = pytest.mark.timeout(90)

STOREPASS = "jks-Store-Pass1"
WRONG = "not-The-Password9"


@dataclass(frozen=True)
class Setup:
    directory: Path
    url: str  # nginx's /echo on alpha.test
    ca: Path

    def params(self, **profile: str) -> dict[str, str]:
        """Profile ``partner``: the keytool JKS, then whatever ``profile`` overrides."""
        base = {
            "path": "partner.jks",
            "type": "jks",
            "alias": "partner",
            "password": STOREPASS,
            "truststore": str(self.ca),
        }
        params = {
            "url": f"sqlite:///{self.directory / 'queue.db'}",
            "mid.poll.time": "0.2",
            "agent.resolve": RESOLVE,
        }
        return params | {f"{P}.partner.{k}": v for k, v in (base | profile).items()}

    def write(self, **profile: str) -> Path:
        return write_config(self.directory, self.params(**profile))


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory, server_pki: ServerPKI) -> bytes:
    """A JKS made by keytool (key entry ``partner``), its certificate signed by the root CA."""
    path = tmp_path_factory.mktemp("keytool") / "partner.jks"
    ca_signed_keystore(
        path, server_pki.root, alias="partner", cn="client-keytool", storetype="JKS",
        storepass=STOREPASS,
    )  # fmt: skip
    return path.read_bytes()


@pytest.fixture
def setup(tmp_path: Path, keystore: bytes, server_pki: ServerPKI, nginx_ports: NginxPorts) -> Setup:
    (tmp_path / "partner.jks").write_bytes(keystore)
    return Setup(tmp_path, f"https://alpha.test:{nginx_ports.sni}/echo", server_pki.ca_pem)


class Log:
    """The daemon's JSON log lines, read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, object]] = []

    async def until(self, text: str) -> dict[str, object]:
        assert self.proc.stderr is not None

        async def read() -> dict[str, object]:
            assert self.proc.stderr is not None
            while raw := await self.proc.stderr.readline():
                entry: dict[str, object] = json.loads(raw)
                self.lines.append(entry)
                if text in str(entry["msg"]):
                    return entry
            raise AssertionError(f"the daemon exited without logging {text!r}: {self.lines}")

        return await asyncio.wait_for(read(), 30)


@asynccontextmanager
async def daemon(config: Path) -> AsyncIterator[Log]:
    proc = await start_daemon(config)
    log = Log(proc)
    try:
        await log.until("started")  # the signal handlers are installed
        yield log
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def client_dn(config: Path, job_id: str, url: str) -> str:
    """Run one job through the daemon; the subject nginx saw on its client certificate."""
    job = {"id": job_id, "topic": "RESTProbe", "endpoint": url, "protocol_profile": "partner"}
    ran = await arun_agent("-c", str(config), "enqueue", "-", input=json.dumps(job))
    assert ran.returncode == 0, ran.stderr
    ran = await arun_agent("-c", str(config), "result", job_id, "--wait", "30")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    result = json.loads(ran.stdout)
    assert result["state"] == "processed" and result["status"] == 200, result
    dn: str = json.loads(result["body"])["client_dn"]
    return dn


Breakage = Callable[[Setup], Path]

BROKEN: dict[str, tuple[Breakage, str]] = {
    "wrong password": (lambda s: s.write(password=WRONG), "password"),
    "missing file": (lambda s: s.write(path="missing.jks"), "cannot read the file"),
    "unknown alias": (lambda s: s.write(alias="nosuch"), "nosuch"),
    "missing truststore": (lambda s: s.write(truststore="gone.pem"), "truststore"),
}


async def test_a_reload_with_a_profile_that_cannot_load_is_refused_whole(setup: Setup) -> None:
    config = setup.write()
    async with daemon(config) as log:
        assert (await client_dn(config, "before", setup.url)).startswith("CN=client-keytool")
        for case, (breakage, problem) in BROKEN.items():
            breakage(setup)
            log.proc.send_signal(signal.SIGHUP)
            refused = await log.until("reload refused")
            assert refused["level"] == "error", case
            message = str(refused["msg"])
            assert "keeping the running configuration: profile partner" in message, message
            assert problem in message, (case, message)
            ran = await arun_agent("-c", str(config), "validate")
            assert ran.returncode == 1, (case, ran.stdout + ran.stderr)
            assert "partner" in ran.stdout and problem in ran.stdout, (case, ran.stdout)
            assert "problems found" in ran.stdout, case
        assert not any("configuration reloaded" in str(e["msg"]) for e in log.lines)
        setup.write()  # the CLI needs a usable config.xml; the daemon has not read it yet
        # the jobs of that profile kept working with the material loaded before
        assert (await client_dn(config, "after", setup.url)).startswith("CN=client-keytool")
        log.proc.send_signal(signal.SIGHUP)  # mended: this reload goes through
        await log.until("configuration reloaded")
        assert (await client_dn(config, "mended", setup.url)).startswith("CN=client-keytool")
    logged = json.dumps(log.lines)
    assert WRONG not in logged and STOREPASS not in logged and "Traceback" not in logged


async def test_vault_profiles_are_checked_in_the_config_only(setup: Setup) -> None:
    """A vault profile's material is not fetched on reload; the log says so. Settings that
    cannot reach any vault (no token) refuse the reload, naming the profile."""
    vault = {
        f"{P}.vaulty.vault_path": "agent/vaulty",
        "ext.cred.hashicorp.vault.address": "https://127.0.0.1:9",  # nothing listens
    }
    config = setup.write()
    async with daemon(config) as log:
        write_config(setup.directory, setup.params() | vault)
        log.proc.send_signal(signal.SIGHUP)
        refused = await log.until("reload refused")
        assert "profile vaulty" in str(refused["msg"]), refused
        assert "ext.cred.hashicorp.vault.token" in str(refused["msg"]), refused
        with_token = vault | {"ext.cred.hashicorp.vault.token": "s.test-token"}
        write_config(setup.directory, setup.params() | with_token)
        log.proc.send_signal(signal.SIGHUP)
        note = await log.until("keep their material in the vault")
        assert "vaulty" in str(note["msg"]) and "checked in config.xml only" in str(note["msg"])
        await log.until("configuration reloaded: 2 profile(s)")
        assert (await client_dn(config, "file-profile", setup.url)).startswith("CN=client-keytool")
    assert "s.test-token" not in json.dumps(log.lines)


async def test_a_keystore_file_that_changes_into_something_unloadable_keeps_the_old_material(
    setup: Setup, keystore: bytes
) -> None:
    """Without a SIGHUP, a changed keystore file is picked up by the next job; one that cannot
    be loaded (here half written) is reported once and the jobs go on with the old material."""
    config = setup.write()
    async with daemon(config) as log:
        assert (await client_dn(config, "first", setup.url)).startswith("CN=client-keytool")
        (setup.directory / "partner.jks").write_bytes(keystore[: len(keystore) // 2])
        for attempt in range(30):  # the files are looked at at most once a second, on use
            dn = await client_dn(config, f"later-{attempt}", setup.url)
            assert dn.startswith("CN=client-keytool"), dn
            if any("cannot be loaded" in str(e["msg"]) for e in log.lines):
                break
            await log.until("job later-")  # read what the daemon logged for this job
        else:
            raise AssertionError(f"the broken keystore was never noticed: {log.lines}")
        [noted] = [e for e in log.lines if "cannot be loaded" in str(e["msg"])]
        assert noted["level"] == "error" and "profile partner" in str(noted["msg"])
        assert "keep the material loaded before" in str(noted["msg"])
