"""Shared fixtures: a throwaway PKI, a real mTLS server on loopback, the harness nginx.

The helpers behind them, and the others tests share, live in ``tests/support/``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agent.commands.demo.demoserver import DemoServer
from tests.support.pki import PKI, make_pki
from tests.support.servers import nginx_ports, server_pki  # noqa: F401 - fixtures


@pytest.fixture(scope="session")
def pki() -> PKI:
    return make_pki()


@pytest.fixture
async def mtls_server(pki: PKI) -> AsyncIterator[DemoServer]:
    """alpha.test and beta.test on one 127.0.0.1 port; SNI and a client certificate required."""
    async with DemoServer(pki.ca, {"alpha.test": pki.alpha, "beta.test": pki.beta}) as server:
        yield server
