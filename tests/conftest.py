"""Shared fixtures: a throwaway PKI, a real mTLS server on loopback, config.xml writers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.commands.demo.demoserver import DemoServer
from agent.commands.demo.pki import CA, Issued
from tests.servers import nginx_ports, server_pki  # noqa: F401 - fixtures

P12_PASSWORD = "p12-Secret-Pass"


@dataclass(frozen=True)
class PKI:
    ca: CA
    alpha: Issued
    beta: Issued
    client_one: Issued
    client_two: Issued
    stranger: Issued  # a client certificate from a CA nobody trusts

    def write_ca(self, directory: Path) -> Path:
        path = directory / "ca.pem"
        path.write_bytes(self.ca.cert_pem())
        return path


@pytest.fixture(scope="session")
def pki() -> PKI:
    ca = CA("Test Root CA")
    return PKI(
        ca=ca,
        alpha=ca.issue("alpha.test"),
        beta=ca.issue("beta.test"),
        client_one=ca.issue("client-one", client=True),
        client_two=ca.issue("client-two", client=True),
        stranger=CA("Stranger CA").issue("stranger", client=True),
    )


@pytest.fixture
async def mtls_server(pki: PKI) -> AsyncIterator[DemoServer]:
    """alpha.test and beta.test on one 127.0.0.1 port; SNI and a client certificate required."""
    async with DemoServer(pki.ca, {"alpha.test": pki.alpha, "beta.test": pki.beta}) as server:
        yield server


def write_config(
    directory: Path, params: dict[str, str], secure: dict[str, str] | None = None
) -> Path:
    lines = [f'  <parameter name="{k}" value="{v}"/>' for k, v in params.items()]
    lines += [
        f'  <parameter name="{k}" value="{v}" secure="true"/>' for k, v in (secure or {}).items()
    ]
    path = directory / "config.xml"
    path.write_text("<parameters>\n" + "\n".join(lines) + "\n</parameters>\n")
    return path


def profile_config(directory: Path, pki: PKI, port: int, **extra: str) -> Path:
    """A config.xml with profile ``partner`` (PKCS#12, client-one) and ``two`` (PEM, client-two)."""
    (directory / "one.p12").write_bytes(pki.client_one.pkcs12(P12_PASSWORD))
    pki.client_two.write_pem(directory, "two")
    ca = pki.write_ca(directory)
    p = "mid.httpclient.protocol"
    params = {
        "name": "test-agent",
        "url": f"sqlite:///{directory / 'queue.db'}",
        "mid.poll.time": "0.2",
        "agent.resolve": "alpha.test:127.0.0.1,beta.test:127.0.0.1",
        f"{p}.partner.path": "one.p12",
        f"{p}.partner.port": str(port),
        f"{p}.partner.truststore": str(ca),
        f"{p}.two.path": "two.crt",
        f"{p}.two.key": "two.key",
        f"{p}.two.truststore": str(ca),
        **extra,
    }
    return write_config(directory, params, {f"{p}.partner.password": P12_PASSWORD})


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def run_agent(
    *args: str, input: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MID_CONFIG_")}
    return subprocess.run(
        agent_cmd(*args), input=input, capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def arun_agent(*args: str, input: str | None = None) -> Ran:
    """Run the agent CLI without blocking the test's event loop (servers live on it)."""
    import asyncio

    env = {k: v for k, v in os.environ.items() if not k.startswith("MID_CONFIG_")}
    proc = await asyncio.create_subprocess_exec(
        *agent_cmd(*args),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(input.encode() if input else None), 120)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())
